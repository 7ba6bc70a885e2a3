"""Distilled image-text sets: the Hub layout `EDGEPipeline.distill` writes, a builder that reads it, exporters.

The layout of a distilled set (a folder, and the same files in a Hub dataset repository):

```
output_dir/
  README.md                         dataset card; its YAML `configs:` points `load_dataset` at data/
  data/train-00000-of-00004.parquet one row per image, image bytes embedded (written atomically)
  ...
  edge_manifest.json                the arguments the set was made with (local bookkeeping, not pushed)
  edge_plan.json                    the selected prompts, item seeds and source ids (local, not pushed)
```

Rows follow the normalized form of `diffusers_edge.data.format` plus three columns: `prompt` (the caption the
image was generated from), `seed` (the item's generator seed) and `source_image_id` (the source image the prompt
came from, or null). Because the card's YAML names the Parquet files, `datasets.load_dataset(output_dir)` and,
after `push_distilled`, `datasets.load_dataset("user/repo")` read the set with no loading script (datasets >= 4
refuses scripts; REFERENCE.md section 4).

`DistilledBuilder` (a `datasets.GeneratorBasedBuilder` used directly) reads this layout and also the flat
EDGE / LoRS / BLIP JSON form: a list of `{"image": path, "caption": str, "image_id": int}` records beside an image
folder, one record per (image, caption) pair. `to_flat_pairs` and `export_blip_json` go the other way.

Example:
    >>> distilled = load_distilled("flickr-edge-500")            # a folder or a Hub repo id
    >>> pairs = to_flat_pairs(distilled)                          # one row per (image, caption) pair
    >>> export_blip_json(distilled, "flickr-edge-500-lors", layout="lors")   # what LoRS' evaluation reads
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from ..paths import read_annotation_text, resolve_inside
from .format import CAPTIONS_COLUMN, IMAGE_COLUMN, IMAGE_ID_COLUMN, NORMALIZED_FEATURES, check_captions

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


# ----------------------------------------------------------------------------------------------- the Hub layout


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
    output_dir = Path(output_dir)
    record = _record_path(output_dir, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps({"file": name, "sha256": file_sha256(file), "run": run}), encoding="utf-8")
    os.replace(tmp, record)


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


def _yaml_safe(value: Any) -> Any:
    """JSON-like metadata with tuples as lists, for the card's YAML."""
    if isinstance(value, Mapping):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    return value


_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ pretty_name }}

