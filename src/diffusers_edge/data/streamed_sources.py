"""Streamed image-text datasets (CC3M-size Parquet or WebDataset shards, Hub streams) in the normalized form.

`load_streamed_source` returns a `datasets.IterableDataset` whose features are exactly `NORMALIZED_FEATURES`; every
row is normalized when it is read (`IterableDataset.map`), so loading makes no pass over the data. Images stay
encoded until a reader takes the `image` column: the source's image features are switched to `decode=False` before
the normalizing map and back to `Image()` after it, so `select_columns(["captions", "image_id"])` reads captions
without decoding a single image. Import it from `diffusers_edge.data.sources`, next to the other adapters.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets

from .format import (
    BLIP_MAX_WORDS,
    CAPTIONS_COLUMN,
    IMAGE_COLUMN,
    IMAGE_ID_COLUMN,
    NORMALIZED_FEATURES,
    check_captions,
    prepared_captions,
)
from .local_sources import split_names

# The builder that streams local shards, by file extension.
SHARD_BUILDERS = {".parquet": "parquet", ".tar": "webdataset"}

# WebDataset rows carry the sample's key (its file name without extensions) in this column.
WEBDATASET_KEY_COLUMN = "__key__"

_IMAGE = datasets.Image()
_KEEP_COLUMN = "_keep_row"  # set by the normalizing map when split filtering, dropped after the filter


def one_split(
    dataset: datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict,
    split: str | None,
) -> datasets.Dataset | datasets.IterableDataset:
    """The split `split` of a dataset dict (one with a single split needs none), or a single dataset as it is.

    Example:
        >>> one = datasets.Dataset.from_dict({"caption": ["a red circle"]})
        >>> one_split(datasets.DatasetDict(test=one), None) is one
        True
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None and len(dataset) == 1:
            split = next(iter(dataset))
        if split not in dataset:
            raise ValueError(f"Choose a split with split=...; the dataset has splits {list(dataset)}.")
        return dataset[split]
    if split is not None:
        raise ValueError(f"split={split!r} was given, but a single dataset was passed (it is one split already).")
    return dataset


def open_stream(
    spec: Any,
    split: str | None = None,
    config_name: str | None = None,
    data_files: str | Sequence[str] | dict | None = None,
    **load_kwargs: Any,
) -> datasets.IterableDataset:
    """One split of `spec` as a `datasets.IterableDataset`, as it is stored (not normalized).

    `spec` is an `IterableDataset` / `IterableDatasetDict`, an in-memory `Dataset` / `DatasetDict` (streamed with
    `to_iterable_dataset`), a builder name with `data_files` (`"parquet"`, `"webdataset"`), a local folder, glob or
    file of `.parquet` or `.tar` shards (the builder is inferred from the extension; a folder's file names give
    its splits, as for `datasets.load_dataset(folder)`), or a Hub name, loaded with `streaming=True`.

    Example:
        >>> stream = open_stream("cc3m-shards/*.tar")  # doctest: +SKIP
        >>> stream.column_names  # doctest: +SKIP
        ['jpg', 'txt', 'json', '__key__', '__url__']
    """
    if isinstance(spec, (str, os.PathLike)):
        path = str(spec)
        if data_files is None and (os.path.exists(path) or glob.has_magic(path)):
            builder = _shard_builder(path)
            if os.path.isdir(path):
                spec = datasets.load_dataset(builder, data_dir=path, split=split, streaming=True, **load_kwargs)
            else:
                files = sorted(glob.glob(path, recursive=True))
                spec = datasets.load_dataset(
                    builder, data_files=files, split=split or "train", streaming=True, **load_kwargs
                )
        else:
            spec = datasets.load_dataset(
                path, config_name, data_files=data_files, split=split, streaming=True, **load_kwargs
            )
        split = None
    dataset = one_split(spec, split)
    return dataset.to_iterable_dataset() if isinstance(dataset, datasets.Dataset) else dataset


