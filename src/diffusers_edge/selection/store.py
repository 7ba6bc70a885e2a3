"""An on-disk store of embeddings, written in chunks, resumable, and read back a chunk at a time.

Prompt selection and the coreset baselines over millions of captions (CC3M: about 3.3M) cannot hold the pool's
embeddings, let alone a pool x budget distance matrix, in memory. `EmbeddingStore` keeps them in one NumPy `.npy`
file (`[rows, dim]` float32, readable with `numpy.load(path, mmap_mode="r")`) and a `store.json` beside it that says
what they are (the model, the source's fingerprint, what was embedded) and how many rows are written. Rows are
appended in order and each flush is recorded atomically, so an interrupted embedding pass resumes where it stopped.

The selection rules of `diffusers_edge.selection.algorithms` take a store wherever they take a tensor: they read it
in chunks of `CHUNK_ROWS` rows with plain file reads (not a memory map, so the pages do not count towards the
process's resident memory), and compute exactly what they compute on the same rows held in memory.

Stores are kept in `cache_dir` (default: `$HF_HOME/diffusers_edge/embeddings`) under a key made from the model and
the source, so selecting 500 and then 1000 prompts from the same pool embeds it once.

Example:
    >>> import tempfile, torch
    >>> store = EmbeddingStore.create(tempfile.mkdtemp(), rows=3, dim=2, info={"model": "m", "source": "s"})
    >>> store.append(torch.tensor([[1.0, 0.0], [0.0, 1.0]])); store.append(torch.tensor([[0.5, 0.25]]))
    >>> store.complete, len(store), store.read(1, 3).tolist()
    (True, 3, [[0.0, 1.0], [0.5, 0.25]])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..serialization import write_json_atomic

CHUNK_ROWS = 8192
"""Rows read (and distances computed) at once: 8192 x 512 float32 is 16 MB, whatever the pool's size."""

DATA_NAME = "embeddings.npy"
INFO_NAME = "store.json"