A distilled image-text dataset made with diffusers-edge (EDGE, "Efficient Multimodal Dataset Distillation via
Generative Models", arXiv 2509.15472): {{ num_images }} generated images with
{{ captions_per_image }} caption(s) each, {{ num_pairs }} image-caption pairs in all (counted in the set's files).

License: `{{ license }}`. The images were generated by `{{ base_model }}` and are subject to that model's license; the
captions come from the source dataset and the captioner, and are subject to their terms.

Each row holds one image, its `captions` (the prompt it was generated from first, then synthesized captions), the
`prompt`, the item's generator `seed` and the `source_image_id` of the real image the prompt came from.

## Load

```python
from datasets import load_dataset

distilled = load_dataset("{{ repo_hint }}", split="train")
```

`diffusers_edge.data.distilled.to_flat_pairs` gives one row per (image, caption) pair and `export_blip_json`
writes the BLIP JSON + image folder that the MTT-VL / LoRS / EDGE evaluation code reads.

## How it was made

| setting | value |
|---|---|
{{ settings_table }}
"""


def write_card(
    output_dir: str | os.PathLike,
    metadata: Mapping[str, Any],
    pretty_name: str | None = None,
    license: str = "other",
    run: str | None = None,
) -> Path:
    """Writes the `README.md` dataset card of a distilled set: YAML `configs:` for `load_dataset` + `metadata`.

    The numbers come from the set itself: `num_images` (rows), `num_pairs` (captions over all rows) and
    `size_categories` are counted in the shards and replace whatever `metadata` says, and `dataset_info` is built
    by `datasets`' own `DatasetInfosDict.to_dataset_card_data`, as `push_to_hub` builds it.

    Args:
        output_dir: the distilled-set folder (its shards must be under `data/`).
        metadata: how the set was made (method, base model, LoRA, selection, captioner, budget, seeds, steps,
            guidance, library version, ...); stored under the YAML key `distillation` and shown as a table.
        pretty_name: the card's title (default: the folder name).
        license: the card's `license` (a Hub license id). The default `other` says that no single license covers the
            set: its images follow the generator's license and its captions the source data's terms.
        run: the writing run's `run_id`; when given, the card's SHA-256 is recorded before it is renamed into place.

    Returns:
        The card's path.

    Example:
        >>> write_card("flickr-edge-500", {"method": "EDGE", "num_pairs": 500, "captions_per_image": 2})
    """
    output_dir = Path(output_dir)
    pretty_name = pretty_name or output_dir.resolve().name
    shards = _all_shards(output_dir)
    counts = count_set(shards)
    metadata = _yaml_safe({**dict(metadata), **counts})
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        size_categories=[size_category(counts["num_images"])],
        task_categories=["text-to-image", "image-to-text"],
        tags=["dataset-distillation", "synthetic", "edge", "diffusers-edge"],
        configs=[{"config_name": "default", "data_files": [{"split": SPLIT, "path": SHARD_GLOB}]}],
        distillation=metadata,
    )
    DatasetInfosDict({"default": _dataset_info(shards)}).to_dataset_card_data(card_data)
    table = "\n".join(f"| {key} | `{json.dumps(value)}` |" for key, value in metadata.items())
    card = DatasetCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        pretty_name=pretty_name,
        num_images=counts["num_images"],
        captions_per_image=_captions_per_image(counts, metadata),
        num_pairs=counts["num_pairs"],
        license=license,
        base_model=metadata.get("base_model") or "the base model",
        repo_hint=metadata.get("hub_dataset_id") or "<namespace>/<dataset name>",
        settings_table=table,
    )
    path = output_dir / CARD_NAME
    tmp = output_dir / TMP_DIR / f"{CARD_NAME}.{os.getpid()}.partial"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    card.save(tmp)
    if run is not None:
        write_record(output_dir, CARD_NAME, tmp, run)
    os.replace(tmp, path)
    return path


# The Hub's size categories of a dataset's number of examples (rows), as datasets' cards name them.
_SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                    (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                    (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]  # fmt: skip


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` value for a dataset of `num_rows` examples.

    Example:
        >>> size_category(250), size_category(1000), size_category(25_000)
        ('n<1K', '1K<n<10K', '10K<n<100K')
    """
    return next((name for limit, name in _SIZE_CATEGORIES if num_rows < limit), "n>1T")


def count_set(shards: Sequence[Path]) -> dict[str, int]:
    """`num_images` (rows) and `num_pairs` (captions of all rows) of a set's shards, read from the files.

    Example:
        >>> count_set(check_complete("flickr-edge-500"))
        {'num_images': 250, 'num_pairs': 500}
    """
    images = pairs = 0
    for shard in shards:
        lengths = pq.read_table(shard, columns=[CAPTIONS_COLUMN]).column(CAPTIONS_COLUMN).combine_chunks()
        images += len(lengths)
        pairs += int(sum(len(captions) for captions in lengths.to_pylist()))
    return {"num_images": images, "num_pairs": pairs}


def _captions_per_image(counts: Mapping[str, int], metadata: Mapping[str, Any]) -> Any:
    if counts["num_images"] and counts["num_pairs"] % counts["num_images"] == 0:
        return counts["num_pairs"] // counts["num_images"]
    return metadata.get("captions_per_image", f"{counts['num_pairs'] / max(counts['num_images'], 1):.2f} (mean)")


def _dataset_info(shards: list[Path]) -> datasets.DatasetInfo:
    """The set's `DatasetInfo` for the card's `dataset_info`: features, row count and sizes.

    Besides informing the Hub viewer, it keys `load_dataset`'s cache of a local folder: datasets 5.2 hashes the
    card's `dataset_info` and `configs` (not the data files' times), so a set regenerated in the same folder with
    the same card would otherwise be served from the stale cache. The byte sizes change with the content.
    """
    num_rows = sum(parquet_file(p).metadata.num_rows for p in shards)
    size = sum(p.stat().st_size for p in shards)
    info = datasets.DatasetInfo(
        features=DISTILLED_FEATURES,
        splits=datasets.SplitDict({SPLIT: datasets.SplitInfo(SPLIT, num_bytes=size, num_examples=num_rows)}),
        download_size=size,
        dataset_size=size,
    )
    return info


def read_card_metadata(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The `distillation` metadata a distilled set's card records.

    Example:
        >>> read_card_metadata("flickr-edge-500")["selection"]
        'random'
    """
    card = DatasetCard.load(Path(output_dir) / CARD_NAME)
    return dict(card.data.to_dict().get("distillation") or {})


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
    shards = _all_shards(output_dir)
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


def _all_shards(output_dir: Path) -> list[Path]:
    """The shard files of a folder, checked to be the complete `train-i-of-n` series."""
    shards = sorted((output_dir / DATA_DIR).glob(f"{SPLIT}-*.parquet"))
    if not shards:
        raise ValueError(f"{str(output_dir)!r} has no {SHARD_GLOB} files.")
    counts = {_SHARD_RE.match(p.name).group(2) for p in shards if _SHARD_RE.match(p.name)}
    if len(counts) != 1 or len(shards) != int(counts.pop()):
        names = [p.name for p in shards]
        raise ValueError(f"{str(output_dir)!r} holds an incomplete or mixed set of shards: {names}.")
    return shards


# ----------------------------------------------------------------------------------------------------- builder


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


# ----------------------------------------------------------------------------------------- loading and exports


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


def push_distilled(
    path: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
    commit_message: str = "Upload distilled set (diffusers-edge)",
) -> str:
    """Pushes a finished distilled-set folder to a Hub dataset repository: the card and the Parquet shards.

    The folder already is the Hub layout, so this uploads `README.md` and `data/*.parquet` as they are (the
    local manifest and plan stay local); afterwards `datasets.load_dataset(repo_id)` reads the set. A push
    replaces the set a repository held: in the same commit, every `data/train-*.parquet` of the repository that
    this set does not have is deleted (as `datasets`' own `push_to_hub` does), so a re-push with fewer shards
    leaves no stale shard for `load_dataset` to mix in.

    Args:
        path: the folder `EDGEPipeline.distill` wrote.
        repo_id: `"user/name"` of the dataset repository (created if missing).
        private: create the repository private.
        token: a Hub token (default: the logged-in one).
        api: an `HfApi` to use (default: `HfApi(token=token)`).
        commit_message: the commit message.

    Returns:
        The repository's URL.

    Example:
        >>> push_distilled("flickr-edge-500", "me/flickr30k-edge-500", private=True)
        'https://huggingface.co/datasets/me/flickr30k-edge-500'
    """
    check_complete(path)
    api = api or HfApi(token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(path),
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=[CARD_NAME, SHARD_GLOB],
        delete_patterns=[SHARD_GLOB],  # the shards this push uploads are kept: huggingface_hub drops those deletes
        commit_message=commit_message,
    )
    return str(repo_url)
