"""The files of a distilled-set folder: their names, the shards, the ownership records and the manifest.

The layout `EDGEPipeline.distill` writes (a folder, and the same files in a Hub dataset repository):

```
output_dir/
  README.md                         dataset card; its YAML `configs:` points `load_dataset` at data/
  data/train-00000-of-00004.parquet one row per image, image bytes embedded (written atomically)
  ...
  edge_manifest.json                the arguments the set was made with (local bookkeeping, not pushed)
  edge_plan.json                    the selected prompts, item seeds and source ids (local, not pushed)
  edge_records/<file>.json          per shard and card: the run that wrote it and its SHA-256 (local, not pushed)
```

Rows follow the normalized form of `diffusers_edge.data.format` plus three columns: `prompt` (the caption the
image was generated from), `seed` (the item's generator seed) and `source_image_id` (the source image the prompt
came from, or null).

distill writes every shard and the card through a temporary file and `os.replace`, recording its SHA-256 and the
run's `run_id` first, so that a resumed run (`finished_shards`) or a reader (`check_complete`) counts a file as part
of the set only when the run's own record says so and the bytes still match. Before writing, distill refuses a
folder that holds anything it did not begin (`check_output_dir`) and a set made with other arguments
(`check_manifest`), and `clear_set` removes only what a previous run recorded as its own.

Example:
    >>> shard_path("flickr-edge-500", 0, 4).as_posix()
    'flickr-edge-500/data/train-00000-of-00004.parquet'
    >>> [p.name for p in check_complete("flickr-edge-500")]
    ['train-00000-of-00001.parquet']
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import pyarrow.parquet as pq

from ..serialization import write_json_atomic
from .format import IMAGE_COLUMN, NORMALIZED_FEATURES

PROMPT_COLUMN = "prompt"
SEED_COLUMN = "seed"
SOURCE_IMAGE_ID_COLUMN = "source_image_id"

DISTILLED_FEATURES = datasets.Features(
    {
        **NORMALIZED_FEATURES,
        PROMPT_COLUMN: datasets.Value("string"),
        SEED_COLUMN: datasets.Value("int64"),
        SOURCE_IMAGE_ID_COLUMN: datasets.Value("string"),
    }
)

DATA_DIR = "data"
SPLIT = "train"
CARD_NAME = "README.md"
MANIFEST_NAME = "edge_manifest.json"
PLAN_NAME = "edge_plan.json"
TMP_DIR = ".edge_tmp"
RECORDS_DIR = "edge_records"
SHARD_GLOB = f"{DATA_DIR}/{SPLIT}-*.parquet"
_SHARD_RE = re.compile(rf"^{SPLIT}-(\d{{5}})-of-(\d{{5}})\.parquet$")


def shard_path(output_dir: str | os.PathLike, index: int, num_shards: int) -> Path:
    """The path of shard `index` of `num_shards` in a distilled-set folder (datasets' `train-00000-of-00004` names).

    Example:
        >>> shard_path("out", 2, 10).as_posix()
        'out/data/train-00002-of-00010.parquet'
    """
    return Path(output_dir) / DATA_DIR / f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"


def run_id(manifest: Mapping[str, Any]) -> str:
    """The identity of a distill run: the SHA-256 of its manifest (every argument that shapes the set).

    Example:
        >>> len(run_id({"seed": 0, "num_pairs": 10}))
        64
    """
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks).

    Example:
        >>> file_sha256("out/data/train-00000-of-00001.parquet")[:8]
        '3f1c0a9e'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_path(output_dir: Path, name: str) -> Path:
    return output_dir / RECORDS_DIR / f"{name}.json"


def write_record(output_dir: str | os.PathLike, name: str, file: str | os.PathLike, run: str) -> None:
    """Records, atomically in `output_dir/edge_records/<name>.json`, that run `run` wrote `name` with `file`'s bytes.

    Written before the file is renamed to `name`, so a file at a shard's name without a matching record was not
    written by distill (or changed since).

    Example:
        >>> write_record("out", "train-00000-of-00001.parquet", "out/.edge_tmp/train-00000.partial", run_id(manifest))
    """
    record = _record_path(Path(output_dir), name)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"file": name, "sha256": file_sha256(file), "run": run}, indent=None, sort_keys=False)


def ownership_problem(output_dir: str | os.PathLike, path: str | os.PathLike, run: str | None) -> str | None:
    """Why `path` (a shard or the card of `output_dir`) does not count as written by run `run`; None if it does.

    `run=None` accepts the record of any run. The file's bytes must match the SHA-256 recorded when it was written.

    Example:
        >>> ownership_problem("out", "out/data/train-00000-of-00001.parquet", run_id(manifest)) is None
        True
    """
    output_dir, path = Path(output_dir), Path(path)
    record_file = _record_path(output_dir, path.name)
    if not record_file.is_file():
        return f"{str(path)!r} was not written by distill ({RECORDS_DIR}/ holds no record of it)"
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        recorded_hash, recorded_run = record["sha256"], record["run"]
    except (ValueError, KeyError, TypeError):
        return f"{str(path)!r} has a damaged record {str(record_file)!r}"
    if run is not None and recorded_run != run:
        return f"{str(path)!r} was written by a distill run with other arguments"
    if file_sha256(path) != recorded_hash:
        return f"{str(path)!r} changed since distill wrote it (its SHA-256 no longer matches the record)"
    return None


def set_files(output_dir: str | os.PathLike) -> list[Path]:
    """The files of `output_dir` that a distilled set consists of: its card and every `data/train-*.parquet`.

    Example:
        >>> [p.name for p in set_files("flickr-edge-500")]
        ['README.md', 'train-00000-of-00001.parquet']
    """
    output_dir = Path(output_dir)
    card = [output_dir / CARD_NAME] if (output_dir / CARD_NAME).exists() else []
    return card + sorted((output_dir / DATA_DIR).glob(f"{SPLIT}-*.parquet"))


def check_owned(output_dir: str | os.PathLike, run: str | None, action: str) -> None:
    """Raises `ValueError` naming every card or shard file in `output_dir` that run `run` did not write.

    `action` says what distill was about to do (it never overwrites or deletes a file it did not write).

    Example:
        >>> check_owned("flickr-edge-500", run_id(manifest), "resume the set")
    """
    problems = [p for p in (ownership_problem(output_dir, f, run) for f in set_files(output_dir)) if p]
    if problems:
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"Cannot {action} in {str(output_dir)!r}: {listed}. distill never overwrites or deletes files it did not "
            "write: move them away (or delete them yourself) and run again, or choose another output_dir."
        )


def finished_shards(output_dir: str | os.PathLike, num_shards: int, run: str) -> set[int]:
    """Indices of the shards of a `num_shards`-shard set that run `run` finished (recorded, bytes unchanged).

    Raises `ValueError` naming any shard or card file in the folder that the run did not write.

    Example:
        >>> finished_shards("a-folder-that-does-not-exist", 4, run_id(manifest))
        set()
    """
    check_owned(output_dir, run, "resume the set")
    done = set()
    for path in set_files(output_dir):
        match = _SHARD_RE.match(path.name)
        if match and int(match.group(2)) == num_shards:
            done.add(int(match.group(1)))
    return done


def encode_png(image: PIL.Image.Image) -> bytes:
    """PNG bytes of `image` (lossless and deterministic: the same pixels give the same bytes).

    Example:
        >>> encode_png(PIL.Image.new("RGB", (2, 2)))[:4]
        b'\\x89PNG'
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(
    rows: Mapping[str, Sequence[Any]], path: str | os.PathLike, tmp_dir: str | os.PathLike, run: str | None = None
) -> Path:
    """Writes one shard of distilled rows to Parquet atomically: into `tmp_dir` first, then `os.replace` to `path`.

    A reader (or a resumed run) therefore sees either no file or the complete shard, never a partial one.

    Args:
        rows: columns of `DISTILLED_FEATURES`; `image` holds PIL images or PNG bytes.
        path: the final shard path (see `shard_path`).
        tmp_dir: a folder on the same file system as `path` for the file being written.
        run: the writing run's `run_id`; when given, the shard's SHA-256 is recorded (`write_record`) before the
            rename, so a resumed run knows the file is its own.

    Returns:
        `path`.

    Example:
        >>> rows = {"image": [PIL.Image.new("RGB", (4, 4))], "captions": [["a red circle"]], "image_id": ["0"],
        ...         "prompt": ["a red circle"], "seed": [1], "source_image_id": [None]}
        >>> write_shard(rows, "out/data/train-00000-of-00001.parquet", "out/.edge_tmp")
    """
    missing = set(DISTILLED_FEATURES) - set(rows)
    if missing:
        raise ValueError(f"Distilled rows for {str(path)!r} lack column(s) {sorted(missing)}.")
    columns = {name: list(rows[name]) for name in DISTILLED_FEATURES}
    columns[IMAGE_COLUMN] = [
        {"bytes": image if isinstance(image, bytes) else encode_png(image), "path": None}
        for image in columns[IMAGE_COLUMN]
    ]
    path, tmp_dir = Path(path), Path(tmp_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.partial"
    table = datasets.Dataset.from_dict(columns, features=DISTILLED_FEATURES).data.table
    pq.write_table(table, tmp)
    if run is not None:
        write_record(path.parent.parent, path.name, tmp, run)
    os.replace(tmp, path)
    return path


def parquet_file(path: str | os.PathLike) -> pq.ParquetFile:
    """`pyarrow.parquet.ParquetFile(path)`, raising `ValueError` naming the file if it is not readable Parquet.

    Example:
        >>> parquet_file("flickr-edge-500/data/train-00000-of-00001.parquet").metadata.num_rows
        250
    """
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
        raise ValueError(f"Shard {str(path)!r} is not a readable Parquet file ({error}).") from error


def check_complete(output_dir: str | os.PathLike) -> list[Path]:
    """Returns the shard paths of a finished distilled set, or raises `ValueError` saying what is missing.

    A finished set has its card and the whole `train-i-of-N` series of readable Parquet shards. A folder that
    `distill` wrote (it holds `edge_manifest.json`) must moreover hold only the files that run recorded, unchanged:
    a shard of another run or a damaged one is named.

    Example:
        >>> [p.name for p in check_complete("flickr-edge-500")]
        ['train-00000-of-00001.parquet']
    """
    output_dir = Path(output_dir)
    if not (output_dir / CARD_NAME).is_file():
        raise ValueError(f"{str(output_dir)!r} has no {CARD_NAME}: it is not a finished distilled set.")
    shards = all_shards(output_dir)
    if (output_dir / MANIFEST_NAME).is_file():
        check_owned(output_dir, run_id(read_manifest(output_dir)), "read the set")
    for shard in shards:
        parquet_file(shard)
    return shards


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The arguments a distill run recorded in `output_dir/edge_manifest.json` (`ValueError` naming it if damaged).

    Example:
        >>> read_manifest("flickr-edge-500")["num_pairs"]
        500
    """
    path = Path(output_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is damaged ({error}); delete the set or choose another folder.") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{str(path)!r} is damaged (not a JSON object).")
    return manifest


def all_shards(output_dir: Path) -> list[Path]:
    """The shard files of a folder, checked to be the complete `train-i-of-n` series."""
    shards = sorted((output_dir / DATA_DIR).glob(f"{SPLIT}-*.parquet"))
    if not shards:
        raise ValueError(f"{str(output_dir)!r} has no {SHARD_GLOB} files.")
    counts = {_SHARD_RE.match(p.name).group(2) for p in shards if _SHARD_RE.match(p.name)}
    if len(counts) != 1 or len(shards) != int(counts.pop()):
        names = [p.name for p in shards]
        raise ValueError(f"{str(output_dir)!r} holds an incomplete or mixed set of shards: {names}.")
    return shards


def check_manifest(output_dir: Path, old: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Refuses to mix sets: raises naming the first argument that differs from the folder's manifest `old`."""
    for key in [*manifest, *(k for k in old if k not in manifest)]:  # the call's own arguments come first
        if old.get(key) != manifest.get(key):
            raise ValueError(
                f"{str(output_dir)!r} holds a distilled set made with {key}={old.get(key)!r}, but this call has "
                f"{key}={manifest.get(key)!r}. Use another output_dir, or resume=False to discard it and start over."
            )


def check_output_dir(output_dir: Path, has_manifest: bool) -> None:
    """Refuses a file, or a folder that holds anything but a set distill began (`edge_manifest.json` present).

    A folder with only a plan or partial files (a run killed before it wrote its manifest) counts as empty.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file, not a folder.")
    if has_manifest or not output_dir.is_dir():
        return
    others = sorted(p.name for p in output_dir.iterdir() if p.name not in (PLAN_NAME, TMP_DIR))
    if others:
        listed = others[:5] + ([f"... {len(others) - 5} more"] if len(others) > 5 else [])
        raise ValueError(
            f"output_dir {str(output_dir)!r} is not empty and holds no distilled set begun by distill (no "
            f"{MANIFEST_NAME}); it holds {listed}. distill writes only into an empty folder or one it wrote "
            "itself, so nothing there was changed: choose another (or an empty) output_dir."
        )


def clear_set(output_dir: Path) -> None:
    """Removes what a previous distill wrote in `output_dir`; the caller has checked that every file is ours.

    The manifest goes last, so a clear interrupted half-way still leaves a folder recognised as ours.
    """
    for path in set_files(output_dir):
        path.unlink()
        (output_dir / RECORDS_DIR / f"{path.name}.json").unlink(missing_ok=True)
    shutil.rmtree(output_dir / RECORDS_DIR, ignore_errors=True)
    shutil.rmtree(output_dir / TMP_DIR, ignore_errors=True)
    (output_dir / PLAN_NAME).unlink(missing_ok=True)
    (output_dir / MANIFEST_NAME).unlink()
