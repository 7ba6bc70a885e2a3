"""Adapters for image-text data on local disk: Karpathy / BLIP JSON annotations and imagefolders.

Both return the normalized form of `diffusers_edge.data.format`; images are stored by absolute path, each checked
once with a cheap `PIL.Image.verify()` (a JPEG without its end-of-image marker is decoded to be sure), and every
path an annotation names must stay inside its root unless `allow_outside_root` (docs/safety.md). Import them from
`diffusers_edge.data.sources`, next to the Hub adapter and `load_source`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import PIL.Image

from ..paths import read_annotation_text, resolve_inside
from .format import (
    BLIP_MAX_WORDS,
    CAPTIONS_COLUMN,
    IMAGE_COLUMN,
    IMAGE_ID_COLUMN,
    NORMALIZED_FEATURES,
    prepared_captions,
)


def verify_image(path: Path, record: str) -> None:
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
            verify_image(entry.path, entry.record)
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


def split_names(split: str | Sequence[str]) -> set[str]:
    """The split names a `split` argument asks for: one name or several."""
    return {split} if isinstance(split, str) else set(split)


def _add_blip_records(images: _LocalImages, records: list, source: str, preprocess: bool, max_words: int) -> None:
    """BLIP files: a train file has one record per caption, a val/test file one record per image (caption list)."""
    for index, row in enumerate(records):
        record = f"{source} record {index}"
        _require_keys(row, ["image", "caption"], record)
        record = f"{record} (image {row['image']!r})"
        image_id = str(row["image_id"]) if row.get("image_id") is not None else Path(row["image"]).stem
        captions = prepared_captions(row["caption"], record, preprocess, max_words)
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
    wanted = None if split is None else split_names(split)
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
        captions = prepared_captions([s["raw"] for s in row["sentences"]], record, preprocess, max_words)
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
        captions = prepared_captions(row[caption_column], record, preprocess, max_words)
        images.add(Path(row["file_name"]).stem, row["file_name"], captions, record)
    return images.to_dataset(str(metadata))
