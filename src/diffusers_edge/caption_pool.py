"""The captions `distill` draws its prompts from: held in memory, or read pass by pass from a streamed source.

A `datasets.Dataset` or a list of captions is small enough to hold: its captions are read into a list, as always.
A streamed `datasets.IterableDataset` (CC3M-size Parquet or WebDataset shards, see docs/data.md) is never held:

1. one pass counts its captions and computes its fingerprint (`caption_pool`), which is also all a resumed run
   needs;
2. for k-center / k-means one more pass embeds the captions into an on-disk `EmbeddingStore` keyed by the CLIP
   model and that fingerprint (`CaptionPool.embeddings`), reused by later runs and resumed if interrupted;
3. the selection runs on the count (random) or on the store, and a last pass keeps only the chosen captions
   (`CaptionPool.take`).

Both forms give the same fingerprint, the same embeddings and therefore the same selection for the same rows.

Example:
    >>> pool = caption_pool(["a red circle", "a blue square"])
    >>> pool.size, pool.take([1])
    (2, (['a blue square'], [None]))
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .data.format import CAPTIONS_COLUMN, IMAGE_ID_COLUMN, check_captions
from .selection import embed_captions
from .selection.store import EmbeddingStore

STREAM_BATCH_ROWS = 1024  # rows per batch when reading a streamed source's caption columns


def _require_captions(columns: list[str] | None) -> None:
    if columns is not None and CAPTIONS_COLUMN not in columns:
        raise ValueError(
            f"The source dataset has no {CAPTIONS_COLUMN!r} column (columns: {columns}); distill needs the "
            "normalized form (image, captions, image_id; see load_source, also with streaming=True) or a list of "
            "captions."
        )


def _stream_rows(source: datasets.IterableDataset) -> Iterator[tuple[Any, Any]]:
    """(captions cell, image_id) per row of a stream, reading only those two columns (images are not decoded)."""
    columns = source.column_names
    _require_captions(columns)
    has_ids = columns is None or IMAGE_ID_COLUMN in columns
    wanted = [CAPTIONS_COLUMN, IMAGE_ID_COLUMN] if has_ids and columns is not None else [CAPTIONS_COLUMN]
    for batch in source.select_columns(wanted).iter(batch_size=STREAM_BATCH_ROWS):
        ids = batch.get(IMAGE_ID_COLUMN) or [None] * len(batch[CAPTIONS_COLUMN])
        yield from zip(batch[CAPTIONS_COLUMN], ids)


def _rows(source: datasets.Dataset | datasets.IterableDataset) -> Iterable[tuple[Any, Any]]:
    if isinstance(source, datasets.IterableDataset):
        return _stream_rows(source)
    _require_captions(source.column_names)
    ids = source[IMAGE_ID_COLUMN] if IMAGE_ID_COLUMN in source.column_names else [None] * source.num_rows
    return zip(source[CAPTIONS_COLUMN], ids)


def _checked_rows(rows: Iterable[tuple[Any, Any]]) -> Iterator[tuple[list[str], str | None]]:
    """Per row, its checked captions and its image id as a string (None when the source has none)."""
    for row, (image_captions, image_id) in enumerate(rows):
        checked = check_captions(image_captions, record=f"source row {row} (image_id={image_id!r})")
        yield checked, None if image_id is None else str(image_id)


def _flat(rows: Iterable[tuple[Any, Any]]) -> Iterator[tuple[str, str | None]]:
    """Every checked caption with the id of its image, in order."""
    for captions, owner in _checked_rows(rows):
        for caption in captions:
            yield caption, owner


def model_key(model: torch.nn.Module) -> str:
    """How an embedding store names the model that filled it: its `name_or_path` (a Hub id or a folder), or its
    class when it was built in memory."""
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


class _Fingerprint:
    """SHA-256 of the captions and their image ids, in order, fed one caption at a time."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def update(self, caption: str, owner: str | None) -> None:
        self.digest.update(f"{owner}\x1f{caption}\x1e".encode())


def source_fingerprint(captions: Sequence[str], owners: Sequence[str | None]) -> str:
    """SHA-256 of the captions and their image ids, in order: the manifest's `source_fingerprint`.

    Example:
        >>> len(source_fingerprint(["a red circle"], [None]))
        64
    """
    fingerprint = _Fingerprint()
    for caption, owner in zip(captions, owners):
        fingerprint.update(caption, owner)
    return fingerprint.digest.hexdigest()


