"""Adapters from common image-text formats into the normalized form of `diffusers_edge.data.format`.

Every adapter returns a `datasets.Dataset` whose features are exactly `NORMALIZED_FEATURES`: `image` (an
`Image()` feature), `captions` (a list of one or more non-empty strings) and `image_id` (a string unique in the
dataset). Images are never decoded here: local files are stored by (absolute) path and checked with a cheap
`PIL.Image.verify()`; images of Hub datasets are passed through as they are stored.

| format                                   | adapter                     |
|------------------------------------------|-----------------------------|
| Karpathy / BLIP JSON (MTT-VL, LoRS, EDGE) | `load_karpathy_json`        |
| a Hub dataset or a loaded `Dataset`      | `load_hub_source`           |
| an imagefolder with `metadata.jsonl`     | `load_imagefolder_source`   |
| a stream: Parquet / WebDataset shards, a Hub stream, an `IterableDataset` | `load_streamed_source` |
| any of the above, by what it is          | `load_source`               |

The local adapters live in `diffusers_edge.data.local_sources`, the streamed one in
`diffusers_edge.data.streamed_sources` and BLIP's `pre_caption` in `diffusers_edge.data.format`; all are importable
from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from .format import (
    BLIP_MAX_WORDS,
    CAPTIONS_COLUMN,
    IMAGE_COLUMN,
    IMAGE_ID_COLUMN,
    NORMALIZED_FEATURES,
    pre_caption,
    prepared_captions,
    validate_normalized,
)
from .local_sources import load_imagefolder_source, load_karpathy_json, split_names, verify_image
from .streamed_sources import load_streamed_source, one_split, open_stream, validate_normalized_stream

__all__ = [
    "BLIP_MAX_WORDS",
    "load_hub_source",
    "load_imagefolder_source",
    "load_karpathy_json",
    "load_source",
    "load_streamed_source",
    "pre_caption",
]


def _resolve_dataset(
    dataset_or_name: datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | str,
    split: str | None,
    config_name: str | None,
    streaming: bool = False,
    **load_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """One split from a dataset, a dataset dict (+ split) or a name for `datasets.load_dataset`.

    With `streaming`, an `IterableDataset` (see `open_stream`); else a `Dataset`, and a streamed dataset is refused:
    the in-memory adapters need random access.
    """
    if streaming:
        return open_stream(dataset_or_name, split, config_name, **load_kwargs)
    if isinstance(dataset_or_name, (str, os.PathLike)):
        dataset_or_name = datasets.load_dataset(str(dataset_or_name), config_name, split=split, **load_kwargs)
        split = None
    if isinstance(dataset_or_name, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError(
            "A streamed dataset (IterableDataset) was given where random access is needed; stream it with "
            "load_source(..., streaming=True) or load_streamed_source(...)."
        )
    return one_split(dataset_or_name, split)


def _require_columns(dataset: datasets.Dataset, wanted: dict[str, str | None], name: str) -> None:
    for argument, column in wanted.items():
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"{name} has no column {column!r} ({argument}={column!r}); its columns are {dataset.column_names}."
            )


def _select_split(
    dataset: datasets.Dataset, split_column: str, split_value: str | Sequence[str], name: str
) -> tuple[datasets.Dataset, list[int]]:
    """Keeps the rows whose `split_column` is in `split_value`; returns them with their source row numbers."""
    wanted = split_names(split_value)
    values = dataset.with_format("arrow")[split_column].to_pylist()
    rows = [i for i, value in enumerate(values) if value in wanted]
    if not rows:
        raise ValueError(
            f"{name}: no row has {split_column} in {sorted(wanted)}; its values are {sorted(set(map(str, values)))}."
        )
    return dataset.select(rows), rows


def load_hub_source(
    dataset_or_name: datasets.Dataset | datasets.DatasetDict | str,
    split: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    image_id_column: str | None = None,
    split_column: str | None = None,
    split_value: str | Sequence[str] | None = None,
    config_name: str | None = None,
    preprocess: bool = False,
    max_words: int = BLIP_MAX_WORDS,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Brings a Hub (or already loaded) image-text dataset into the normalized form.

    The caption column may hold one string or a list of strings per row. Rows can be filtered on a split column
    (the common Flickr30K Hub copy keeps all 31,014 images in one split, with columns `image`, `caption` (5 per
    image), `sentids`, `split` ("train"/"val"/"test"), `img_id`, `filename`). Images are not decoded: the image
    column is kept as stored (cast to `Image()` if it holds paths), and only the caption, id and split columns
    are read into Python.

    Args:
        dataset_or_name: a `datasets.Dataset`, a `DatasetDict`, or a name (or local folder) for
            `datasets.load_dataset`.
        split: the split to load (for a name or a `DatasetDict`; one with a single split needs none).
        image_column: the column holding the images (an `Image()` feature, or image paths).
        caption_column: the column holding the caption(s).
        image_id_column: the column holding the image id (converted to a string); `None` uses the row number in
            the loaded split (before split-column filtering), so ids stay the same whichever `split_value` is kept.
        split_column: a column to filter rows on, e.g. `"split"` for the Flickr30K Hub copy.
        split_value: the value(s) of `split_column` to keep, e.g. `"test"`.
        config_name: the dataset configuration passed to `datasets.load_dataset`.
        preprocess: apply `pre_caption` (BLIP's caption preprocessing) to every caption.
        max_words: words kept by `pre_caption` when `preprocess` is set.
        **load_kwargs: further arguments for `datasets.load_dataset` (e.g. `revision`, `cache_dir`).

    Returns:
        A `datasets.Dataset` with features `NORMALIZED_FEATURES`.

    Raises:
        ValueError: a named column is missing (the existing ones are listed), no row is in `split_value`, a row has
            no image or no (or an empty) caption, or an image id appears twice; the row is named.
        TypeError: a streamed dataset (`IterableDataset`) was given; `load_streamed_source` reads those.

    Example:
        >>> test = load_hub_source(
        ...     "nlphuji/flickr30k", split="test", image_id_column="img_id", split_column="split", split_value="test"
        ... )
        >>> test.num_rows
        1000
    """
    if (split_column is None) != (split_value is None):
        raise ValueError("split_column and split_value go together: give both or neither.")
    dataset = _resolve_dataset(dataset_or_name, split, config_name, **load_kwargs)
    name = str(dataset_or_name) if isinstance(dataset_or_name, (str, os.PathLike)) else "the dataset"
    _require_columns(
        dataset,
        {
            "image_column": image_column,
            "caption_column": caption_column,
            "image_id_column": image_id_column,
            "split_column": split_column,
        },
        name,
    )
    rows = list(range(dataset.num_rows))
    if split_column is not None:
        dataset, rows = _select_split(dataset, split_column, split_value, name)
    columns = dataset.with_format("arrow")
    if image_id_column is None:
        ids = [str(row) for row in rows]
    else:
        ids = [None if v is None else str(v) for v in columns[image_id_column].to_pylist()]
    images_missing = columns[image_column].is_null().to_pylist()
    by_path = _images_by_path(columns[image_column])
    captions, first_row, path_owner = [], {}, {}
    cells = zip(rows, ids, columns[caption_column].to_pylist(), images_missing)
    for position, (row, image_id, value, no_image) in enumerate(cells):
        record = f"{name} row {row} (image_id={image_id!r})"
        if image_id is None:
            raise ValueError(f"{record} has no image id in column {image_id_column!r}.")
        if no_image:
            raise ValueError(f"{record} has no image in column {image_column!r}.")
        if position in by_path:
            path = _verify_path_cell(by_path[position], f"{record} column {image_column!r}")
            owner = path_owner.setdefault(path, image_id)
            if owner != image_id:
                raise ValueError(
                    f"{record}: image file {str(path)!r} is already image {owner!r}; one image under two ids would "
                    "count as two different images."
                )
        if image_id in first_row:
            raise ValueError(f"{name}: image_id {image_id!r} appears twice (rows {first_row[image_id]} and {row}).")
        first_row[image_id] = row
        captions.append(prepared_captions(value, record, preprocess, max_words))
    out = dataset.with_format(None).select_columns([image_column])
    if image_column != IMAGE_COLUMN:
        out = out.rename_column(image_column, IMAGE_COLUMN)
    if out.features[IMAGE_COLUMN] != NORMALIZED_FEATURES[IMAGE_COLUMN]:
        out = out.cast_column(IMAGE_COLUMN, NORMALIZED_FEATURES[IMAGE_COLUMN])
    # Built as one Arrow table and joined side by side: `add_column` hashes the Python lists with dill for its
    # fingerprint and `from_dict(features=...)` encodes them row by row, each seconds at Flickr30K size.
    schema = NORMALIZED_FEATURES.arrow_schema
    text = pa.table(
        {
            column: pa.array(values, type=schema.field(column).type)
            for column, values in [(CAPTIONS_COLUMN, captions), (IMAGE_ID_COLUMN, ids)]
        }
    )
    return datasets.concatenate_datasets([out, datasets.Dataset(text)], axis=1)


