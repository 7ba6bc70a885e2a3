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
| any of the above, by what it is          | `load_source`               |
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc

from ..paths import read_annotation_text, resolve_inside
from .format import (
    CAPTIONS_COLUMN,
    IMAGE_COLUMN,
    IMAGE_ID_COLUMN,
    NORMALIZED_FEATURES,
    caption_list,
    check_captions,
    validate_normalized,
)

# MTT-VL, LoRS and EDGE build their Flickr30K / COCO datasets with max_words=30 (BLIP's own default is 50).
BLIP_MAX_WORDS = 30

# The punctuation BLIP's `pre_caption` turns into spaces (salesforce/BLIP, data/utils.py). Commas, apostrophes,
# hyphens and slashes are kept: BLIP does not touch them (ALBEF's older `pre_caption` did).
_BLIP_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = BLIP_MAX_WORDS) -> str:
    """BLIP's caption preprocessing, as used by the MTT-VL / LoRS / EDGE evaluation.

    Follows `pre_caption` in salesforce/BLIP `data/utils.py` (copied unchanged into the MTT-VL and EDGE
    repositories): lower-case; each of `. ! " ( ) * # : ; ~` becomes a space; every run of two or more
    whitespace characters becomes one space; a trailing newline and surrounding spaces are stripped; the caption
    is cut to its first `max_words` space-separated words. Commas, apostrophes, hyphens and slashes are kept.

    Args:
        caption: the raw caption.
        max_words: the number of words kept (30 in MTT-VL, LoRS and EDGE).

    Returns:
        The preprocessed caption (may be empty if the caption held only punctuation).

    Example:
        >>> pre_caption("A dog (brown) runs!  Fast.")
        'a dog brown runs fast'
        >>> pre_caption("Two men, one in a T-shirt.", max_words=4)
        'two men, one in'
    """
    caption = _BLIP_PUNCTUATION.sub(" ", caption.lower())
    caption = _WHITESPACE_RUN.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def _prepared_captions(value: Any, record: str, preprocess: bool, max_words: int) -> list[str]:
    captions = caption_list(value, record)
    if preprocess:
        captions = check_captions(
            [pre_caption(c, max_words) for c in captions], record=f"{record} (after BLIP pre_caption)"
        )
    return captions


