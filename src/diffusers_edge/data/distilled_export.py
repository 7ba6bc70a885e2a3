"""From a distilled set to the flat pair form: `to_flat_pairs` (a dataset) and `export_blip_json` (files).

The flat EDGE / LoRS / BLIP JSON form is a list of `{"image": path, "caption": str, "image_id": int}` records beside
an image folder, one record per (image, caption) pair: what the peers' evaluation code reads. `DistilledBuilder`
(`diffusers_edge.data.distilled`) reads it back.

Example:
    >>> pairs = to_flat_pairs(distilled)                          # one row per (image, caption) pair
    >>> export_blip_json(distilled, "flickr-edge-500-lors", layout="lors")   # what LoRS' evaluation reads
    PosixPath('flickr-edge-500-lors/flickr30k_train.json')
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import datasets
import PIL.Image

from ..paths import resolve_inside
from .format import CAPTIONS_COLUMN, IMAGE_COLUMN, IMAGE_ID_COLUMN, check_captions


def _check_distilled_columns(dataset: datasets.Dataset) -> None:
    missing = [c for c in (IMAGE_COLUMN, CAPTIONS_COLUMN, IMAGE_ID_COLUMN) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks column(s) {missing} (found {dataset.column_names}).")


def to_flat_pairs(dataset: datasets.Dataset) -> datasets.Dataset:
    """One row per (image, caption) pair: columns `image`, `caption`, `image_id` (images are not re-encoded).

    A set of N/2 images with two captions each becomes N rows: the form LoRS/BLIP-style tools expect.

    Example:
        >>> pairs = to_flat_pairs(distilled)
        >>> pairs.num_rows == sum(len(c) for c in distilled["captions"])
        True
    """
    _check_distilled_columns(dataset)
    raw = dataset.select_columns([IMAGE_COLUMN, CAPTIONS_COLUMN, IMAGE_ID_COLUMN])
    raw = raw.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))

    def expand(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {IMAGE_COLUMN: [], "caption": [], IMAGE_ID_COLUMN: []}
        for image, captions, image_id in zip(batch[IMAGE_COLUMN], batch[CAPTIONS_COLUMN], batch[IMAGE_ID_COLUMN]):
            for caption in check_captions(captions, record=f"image_id={image_id!r}"):
                out[IMAGE_COLUMN].append(image)
                out["caption"].append(caption)
                out[IMAGE_ID_COLUMN].append(image_id)
        return out

    features = datasets.Features(
        {
            IMAGE_COLUMN: datasets.Image(decode=False),
            "caption": datasets.Value("string"),
            IMAGE_ID_COLUMN: datasets.Value("string"),
        }
    )
    flat = raw.map(expand, batched=True, remove_columns=raw.column_names, features=features)
    return flat.cast_column(IMAGE_COLUMN, datasets.Image())


def _image_bytes(value: dict[str, Any], image_root: Path | None, allow_outside_root: bool, record: str) -> bytes:
    """A cell's embedded bytes, or its file's bytes when that file lies under `image_root` (or anywhere if allowed)."""
    if value.get("bytes"):
        return value["bytes"]
    if image_root is None and not allow_outside_root:
        raise ValueError(
            f"{record} stores its image by path only ({value['path']!r}); pass image_root= (the folder such files "
            "must lie in) or allow_outside_root=True, so that export never copies a file from elsewhere."
        )
    return resolve_inside(image_root or "/", value["path"], record, allow_outside_root).read_bytes()


def _image_suffix(data: bytes) -> str:
    with PIL.Image.open(io.BytesIO(data)) as image:
        return "." + (image.format or "png").lower().replace("jpeg", "jpg")


# The peers' evaluation code reads a fixed annotation file name per benchmark (docs/distill.md section 9):
# LoRS (after BLIP's `re_train_dataset`) reads `<ann_root>/<name>` and opens `<image_root>/<record image>`;
# EDGE's `evaluation/evaluation.py` reads `<distill_ann>/<name>` and opens `<distill_ann>/images/<record image>`.
EXPORT_LAYOUTS = ("blip", "lors", "edge")
EXPORT_BENCHMARKS = ("flickr30k", "coco")
PEER_JSON_NAMES = {
    "lors": {"flickr30k": "flickr30k_train.json", "coco": "coco_karpathy_train.json"},
    "edge": {"flickr30k": "flickr30k_train.json", "coco": "coco_train.json"},
}
EDGE_IMAGE_FOLDER = "images"


def export_blip_json(
    dataset: datasets.Dataset,
    output_dir: str | os.PathLike,
    layout: str = "blip",
    benchmark: str = "flickr30k",
    json_name: str | None = None,
    image_folder: str = "images",
    image_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> Path:
    """Writes the flat EDGE/LoRS/BLIP JSON form: one record per (image, caption) pair + an image folder.

    Records are `{"image": path, "caption": str, "image_id": int}` with `image_id` the row index, as BLIP's
    `re_train_dataset` expects. Image files keep their stored bytes (PNG for our sets); each image is written once.
    `layout` chooses the file name and what the `image` paths are relative to, so that a peer's evaluation code
    opens the folder as it is:

    * `"blip"`: `json_name` (default `train.json`); `image` = `images/000000.png`, relative to `output_dir`.
    * `"lors"`: `flickr30k_train.json` or `coco_karpathy_train.json`; `image` = `images/000000.png`, relative to
      `output_dir`. LoRS (BLIP's `re_train_dataset`) reads it with image root and annotation root `output_dir`.
    * `"edge"`: `flickr30k_train.json` or `coco_train.json`; `image` = `000000.png`, relative to
      `output_dir/images`. EDGE's `evaluation/evaluation.py` reads it with `--distill_ann output_dir`.

    Images embedded in the dataset (our sets, Hub sets, JSON loaded by `load_distilled`) are written as they are.
    An image stored only by a path is copied only if that file lies under `image_root`, so a folder meant for
    sharing never receives a file from elsewhere; `allow_outside_root=True` lifts this.

    Args:
        dataset: a distilled set (columns `image`, `captions`, `image_id`).
        output_dir: the folder to write.
        layout: `"blip"` (generic), `"lors"` or `"edge"`.
        benchmark: `"flickr30k"` or `"coco"`: the peers name the file after the benchmark (`"lors"`, `"edge"`).
        json_name: the file name of the `"blip"` layout; the presets fix theirs.
        image_folder: the image sub-folder (`"blip"`, `"lors"`); EDGE's code always reads `images`.
        image_root: the folder that images stored only by a path must lie under to be copied.
        allow_outside_root: copy path-only images from anywhere.

    Returns:
        The JSON file's path.

    Example:
        >>> export_blip_json(load_distilled("flickr-edge-500"), "flickr-edge-500-edge", layout="edge")
        PosixPath('flickr-edge-500-edge/flickr30k_train.json')
    """
    _check_distilled_columns(dataset)
    json_name, image_folder, prefix = _export_names(layout, benchmark, json_name, image_folder)
    output_dir = Path(output_dir)
    (output_dir / image_folder).mkdir(parents=True, exist_ok=True)
    raw = dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    records = []
    for index, row in enumerate(raw.select_columns([IMAGE_COLUMN, CAPTIONS_COLUMN, IMAGE_ID_COLUMN])):
        data = _image_bytes(
            row[IMAGE_COLUMN], Path(image_root) if image_root else None, allow_outside_root, f"row {index}"
        )
        name = f"{index:06d}{_image_suffix(data)}"
        (output_dir / image_folder / name).write_bytes(data)
        for caption in check_captions(row[CAPTIONS_COLUMN], record=f"row {index} (image_id={row[IMAGE_ID_COLUMN]!r})"):
            records.append({"image": prefix + name, "caption": caption, "image_id": index})
    path = output_dir / json_name
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def _export_names(layout: str, benchmark: str, json_name: str | None, image_folder: str) -> tuple[str, str, str]:
    """(JSON file name, image folder, prefix of the records' `image`) of an export layout, checked."""
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"layout must be one of {EXPORT_LAYOUTS}, got {layout!r}.")
    if layout == "blip":
        return json_name or "train.json", image_folder, f"{image_folder}/"
    if benchmark not in EXPORT_BENCHMARKS:
        raise ValueError(f"benchmark must be one of {EXPORT_BENCHMARKS} for layout={layout!r}, got {benchmark!r}.")
    peer_name = PEER_JSON_NAMES[layout][benchmark]
    if json_name is not None and json_name != peer_name:
        raise ValueError(
            f"layout={layout!r} writes {peer_name!r}, the name the peer's code reads for {benchmark}; "
            f"json_name={json_name!r} would not be found. Use layout='blip' for a free name."
        )
    if layout == "lors":
        return peer_name, image_folder, f"{image_folder}/"
    if image_folder != EDGE_IMAGE_FOLDER:
        raise ValueError(f"EDGE's evaluation code reads images from 'images/'; image_folder={image_folder!r} "
                         "would not be found.")
    return peer_name, EDGE_IMAGE_FOLDER, ""