def default_cache_dir() -> Path:
    """`$HF_HOME/diffusers_edge/embeddings` (`~/.cache/huggingface/...` unless `HF_HOME` is set)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "diffusers_edge" / "embeddings"


def store_key(info: dict[str, Any]) -> str:
    """The folder name of a store: the first 24 hex digits of the SHA-256 of its sorted `info`.

    Example:
        >>> store_key({"model": "openai/clip-vit-base-patch32", "source": "f" * 64}) == store_key(
        ...     {"source": "f" * 64, "model": "openai/clip-vit-base-patch32"})
        True
    """
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:24]


class EmbeddingStore:
    """`rows` embeddings of `dim` floats in `folder/embeddings.npy`, described by `folder/store.json`.

    Create one with `EmbeddingStore.create` (or `open_or_create`), `append` chunks in order until `complete`, and
    read it with `chunks()` / `read()` / `gather()`; `len(store)` is its number of rows.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / INFO_NAME).read_text(encoding="utf-8"))
        self.rows, self.dim, self.info = int(meta["rows"]), int(meta["dim"]), meta["info"]
        self.rows_done = int(meta["rows_done"])
        self.path = self.folder / DATA_NAME
        mapped = np.load(self.path, mmap_mode="r")  # reads the header only
        shape, dtype, self._offset = mapped.shape, mapped.dtype, mapped.offset
        del mapped
        if shape != (self.rows, self.dim) or dtype != np.float32:
            raise ValueError(f"{str(self.path)!r} holds {dtype} {shape}, but {INFO_NAME} says float32 "
                             f"({self.rows}, {self.dim}); delete the folder to rebuild it.")  # fmt: skip

    @classmethod
    def create(cls, folder: str | os.PathLike, rows: int, dim: int, info: dict[str, Any]) -> EmbeddingStore:
        """An empty store of `rows` x `dim` float32 (the file is allocated sparse, not written)."""
        if rows < 1 or dim < 1:
            raise ValueError(f"An embedding store needs at least one row and one dimension, got ({rows}, {dim}).")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(folder / DATA_NAME, mode="w+", dtype=np.float32, shape=(rows, dim)).flush()
        write_json_atomic(folder / INFO_NAME, {"rows": rows, "dim": dim, "rows_done": 0, "info": info})
        return cls(folder)

    @classmethod
    def open_or_create(
        cls, cache_dir: str | os.PathLike | None, rows: int, dim: int, info: dict[str, Any]
    ) -> EmbeddingStore:
        """The store of `info` in `cache_dir` (`default_cache_dir()` when None): reopened (complete, or to resume)
        when one with the same info and shape exists, else created."""
        folder = Path(cache_dir or default_cache_dir()) / store_key(info)
        if (folder / INFO_NAME).is_file():
            store = cls(folder)
            if store.info == info and (store.rows, store.dim) == (rows, dim):
                return store
        return cls.create(folder, rows, dim, info)

    def __len__(self) -> int:
        return self.rows

    @property
    def complete(self) -> bool:
        """Every row has been written."""
        return self.rows_done == self.rows

    def append(self, embeddings: torch.Tensor) -> None:
        """Writes the next `len(embeddings)` rows and records them as done (after the data is on disk)."""
        values = np.ascontiguousarray(embeddings.detach().cpu().numpy(), dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.dim:
            raise ValueError(f"Expected embeddings of shape [n, {self.dim}], got {list(values.shape)}.")
        if self.rows_done + len(values) > self.rows:
            raise ValueError(f"The store holds {self.rows} rows; {self.rows_done} are written, {len(values)} more "
                             "do not fit.")  # fmt: skip
        with open(self.path, "r+b") as file:
            file.seek(self._offset + self.rows_done * self.dim * 4)
            file.write(values.tobytes())
            file.flush()
            os.fsync(file.fileno())
        self.rows_done += len(values)
        info = {"rows": self.rows, "dim": self.dim, "rows_done": self.rows_done, "info": self.info}
        write_json_atomic(self.folder / INFO_NAME, info)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows `start:stop` as a float32 tensor (read from the file, not mapped)."""
        stop = min(stop, self.rows)
        values = np.fromfile(self.path, dtype=np.float32, count=(stop - start) * self.dim,
                             offset=self._offset + start * self.dim * 4)  # fmt: skip
        return torch.from_numpy(values.reshape(stop - start, self.dim))

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, torch.Tensor]]:
        """`(start, rows start:start + rows)` over the whole store, in order."""
        self._check_complete()
        for start in range(0, self.rows, rows):
            yield start, self.read(start, start + rows)

    def gather(self, indices: list[int]) -> torch.Tensor:
        """The rows at `indices`, in that order, read in spans of at most `CHUNK_ROWS` rows (a memory map would
        count every page it touches towards the process's memory: a sample of 1 in 8 rows touches them all)."""
        self._check_complete()
        wanted = np.asarray(indices, dtype=np.int64)
        order = np.argsort(wanted, kind="stable")
        ascending = wanted[order]
        out = torch.empty(len(wanted), self.dim)
        first = 0
        while first < len(ascending):
            start = int(ascending[first])
            last = int(np.searchsorted(ascending, start + CHUNK_ROWS))  # the indices within one chunk's span
            span = self.read(start, int(ascending[last - 1]) + 1)
            out[torch.from_numpy(order[first:last])] = span[torch.from_numpy(ascending[first:last] - start)]
            first = last
        return out

    def load(self) -> torch.Tensor:
        """The whole store in memory (for pools that fit: selection on a tensor avoids the reads)."""
        self._check_complete()
        return self.read(0, self.rows)

    def _check_complete(self) -> None:
        if not self.complete:
            raise RuntimeError(f"The embedding store {str(self.folder)!r} holds {self.rows_done} of {self.rows} rows; "
                               "finish the embedding pass first.")  # fmt: skip


def iter_chunks(points: torch.Tensor | EmbeddingStore, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, torch.Tensor]]:
    """`(start, float32 rows)` of a tensor or a store, `rows` at a time: what every selection rule iterates.

    Example:
        >>> [(start, len(chunk)) for start, chunk in iter_chunks(torch.zeros(5, 2), rows=2)]
        [(0, 2), (2, 2), (4, 1)]
    """
    if isinstance(points, EmbeddingStore):
        yield from points.chunks(rows)
        return
    for start in range(0, len(points), rows):
        yield start, points[start : start + rows].float()


def gather_rows(points: torch.Tensor | EmbeddingStore, indices: list[int]) -> torch.Tensor:
    """The float32 rows at `indices` of a tensor or a store.

    Example:
        >>> gather_rows(torch.arange(6.0).reshape(3, 2), [2, 0]).tolist()
        [[4.0, 5.0], [0.0, 1.0]]
    """
    if isinstance(points, EmbeddingStore):
        return points.gather(indices)
    return points[indices].float()