def _verify_image(path: Path, record: str) -> None:
    """Raises if `path` is missing or is not an image PIL can read to its end.

    `verify()` checks the structure (and a PNG's checksums) without decoding, but a JPEG cut short passes it and
    would only fail when training reaches it. A complete JPEG ends with the end-of-image marker `FF D9` (ITU-T T.81,
    B.2.1), so a JPEG whose last bytes (zero padding aside) are something else is decoded to be sure; other formats
    than PNG and JPEG are decoded too.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{record}: image file {str(path)!r} does not exist.")
    try:
        with PIL.Image.open(path) as image:
            image_format = image.format
            image.verify()
        if image_format == "PNG" or (image_format == "JPEG" and _ends_with_jpeg_eoi(path)):
            return
        with PIL.Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))  # JPEG: decode at 1/8 scale
            image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, ... for broken files
        raise ValueError(f"{record}: image file {str(path)!r} cannot be read as an image ({error}).") from error


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - 64))
        return file.read().rstrip(b"\x00").endswith(b"\xff\xd9")


@dataclass
class _Entry:
    path: Path
    captions: list[str]
    record: str


@dataclass
class _LocalImages:
    """Images on disk under `root`, grouped by image id in first-seen order, each with its captions in order.

    Every path an annotation names is resolved (`..`, absolute paths, symlinks) and must stay inside `root` unless
    `allow_outside_root`; one file may not appear under two image ids (it would count as two images).
    """

    root: Path
    allow_outside_root: bool = False
    entries: dict[str, _Entry] = field(default_factory=dict)
    owners: dict[Path, str] = field(default_factory=dict)
    resolved: dict[str, Path] = field(default_factory=dict)

    def add(self, image_id: str, relative: str | os.PathLike, captions: list[str], record: str) -> None:
        key = str(relative)
        if key not in self.resolved:  # a train file names each image once per caption: resolve it once
            self.resolved[key] = resolve_inside(self.root, relative, record, self.allow_outside_root)
        path = self.resolved[key]
        owner = self.owners.setdefault(path, image_id)
        if owner != image_id:
            raise ValueError(
                f"{record}: image file {str(path)!r} is already image {owner!r} ({self.entries[owner].record}) but "
                f"here has image_id {image_id!r}; one image under two ids would count as two different images."
            )
        entry = self.entries.get(image_id)
        if entry is None:
            self.entries[image_id] = _Entry(path, list(captions), record)
        elif entry.path != path:
            raise ValueError(
                f"{record}: image_id {image_id!r} already belongs to {str(entry.path)!r} ({entry.record}) "
                f"but here names {str(path)!r}; image ids must be unique per image file."
            )
        else:
            entry.captions.extend(captions)

    def to_dataset(self, name: str) -> datasets.Dataset:
        if not self.entries:
            raise ValueError(f"{name} holds no images.")
        for entry in self.entries.values():
            _verify_image(entry.path, entry.record)
        mapping = {
            IMAGE_COLUMN: [str(e.path) for e in self.entries.values()],
            CAPTIONS_COLUMN: [e.captions for e in self.entries.values()],
            IMAGE_ID_COLUMN: list(self.entries),
        }
        return datasets.Dataset.from_dict(mapping, features=NORMALIZED_FEATURES)


def _require_keys(row: Any, keys: Sequence[str], record: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{record} is a {type(row).__name__}, expected a JSON object with keys {list(keys)}.")
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{record} has no {missing} field(s); it has {sorted(row)}.")


def _split_names(split: str | Sequence[str]) -> set[str]:
    return {split} if isinstance(split, str) else set(split)


def _add_blip_records(images: _LocalImages, records: list, source: str, preprocess: bool, max_words: int) -> None:
    """BLIP files: a train file has one record per caption, a val/test file one record per image (caption list)."""
    for index, row in enumerate(records):
        record = f"{source} record {index}"
        _require_keys(row, ["image", "caption"], record)
        record = f"{record} (image {row['image']!r})"
        image_id = str(row["image_id"]) if row.get("image_id") is not None else Path(row["image"]).stem
        captions = _prepared_captions(row["caption"], record, preprocess, max_words)
        images.add(image_id, row["image"], captions, record)


def _add_karpathy_images(
    images: _LocalImages,
    data: dict,
    source: str,
    split: str | Sequence[str] | None,
    preprocess: bool,
    max_words: int,
) -> None:
    """Karpathy's own `dataset_<name>.json`: `{"images": [{"filename", "sentences": [{"raw"}], "split", ...}]}`."""
    wanted = None if split is None else _split_names(split)
    present: set[str] = set()
    for index, row in enumerate(data["images"]):
        record = f"{source} images[{index}]"
        _require_keys(row, ["filename", "sentences", "split"], record)
        present.add(row["split"])
        if wanted is not None and row["split"] not in wanted:
            continue
        record = f"{record} (filename {row['filename']!r})"
        for number, sentence in enumerate(row["sentences"]):
            _require_keys(sentence, ["raw"], f"{record} sentences[{number}]")
        captions = _prepared_captions([s["raw"] for s in row["sentences"]], record, preprocess, max_words)
        relative = Path(row.get("filepath") or "") / row["filename"]
        images.add(Path(row["filename"]).stem, relative, captions, record)
    if wanted is not None and not wanted & present:
        raise ValueError(f"{source} has no images in split {sorted(wanted)}; its splits are {sorted(present)}.")