def _images_by_path(column: pa.ChunkedArray) -> dict[int, str]:
    """The cells of an image column that hold a local path rather than image bytes, by position.

    A string column holds paths (or text put in the wrong column); an `Image()` column holds `{bytes, path}`
    structs, read from the path when the bytes are null. URLs are left to `datasets`.
    """
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        paths = column.to_pylist()
    elif pa.types.is_struct(column.type) and {"bytes", "path"} <= {f.name for f in column.type}:
        no_bytes = pc.is_null(pc.struct_field(column, "bytes")).to_pylist()
        paths = [p if missing else None for p, missing in zip(pc.struct_field(column, "path").to_pylist(), no_bytes)]
    else:
        return {}
    return {i: p for i, p in enumerate(paths) if p is not None and "://" not in p}


def _verify_path_cell(value: str, record: str) -> Path:
    """The resolved path of an image cell stored by path, checked to be a readable image file."""
    if not Path(value).is_file():
        raise FileNotFoundError(
            f"{record} holds {value[:80]!r}, which is not an existing image file (is it the right column?)."
        )
    verify_image(Path(value), record)
    return Path(value).resolve()


def _is_normalized(dataset: datasets.Dataset | datasets.IterableDataset) -> bool:
    features = dataset.features or {}  # a stream's features may be unknown
    return all(features.get(column) == feature for column, feature in NORMALIZED_FEATURES.items())


