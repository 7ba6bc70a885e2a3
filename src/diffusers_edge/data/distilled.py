"""Distilled image-text sets: `load_distilled` and the builder that reads them, plus every set name in one place.

A distilled set is a folder in the Hub layout `EDGEPipeline.distill` writes (Parquet shards under `data/` and a
`README.md` card whose YAML `configs:` points `load_dataset` at them; `diffusers_edge.data.distilled_layout`
describes the files), or the same files in a Hub dataset repository. Rows follow the normalized form of
`diffusers_edge.data.format` plus `prompt`, `seed` and `source_image_id`. Because the card's YAML names the Parquet
files, `datasets.load_dataset(output_dir)` and, after `push_distilled`, `datasets.load_dataset("user/repo")` read
the set with no loading script (datasets >= 4 refuses scripts; docs/method.md, "Library conventions we rely on").

`DistilledBuilder` (a `datasets.GeneratorBasedBuilder` used directly) reads this layout and also the flat
EDGE / LoRS / BLIP JSON form: a list of `{"image": path, "caption": str, "image_id": int}` records beside an image
folder, one record per (image, caption) pair. `to_flat_pairs` and `export_blip_json` go the other way.

The set's parts live in their own modules and are importable from here too:

* `diffusers_edge.data.distilled_layout`: file names, shards, ownership records, the manifest (`shard_path`,
  `write_shard`, `finished_shards`, `check_complete`, `read_manifest`, ...);
* `diffusers_edge.data.distilled_hub`: the dataset card and the push (`write_card`, `read_card_metadata`,
  `push_distilled`, ...);
* `diffusers_edge.data.distilled_export`: the flat pair form (`to_flat_pairs`, `export_blip_json`).

Example:
    >>> distilled = load_distilled("flickr-edge-500")            # a folder or a Hub repo id
    >>> pairs = to_flat_pairs(distilled)                          # one row per (image, caption) pair
    >>> export_blip_json(distilled, "flickr-edge-500-lors", layout="lors")   # what LoRS' evaluation reads
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..paths import read_annotation_text, resolve_inside
from .distilled_export import (
    EDGE_IMAGE_FOLDER,
    EXPORT_BENCHMARKS,
    EXPORT_LAYOUTS,
    PEER_JSON_NAMES,
    export_blip_json,
    to_flat_pairs,
)
from .distilled_hub import count_set, push_distilled, read_card_metadata, size_category, write_card
from .distilled_layout import (
    CARD_NAME,
    DATA_DIR,
    DISTILLED_FEATURES,
    MANIFEST_NAME,
    PLAN_NAME,
    PROMPT_COLUMN,
    RECORDS_DIR,
    SEED_COLUMN,
    SHARD_GLOB,
    SOURCE_IMAGE_ID_COLUMN,
    SPLIT,
    TMP_DIR,
    check_complete,
    check_owned,
    encode_png,
    file_sha256,
    finished_shards,
    ownership_problem,
    parquet_file,
    read_manifest,
    run_id,
    set_files,
    shard_path,
    write_record,
    write_shard,
)
from .format import CAPTIONS_COLUMN, IMAGE_COLUMN, IMAGE_ID_COLUMN, check_captions

__all__ = [
    "CARD_NAME",
    "DATA_DIR",
    "DISTILLED_FEATURES",
    "EDGE_IMAGE_FOLDER",
    "EXPORT_BENCHMARKS",
    "EXPORT_LAYOUTS",
    "MANIFEST_NAME",
    "PEER_JSON_NAMES",
    "PLAN_NAME",
    "PROMPT_COLUMN",
    "RECORDS_DIR",
    "SEED_COLUMN",
    "SHARD_GLOB",
    "SOURCE_IMAGE_ID_COLUMN",
    "SPLIT",
    "TMP_DIR",
    "DistilledBuilder",
    "DistilledConfig",
    "check_complete",
    "check_owned",
    "count_set",
    "encode_png",
    "export_blip_json",
    "file_sha256",
    "finished_shards",
    "load_distilled",
    "ownership_problem",
    "parquet_file",
    "push_distilled",
    "read_card_metadata",
    "read_manifest",
    "run_id",
    "set_files",
    "shard_path",
    "size_category",
    "to_flat_pairs",
    "write_card",
    "write_record",
    "write_shard",
]


@dataclass
class DistilledConfig(datasets.BuilderConfig):
    """Where a distilled set lies.

    Attributes:
        data_path: a distilled-set folder (our layout) or a flat EDGE/LoRS/BLIP JSON file.
        image_root: the folder the JSON records' `image` paths are relative to (default: the JSON file's folder).
        allow_outside_root: let JSON records name images outside `image_root` (refused by default).
    """

    data_path: str | None = None
    image_root: str | None = None
    allow_outside_root: bool = False


class DistilledBuilder(datasets.GeneratorBasedBuilder):
    """A `datasets` builder for distilled sets: our Parquet layout or the flat EDGE/LoRS/BLIP JSON form.

    Both give the columns of `DISTILLED_FEATURES` (for JSON, pairs with the same `image_id` become one row whose
    `captions` list keeps the file's order; `prompt`, `seed` and `source_image_id` are null).

    Example:
        >>> builder = DistilledBuilder(data_path="flickr-edge-500", cache_dir="cache")
        >>> builder.download_and_prepare()
        >>> distilled = builder.as_dataset(split="train")
    """

    BUILDER_CONFIG_CLASS = DistilledConfig
    VERSION = datasets.Version("1.0.0")

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="A distilled image-text set (EDGE, arXiv 2509.15472).", features=DISTILLED_FEATURES
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        if not self.config.data_path:
            raise ValueError("DistilledBuilder needs data_path= (a distilled-set folder or a flat JSON file).")
        path = Path(self.config.data_path)
        if path.is_file() and path.suffix == ".json":
            root = Path(self.config.image_root) if self.config.image_root else path.parent
            # read eagerly: errors reach the caller as they are
            kwargs = {"json_rows": _flat_json_rows(path, root, self.config.allow_outside_root)}
        elif path.is_dir():
            kwargs = {"shards": [str(p) for p in check_complete(path)]}
        else:
            raise ValueError(f"{str(path)!r} is neither a distilled-set folder nor a .json file.")
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs=kwargs)]

    def _generate_examples(
        self, shards: list[str] | None = None, json_rows: list[dict[str, Any]] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        if shards is not None:
            yield from _parquet_rows(shards)
        else:
            yield from ((row[IMAGE_ID_COLUMN], row) for row in json_rows)


def _parquet_rows(shards: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for shard in shards:
        for batch in parquet_file(shard).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                key = f"{Path(shard).name}:{row[IMAGE_ID_COLUMN]}"
                yield key, {name: row.get(name) for name in DISTILLED_FEATURES}


def _flat_json_rows(json_path: Path, image_root: Path, allow_outside_root: bool) -> list[dict[str, Any]]:
    """The records of a flat JSON file grouped into one row per image (first-seen order), checked.

    Image paths must resolve inside `image_root` (unless `allow_outside_root`); the images' bytes are embedded, so
    the loaded set no longer refers to files on disk (and exporting it reads nothing else).
    """
    try:
        records = json.loads(read_annotation_text(json_path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(json_path)!r} is not valid JSON: {error}.") from error
    if not isinstance(records, list):
        raise ValueError(f"{str(json_path)!r} must hold a JSON list of {{image, caption, image_id}} records.")
    grouped: dict[str, dict[str, Any]] = {}
    owners: dict[Path, str] = {}
    for i, record in enumerate(records):
        where = f"{json_path.name} record {i}"
        if not isinstance(record, dict) or "image" not in record or "caption" not in record:
            raise ValueError(f"{where} needs 'image' and 'caption' fields, got {record!r}.")
        captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
        captions = check_captions(captions, record=where)
        image_id = str(record.get("image_id", record["image"]))
        image = resolve_inside(image_root, record["image"], where, allow_outside_root)
        if owners.setdefault(image, image_id) != image_id:
            raise ValueError(
                f"{where}: image file {str(image)!r} is already image_id {owners[image]!r}; one image under two ids "
                "would count as two different images."
            )
        row = grouped.setdefault(image_id, {"image": image, "captions": [], "where": where})
        if row["image"] != image:
            raise ValueError(f"{where}: image_id {image_id!r} names {str(image)!r} but earlier {str(row['image'])!r}.")
        row["captions"].extend(captions)
    out = []
    for image_id, row in grouped.items():
        if not row["image"].is_file():
            raise FileNotFoundError(f"{row['where']}: image file {str(row['image'])!r} does not exist.")
        out.append({
            IMAGE_COLUMN: {"bytes": row["image"].read_bytes(), "path": None},
            CAPTIONS_COLUMN: row["captions"],
            IMAGE_ID_COLUMN: image_id,
            PROMPT_COLUMN: None,
            SEED_COLUMN: None,
            SOURCE_IMAGE_ID_COLUMN: None,
        })
    return out



def load_distilled(
    path_or_repo: str | os.PathLike,
    split: str = SPLIT,
    image_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Loads a distilled set: a local folder in our layout, a flat EDGE/LoRS/BLIP JSON file, or a Hub repo id.

    Args:
        path_or_repo: the folder, the `.json` file, or `"user/repo"` (read with `datasets.load_dataset`).
        split: the split of a Hub repository (our sets have only `train`).
        image_root: for a JSON file, the folder its image paths are relative to.
        cache_dir: where `datasets` keeps its Arrow cache.
        allow_outside_root: for a JSON file, accept image paths that lead outside `image_root` (`..`, absolute
            paths, symlinks); refused by default, naming the record.
        **load_kwargs: passed to `datasets.load_dataset` for a Hub repository (e.g. `revision`, `token`).

    Returns:
        A `datasets.Dataset` with the columns of `DISTILLED_FEATURES`.

    Example:
        >>> distilled = load_distilled("me/flickr30k-edge-500")
        >>> distilled[0]["captions"]
    """
    path = Path(path_or_repo)
    if path.exists():
        builder = DistilledBuilder(
            data_path=str(path.resolve()),
            image_root=str(Path(image_root).resolve()) if image_root else None,
            allow_outside_root=allow_outside_root,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
        # rebuilt on every call: the builder's cache key is the path, and a folder or file can be regenerated in place
        builder.download_and_prepare(download_mode="force_redownload")
        return builder.as_dataset(split=datasets.Split.TRAIN)
    return datasets.load_dataset(str(path_or_repo), split=split, cache_dir=cache_dir, **load_kwargs)