def load_karpathy_json(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str | Sequence[str] | None = None,
    preprocess: bool = False,
    max_words: int = BLIP_MAX_WORDS,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """Loads a Karpathy-split annotation file into the normalized form.

    Two layouts are recognised by their content:

    * BLIP's per-split files (`flickr30k_train.json`, `coco_karpathy_test.json`, ... as read by MTT-VL, LoRS and
      EDGE), a JSON list. Train files hold one record per caption, `{"image": "rel/path.jpg", "caption": "...",
      "image_id": "..."}`; records are grouped by image id into one row whose captions keep their first-seen
      order (rows keep the order in which images first appear). Val/test files hold one record per image,
      `{"image": "rel/path.jpg", "caption": ["...", "..."]}`. The image id is the record's `image_id` when it has
      one, else the stem of the image path. These files hold one split each: `split` must be `None`.
    * Karpathy's own `dataset_flickr30k.json` / `dataset_coco.json`, `{"images": [{"filename", "filepath"?,
      "split", "sentences": [{"raw": ...}]}]}`; `split` selects images by their `split` field (one name or
      several; Karpathy's COCO train split is `["train", "restval"]`). The image id is the file name's stem.

    Every image path must resolve (after `..`, absolute paths and symlinks) inside `image_root`: an annotation file
    from elsewhere cannot make the library read other files. Every image file is checked to exist and to read
    with PIL to its end (a JPEG cut short is named here, not when training reaches it).

    Args:
        annotation_file: the JSON file.
        image_root: the folder the records' image paths are relative to (e.g. the folder holding
            `flickr30k-images/`).
        split: for Karpathy's own files, the split name(s) to keep (`None` keeps all images).
        preprocess: apply `pre_caption` (BLIP's preprocessing, as the MTT-VL / LoRS / EDGE evaluation does).
        max_words: words kept by `pre_caption` when `preprocess` is set.
        allow_outside_root: accept image paths that lead outside `image_root` (images kept elsewhere on purpose).

    Returns:
        A `datasets.Dataset` with features `NORMALIZED_FEATURES`, images stored by absolute path.

    Raises:
        FileNotFoundError: the annotation file or an image file is missing (the record is named).
        ValueError: the file is not UTF-8 JSON, or a record lacks a field, has no (or an empty) caption, names an
            unreadable image or one outside `image_root`, reuses an image id for another file or gives one file two
            ids; the record is named.

    Example:
        >>> test = load_karpathy_json("annotations/flickr30k_test.json", "data/flickr30k", preprocess=True)
        >>> test.num_rows, len(test[0]["captions"])
        (1000, 5)
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"Karpathy annotation file {str(annotation_file)!r} does not exist.")
    try:
        data = json.loads(read_annotation_text(annotation_file))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(annotation_file)!r} is not valid JSON: {error}.") from error
    source, images = str(annotation_file), _LocalImages(Path(image_root).resolve(), allow_outside_root)
    if isinstance(data, dict) and "images" in data:
        _add_karpathy_images(images, data, source, split, preprocess, max_words)
    elif isinstance(data, list):
        if split is not None:
            raise ValueError(
                f"{source} is a BLIP per-split file (a JSON list), so it holds one split already; "
                f"split={split!r} applies only to Karpathy's dataset_<name>.json. Pass split=None."
            )
        _add_blip_records(images, data, source, preprocess, max_words)
    else:
        raise ValueError(
            f"{source} is neither a BLIP annotation list nor Karpathy's {{'images': [...]}} file "
            f"(top level is a {type(data).__name__})."
        )
    return images.to_dataset(source)


def load_imagefolder_source(
    folder: str | os.PathLike,
    caption_column: str = "caption",
    preprocess: bool = False,
    max_words: int = BLIP_MAX_WORDS,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """Loads an imagefolder with a `metadata.jsonl` (the layout of datasets' `imagefolder` builder).

    Each line of `<folder>/metadata.jsonl` is `{"file_name": "rel/path.png", "<caption_column>": "..." or
    ["...", ...]}`, the path relative to `folder`. The image id is the file name's stem; a file named on several
    lines gets the captions of all of them, in order. Files that no line names are ignored. Every named file must
    resolve inside `folder` (after `..` and symlinks) and is checked to exist and to read with PIL to its end.

    Args:
        folder: the folder holding `metadata.jsonl` and the images.
        caption_column: the metadata key holding the caption(s).
        preprocess: apply `pre_caption` (BLIP's caption preprocessing) to every caption.
        max_words: words kept by `pre_caption` when `preprocess` is set.
        allow_outside_root: accept `file_name`s that lead outside `folder`.

    Returns:
        A `datasets.Dataset` with features `NORMALIZED_FEATURES`, images stored by absolute path.

    Raises:
        FileNotFoundError: `metadata.jsonl` or a named image file is missing (the line is named).
        ValueError: a line is not JSON, lacks a key, has no (or an empty) caption, names an unreadable image, or two
            different files share a stem; the line is named.

    Example:
        >>> shots = load_imagefolder_source("my_photos")  # my_photos/metadata.jsonl + my_photos/*.jpg
        >>> shots.features == NORMALIZED_FEATURES
        True
    """
    folder = Path(folder).resolve()
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no metadata.jsonl; an imagefolder source needs one.")
    images = _LocalImages(folder, allow_outside_root)
    for number, line in enumerate(read_annotation_text(metadata).splitlines(), start=1):
        if not line.strip():
            continue
        record = f"{metadata} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{record} is not valid JSON: {error}.") from error
        _require_keys(row, ["file_name", caption_column], record)
        record = f"{record} (file_name {row['file_name']!r})"
        captions = _prepared_captions(row[caption_column], record, preprocess, max_words)
        images.add(Path(row["file_name"]).stem, row["file_name"], captions, record)
    return images.to_dataset(str(metadata))


def _resolve_dataset(
    dataset_or_name: datasets.Dataset | datasets.DatasetDict | str,
    split: str | None,
    config_name: str | None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """One `Dataset` from a `Dataset`, a `DatasetDict` (+ split) or a name for `datasets.load_dataset`."""
    if isinstance(dataset_or_name, (str, os.PathLike)):
        dataset_or_name = datasets.load_dataset(str(dataset_or_name), config_name, split=split, **load_kwargs)
        split = None
    if isinstance(dataset_or_name, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError("Streaming datasets are not supported by this adapter; load without streaming=True.")
    if isinstance(dataset_or_name, datasets.DatasetDict):
        if split is None and len(dataset_or_name) == 1:
            split = next(iter(dataset_or_name))
        if split not in dataset_or_name:
            raise ValueError(f"Choose a split with split=...; the dataset has splits {list(dataset_or_name)}.")
        return dataset_or_name[split]
    if split is not None:
        raise ValueError(f"split={split!r} was given, but a single Dataset was passed (it is one split already).")
    return dataset_or_name


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
    wanted = _split_names(split_value)
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
        TypeError: a streaming dataset was given.

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
        captions.append(_prepared_captions(value, record, preprocess, max_words))
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
    _verify_image(Path(value), record)
    return Path(value).resolve()


def _is_normalized(dataset: datasets.Dataset) -> bool:
    return all(dataset.features.get(column) == feature for column, feature in NORMALIZED_FEATURES.items())


def load_source(
    spec: datasets.Dataset | datasets.DatasetDict | str | os.PathLike,
    split: str | Sequence[str] | None = None,
    image_root: str | os.PathLike | None = None,
    preprocess: bool = False,
    max_words: int = BLIP_MAX_WORDS,
    allow_outside_root: bool = False,
    **hub_kwargs: Any,
) -> datasets.Dataset:
    """One entry point for `--train_source` / `--test_source`: picks the adapter from what `spec` is.

    * a path ending in `.json` -> `load_karpathy_json(spec, image_root or its folder, split, ...)`;
    * a folder holding `metadata.jsonl` -> `load_imagefolder_source`;
    * a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` -> loaded with `load_from_disk`,
      then as a `Dataset` below;
    * a `Dataset`, a `DatasetDict`, or anything else (a Hub name, a local Parquet folder) -> `load_hub_source`.
      A dataset already in the normalized form (e.g. a distilled set) is validated and returned as it is,
      extra columns included, unless column arguments or `preprocess` ask for a conversion.

    Args:
        spec: what to load.
        split: the split to load (Hub names, `DatasetDict`s, saved dataset dicts) or to keep (Karpathy's
            `dataset_<name>.json`).
        image_root: the image folder of a Karpathy JSON file (default: the JSON file's folder).
        preprocess: apply `pre_caption` (BLIP's caption preprocessing) to every caption.
        max_words: words kept by `pre_caption` when `preprocess` is set.
        allow_outside_root: let a JSON file or `metadata.jsonl` name images outside its image root.
        **hub_kwargs: arguments of `load_hub_source` (`image_column`, `caption_column`, `split_column`, ...) or
            of `load_imagefolder_source` (`caption_column`).

    Returns:
        A `datasets.Dataset` in the normalized form.

    Example:
        >>> train = load_source("annotations/flickr30k_train.json", image_root="data/flickr30k")
        >>> test = load_source("nlphuji/flickr30k", split="test", split_column="split", split_value="test")
    """
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
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
    dataset = _resolve_dataset(spec, split, hub_kwargs.pop("config_name", None), **_load_kwargs(hub_kwargs))
    if _is_normalized(dataset) and not hub_kwargs and not preprocess:
        return validate_normalized(dataset, name=str(spec) if isinstance(spec, (str, os.PathLike)) else "dataset")
    if _is_normalized(dataset):
        hub_kwargs.setdefault("caption_column", CAPTIONS_COLUMN)
        hub_kwargs.setdefault("image_id_column", IMAGE_ID_COLUMN)
    return load_hub_source(dataset, preprocess=preprocess, max_words=max_words, **hub_kwargs)


_HUB_SOURCE_ARGUMENTS = {"image_column", "caption_column", "image_id_column", "split_column", "split_value"}


def _load_kwargs(hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Removes and returns the arguments meant for `datasets.load_dataset` (those `load_hub_source` does not name)."""
    extra = {k: v for k, v in hub_kwargs.items() if k not in _HUB_SOURCE_ARGUMENTS}
    for key in extra:
        del hub_kwargs[key]
    return extra