def load_source(
    spec: datasets.Dataset | datasets.DatasetDict | str | os.PathLike,
    split: str | Sequence[str] | None = None,
    image_root: str | os.PathLike | None = None,
    preprocess: bool = False,
    max_words: int = BLIP_MAX_WORDS,
    allow_outside_root: bool = False,
    streaming: bool = False,
    **hub_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """One entry point for `--train_source` / `--test_source`: picks the adapter from what `spec` is.

    * a path ending in `.json` -> `load_karpathy_json(spec, image_root or its folder, split, ...)`;
    * a folder holding `metadata.jsonl` -> `load_imagefolder_source`;
    * a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` -> loaded with `load_from_disk`,
      then as a `Dataset` below;
    * a `Dataset`, a `DatasetDict`, or anything else (a Hub name, a local Parquet folder) -> `load_hub_source`.
      A dataset already in the normalized form (e.g. a distilled set) is validated and returned as it is,
      extra columns included, unless column arguments or `preprocess` ask for a conversion.

    With `streaming=True` the result is a `datasets.IterableDataset` from `load_streamed_source` (Parquet or
    WebDataset shards, a Hub stream, an `IterableDataset`, a saved dataset read as a stream); a stream already in
    the normalized form passes through with its captions checked as rows are read. Karpathy JSON files and
    imagefolders are read whole: they are refused with `streaming=True`.

    Args:
        spec: what to load.
        split: the split to load (Hub names, `DatasetDict`s, saved dataset dicts) or to keep (Karpathy's
            `dataset_<name>.json`).
        image_root: the image folder of a Karpathy JSON file (default: the JSON file's folder).
        preprocess: apply `pre_caption` (BLIP's caption preprocessing) to every caption.
        max_words: words kept by `pre_caption` when `preprocess` is set.
        allow_outside_root: let a JSON file or `metadata.jsonl` name images outside its image root.
        streaming: stream the source (see above) instead of loading it.
        **hub_kwargs: arguments of `load_hub_source` / `load_streamed_source` (`image_column`, `caption_column`,
            `split_column`, `data_files`, ...) or of `load_imagefolder_source` (`caption_column`).

    Returns:
        A `datasets.Dataset` in the normalized form, or a `datasets.IterableDataset` with `streaming=True`.

    Example:
        >>> train = load_source("annotations/flickr30k_train.json", image_root="data/flickr30k")
        >>> test = load_source("nlphuji/flickr30k", split="test", split_column="split", split_value="test")
        >>> cc3m = load_source("cc3m/*.tar", streaming=True, image_column="jpg", caption_column="txt")
    """
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if streaming and (path.suffix == ".json" or (path / "metadata.jsonl").is_file()):
            raise ValueError(
                f"{str(path)!r} is a Karpathy JSON file or an imagefolder, which is read whole; load it without "
                "streaming=True (streaming is for Parquet / WebDataset shards, Hub streams and IterableDatasets)."
            )
        if path.suffix == ".json":
            root = path.parent if image_root is None else image_root
            return load_karpathy_json(
                path, root, split=split, preprocess=preprocess, max_words=max_words,
                allow_outside_root=allow_outside_root,
            )  # fmt: skip
        if (path / "metadata.jsonl").is_file():
            if split is not None:
                raise ValueError(f"{str(path)!r} is an imagefolder (one split); pass split=None.")
            return load_imagefolder_source(
                path, preprocess=preprocess, max_words=max_words, allow_outside_root=allow_outside_root, **hub_kwargs
            )
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            spec = datasets.load_from_disk(str(path))
    config_name = hub_kwargs.pop("config_name", None)
    dataset = _resolve_dataset(spec, split, config_name, streaming, **_load_kwargs(hub_kwargs))
    name = str(spec) if isinstance(spec, (str, os.PathLike)) else "dataset"
    if _is_normalized(dataset) and not hub_kwargs and not preprocess:
        return validate_normalized_stream(dataset, name=name) if streaming else validate_normalized(dataset, name=name)
    if _is_normalized(dataset):
        hub_kwargs.setdefault("caption_column", CAPTIONS_COLUMN)
        hub_kwargs.setdefault("image_id_column", IMAGE_ID_COLUMN)
    adapter = load_streamed_source if streaming else load_hub_source
    return adapter(dataset, preprocess=preprocess, max_words=max_words, **hub_kwargs)


_HUB_SOURCE_ARGUMENTS = {"image_column", "caption_column", "image_id_column", "split_column", "split_value"}


def _load_kwargs(hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Removes and returns the arguments meant for `datasets.load_dataset` (those `load_hub_source` does not name)."""
    extra = {k: v for k, v in hub_kwargs.items() if k not in _HUB_SOURCE_ARGUMENTS}
    for key in extra:
        del hub_kwargs[key]
    return extra