def _shard_builder(path: str) -> str:
    """The builder for the shards a local folder, glob or file names; unknown or mixed extensions are refused."""
    if os.path.isdir(path):
        files = [p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")]
        found = {p.suffix for p in files}
        kinds = found & set(SHARD_BUILDERS)
        if not kinds:
            raise ValueError(
                f"{path!r} holds no .parquet or .tar shards to stream (its files end in {sorted(found)}); "
                f"supported extensions: {sorted(SHARD_BUILDERS)}."
            )
    else:
        files = [Path(p) for p in sorted(glob.glob(path, recursive=True))]
        if not files:
            raise FileNotFoundError(f"No file matches {path!r}.")
        unknown = sorted({str(p) for p in files if p.suffix not in SHARD_BUILDERS})
        if unknown:
            raise ValueError(
                f"Cannot stream {unknown[0]!r}: unknown file extension {Path(unknown[0]).suffix!r}; "
                f"supported extensions: {sorted(SHARD_BUILDERS)} (Parquet or WebDataset .tar shards)."
            )
        kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise ValueError(f"{path!r} mixes Parquet and WebDataset shards; stream one kind at a time.")
    return SHARD_BUILDERS[kinds.pop()]


def _image_cell(value: Any, record: str, image_column: str) -> dict:
    """An image cell as the `{bytes, path}` struct of `Image()`, kept as stored (never decoded)."""
    if value is None:
        raise ValueError(f"{record} has no image in column {image_column!r}.")
    if isinstance(value, dict):  # a path beside the bytes is dropped: `Image` would read a local file of that name
        return {"bytes": value.get("bytes"), "path": None if value.get("bytes") is not None else value.get("path")}
    return _IMAGE.encode_example(value)  # bytes, a path, or an already decoded image (a stream of unknown features)


def _require_stream_columns(columns: Sequence[str], wanted: dict[str, str | None], where: str) -> None:
    for argument, column in wanted.items():
        if column is not None and column not in columns:
            raise ValueError(f"{where} has no column {column!r} ({argument}={column!r}); its columns are {columns}.")


def _normalizer(
    name: str,
    columns: dict[str, str | None],
    wanted_splits: set[str] | None,
    preprocess: bool,
    max_words: int,
    check_columns: bool,
) -> Callable[[dict, int], dict]:
    """The per-row function of the normalizing map; `columns` maps image/caption/id/split to source columns."""
    image_column, caption_column, id_column, split_column = (
        columns["image_column"], columns["caption_column"], columns["image_id_column"], columns["split_column"]
    )  # fmt: skip

    def normalize(row: dict, position: int) -> dict:
        if check_columns:  # the stream's columns were unknown up front
            _require_stream_columns(list(row), columns, f"{name} row {position}")
        image_id = str(position) if id_column is None else row[id_column]
        record = f"{name} row {position} (image_id={image_id!r})"
        if image_id is None:
            raise ValueError(f"{record} has no image id in column {id_column!r}.")
        out = {IMAGE_ID_COLUMN: str(image_id), IMAGE_COLUMN: None, CAPTIONS_COLUMN: []}
        if wanted_splits is not None:
            out[_KEEP_COLUMN] = row[split_column] in wanted_splits
            if not out[_KEEP_COLUMN]:  # dropped by the filter: not checked, as the in-memory adapter
                return out
        out[IMAGE_COLUMN] = _image_cell(row[image_column], record, image_column)
        out[CAPTIONS_COLUMN] = prepared_captions(row[caption_column], record, preprocess, max_words)
        return out

    return normalize


def load_streamed_source(
    spec: datasets.IterableDataset | datasets.IterableDatasetDict | str | os.PathLike,
    split: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    image_id_column: str | None = None,
    preprocess: bool = False,
    max_words: int = BLIP_MAX_WORDS,
    data_files: str | Sequence[str] | dict | None = None,
    split_column: str | None = None,
    split_value: str | Sequence[str] | None = None,
    config_name: str | None = None,
    **load_kwargs: Any,
) -> datasets.IterableDataset:
    """Streams an image-text dataset in the normalized form, normalizing each row as it is read.

    Nothing is read at load time beyond what `datasets` reads to open the stream (file lists, the first shard's
    schema). Each row gets its captions from `caption_column` (one string or a list of strings; BLIP's
    `pre_caption` when `preprocess`), its image cell as stored (bytes and paths become the `{bytes, path}` of an
    `Image()` feature; nothing is decoded until the `image` column is read) and its id:

    * `image_id_column`, converted to a string, when given;
    * else `__key__` when the stream has it (WebDataset shards: the sample's file name without extensions, unique
      if the shards were written with globally unique keys, as img2dataset writes them);
    * else the row's position in the stream, as a string. This is the position in one full, unshuffled pass over
      the source (counted before `split_column` filtering): a shuffled stream (`.shuffle`), a stream split across
      processes (`split_dataset_by_node`) or one resumed differently numbers its rows differently, so give such
      streams an id column.

    Columns are checked up front when the stream's features are known, else at each row. Unlike
    `load_hub_source`, an image id that appears twice cannot be found without keeping every id seen, so it is not
    checked; image paths are not checked either (a missing file fails when its image is decoded). A stream in
    which no row is in `split_value` yields nothing.

    Args:
        spec: an `IterableDataset` / `IterableDatasetDict`, a builder name with `data_files` (`"parquet"`,
            `"webdataset"`), a local folder, glob or file of `.parquet` or `.tar` shards (the builder is inferred
            from the extension), or a Hub name.
        split: the split to stream (a folder's splits come from its file names; files and globs are `"train"`).
        image_column: the column holding the images (an `Image()` feature, image bytes or paths).
        caption_column: the column holding the caption(s).
        image_id_column: the column holding the image id; `None` uses `__key__` or the row's position (see above).
        preprocess: apply `pre_caption` (BLIP's caption preprocessing) to every caption.
        max_words: words kept by `pre_caption` when `preprocess` is set.
        data_files: the files for a builder name or Hub name, as `datasets.load_dataset` takes them.
        split_column: a column to filter rows on (`IterableDataset.filter`, on the encoded rows: cheap).
        split_value: the value(s) of `split_column` to keep.
        config_name: the dataset configuration passed to `datasets.load_dataset`.
        **load_kwargs: further arguments for `datasets.load_dataset` (e.g. `revision`, `token`).

    Returns:
        A `datasets.IterableDataset` with features `NORMALIZED_FEATURES`.

    Raises:
        ValueError: a named column is missing (the existing ones are listed), a local file has an unknown extension,
            or, while iterating, a row has no image, no id, no caption or an empty one (the row and id are named).
        FileNotFoundError: a local glob matches no file.

    Example:
        >>> cc3m = load_streamed_source("cc3m/*.tar", image_column="jpg", caption_column="txt")  # doctest: +SKIP
        >>> next(iter(cc3m.select_columns(["captions", "image_id"])))  # doctest: +SKIP
        {'captions': ['a dog runs on the beach'], 'image_id': '000000000'}
    """
    if (split_column is None) != (split_value is None):
        raise ValueError("split_column and split_value go together: give both or neither.")
    stream = open_stream(spec, split, config_name, data_files, **load_kwargs)
    name = str(spec) if isinstance(spec, (str, os.PathLike)) else "the stream"
    known = stream.column_names
    if image_id_column is None and known is not None and WEBDATASET_KEY_COLUMN in known:
        image_id_column = WEBDATASET_KEY_COLUMN
    columns = {
        "image_column": image_column,
        "caption_column": caption_column,
        "image_id_column": image_id_column,
        "split_column": split_column,
    }
    if known is not None:
        _require_stream_columns(known, columns, name)
    wanted = None if split_value is None else split_names(split_value)
    encoded = stream.decode(False) if stream.features is not None else stream
    out = encoded.map(
        _normalizer(name, columns, wanted, preprocess, max_words, check_columns=known is None),
        with_indices=True,
    )
    if wanted is not None:
        out = out.filter(bool, input_columns=[_KEEP_COLUMN])
    return _typed(out.select_columns(list(NORMALIZED_FEATURES)), NORMALIZED_FEATURES)


def _typed(mapped: datasets.IterableDataset, features: datasets.Features) -> datasets.IterableDataset:
    """A map's output with its features, images decoded when read.

    The maps here are given no `features=`: datasets (5.2) takes the rows of a map given features as already typed,
    and a later `cast` / `decode()` then leaves `Image()` cells undecoded. Casting an untyped map's output applies
    the features to each row as it is read, so an image is decoded only when a reader takes the `image` column.
    """
    return mapped.cast(features)


def validate_normalized_stream(stream: datasets.IterableDataset, name: str = "stream") -> datasets.IterableDataset:
    """`stream` with its captions checked as each row is read (extra columns kept, images not decoded).

    The streamed counterpart of `validate_normalized`: a missing column is named at once, a row with no caption or
    an empty one when it is read. Repeated image ids are not checked (that would keep every id seen).

    Example:
        >>> rows = datasets.Dataset.from_dict({"image": [None], "captions": [[""]], "image_id": ["7"]})
        >>> list(validate_normalized_stream(rows.to_iterable_dataset(), name="toy"))
        Traceback (most recent call last):
        ...
        ValueError: toy row 0 (image_id='7') has an empty caption at position 0: ''.
    """
    missing = [c for c in NORMALIZED_FEATURES if c not in (stream.column_names or [])]
    if missing:
        raise ValueError(
            f"{name} is missing column(s) {missing}; the normalized form needs {list(NORMALIZED_FEATURES)} "
            f"(found {stream.column_names})."
        )

    def check(captions: list[str], image_id: str, position: int) -> dict:
        check_captions(captions, record=f"{name} row {position} (image_id={image_id!r})")
        return {}

    checked = stream.decode(False).map(check, input_columns=[CAPTIONS_COLUMN, IMAGE_ID_COLUMN], with_indices=True)
    return _typed(checked, stream.features)