@dataclass
class CaptionPool:
    """Every caption of a source, flattened in order, with the image id it belongs to.

    Attributes:
        size: how many captions the source supplies.
        fingerprint: `source_fingerprint` of them.
        captions, owners: the captions and their image ids, in memory (None for a streamed source).
        stream: the streamed source, read again by `embeddings` and `take` (None in memory).
    """

    size: int
    fingerprint: str
    captions: list[str] | None = None
    owners: list[str | None] | None = None
    stream: datasets.IterableDataset | None = None

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        if self.stream is None:
            return zip(self.captions, self.owners)
        return _flat(_stream_rows(self.stream))

    def all_captions(self) -> list[str]:
        """Every caption in a list (for a selection callable, whose contract is a list)."""
        return self.captions if self.stream is None else [caption for caption, _ in self]

    def take(self, indices: Sequence[int]) -> tuple[list[str], list[str | None]]:
        """The captions at `indices` and their image ids, in the order of `indices` (one pass for a stream)."""
        if self.stream is None:
            return [self.captions[i] for i in indices], [self.owners[i] for i in indices]
        wanted = {index: position for position, index in enumerate(indices)}
        found: list[tuple[str, str | None] | None] = [None] * len(indices)
        last = max(indices)
        for index, pair in enumerate(self):
            if index in wanted:
                found[wanted[index]] = pair
            if index == last:
                break
        if any(pair is None for pair in found):
            raise RuntimeError("The streamed source yielded fewer captions than when it was counted: did it change?")
        return [pair[0] for pair in found], [pair[1] for pair in found]

    def embeddings(
        self,
        clip_model: torch.nn.Module,
        clip_processor: Any,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        progress: bool = True,
    ) -> torch.Tensor | EmbeddingStore:
        """L2-normalised CLIP text embeddings of every caption: a tensor in memory, or for a stream an
        `EmbeddingStore` in `cache_dir` keyed by the model and the fingerprint (reused when complete, resumed when
        not); both are embedded in the same batches, so they hold the same numbers."""
        if self.stream is None:
            return embed_captions(self.captions, clip_model, clip_processor, batch_size=batch_size)
        info = {"model": model_key(clip_model), "source": self.fingerprint, "what": "caption text embeddings"}
        store = EmbeddingStore.open_or_create(cache_dir, self.size, clip_model.config.projection_dim, info)
        embed_caption_stream((caption for caption, _ in self), store, clip_model, clip_processor, batch_size, progress)
        return store


def embed_caption_stream(
    captions: Iterable[str],
    store: EmbeddingStore,
    clip_model: torch.nn.Module,
    clip_processor: Any,
    batch_size: int = 256,
    progress: bool = True,
    flush_batches: int = 32,
) -> EmbeddingStore:
    """Embeds `captions` (an iterator over the whole pool, in order) into `store`, `batch_size` at a time.

    Rows the store already holds are skipped, so an interrupted pass resumes; rows are flushed every `flush_batches`
    batches, always whole batches, so a resumed store holds the numbers an uninterrupted one would.

    Example:
        >>> store = EmbeddingStore.create("cache/captions", rows=len(captions), dim=512, info={"model": "clip"})
        ... # doctest: +SKIP
        >>> embed_caption_stream(iter(captions), store, model, processor).complete  # doctest: +SKIP
        True
    """
    start = store.rows_done
    bar = tqdm(total=store.rows, initial=start, desc="embedding captions", unit="caption", disable=not progress)
    pending: list[torch.Tensor] = []
    batch: list[str] = []
    for index, caption in enumerate(captions):
        if index < start:
            continue
        batch.append(caption)
        if len(batch) == batch_size or index == store.rows - 1:
            pending.append(embed_captions(batch, clip_model, clip_processor, batch_size=batch_size))
            bar.update(len(batch))
            batch = []
        if len(pending) == flush_batches or (pending and index == store.rows - 1):
            store.append(torch.cat(pending))
            pending = []
        if index == store.rows - 1:
            break
    bar.close()
    if not store.complete:
        raise RuntimeError(f"The source yielded {store.rows_done} captions, {store.rows} were counted: did it change?")
    return store


def stream_caption_counts(stream: datasets.IterableDataset) -> tuple[np.ndarray, str]:
    """One pass over a stream's caption columns: how many captions each row has (`int32`, 4 bytes a row) and the
    `source_fingerprint` of all of them, checked as they are read.

    Example:
        >>> counts, fingerprint = stream_caption_counts(train.to_iterable_dataset())  # doctest: +SKIP
        >>> counts[:3].tolist()  # doctest: +SKIP
        [5, 5, 5]
    """
    fingerprint, counts = _Fingerprint(), array("i")  # not a list: 4 bytes a row, not 36
    for captions, owner in _checked_rows(_stream_rows(stream)):
        for caption in captions:
            fingerprint.update(caption, owner)
        counts.append(len(captions))
    return np.frombuffer(counts, dtype=np.int32), fingerprint.digest.hexdigest()


def caption_pool(source: datasets.Dataset | datasets.IterableDataset | Sequence[str]) -> CaptionPool:
    """The `CaptionPool` of a normalized `Dataset` or a list of captions (held in memory), or of a streamed
    `IterableDataset` (counted and fingerprinted in one pass, not held).

    Raises:
        ValueError: the source has no `captions` column, or a row has no (or an empty) caption; the row is named.
        TypeError: `source` is neither a dataset nor a list of captions.

    Example:
        >>> caption_pool(["a red circle", "a blue square"]).captions
        ['a red circle', 'a blue square']
    """
    if isinstance(source, datasets.IterableDataset):
        counts, fingerprint = stream_caption_counts(source)
        return CaptionPool(int(counts.sum()), fingerprint, stream=source)
    if isinstance(source, datasets.Dataset):
        pairs = list(_flat(_rows(source)))
        captions, owners = [c for c, _ in pairs], [o for _, o in pairs]
    elif isinstance(source, str) or not isinstance(source, Sequence):
        raise TypeError(f"source must be a datasets.Dataset or a list of captions, got {type(source).__name__}.")
    else:
        captions = check_captions(list(source), record="the source caption list")
        owners = [None] * len(captions)
    return CaptionPool(len(captions), source_fingerprint(captions, owners), captions, owners)
