"""The distill batch job: a run's settings, the plan, the shards, resumption and the split across processes.

`EDGEPipeline.distill` (the public entry) checks its arguments (`check_arguments`), reads the source's captions
(`diffusers_edge.caption_pool`: held in memory, or for a streamed source counted without holding them) and fixes
the run's `DistillSettings` (every argument that shapes the set: its `manifest()` goes to `edge_manifest.json`, its
SHA-256 is the run's identity); `run_distill` then checks the output folder (empty, or a
set `distill` began with the same settings, resumed, or with `resume=False` one it wrote itself, cleared), selects
the prompts once into the `DistillPlan` (`edge_plan.json`), splits the unfinished shards across `accelerate`
processes (item `i` generated from `item_seed(seed, i)`, each shard written atomically with its ownership record,
`diffusers_edge.data.distilled_layout`) and, on the main process, writes the dataset card.

Example:
    >>> item_seed(0, 5) == item_seed(0, 5) != item_seed(1, 5)   # an item's image depends on (seed, index) only
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from diffusers.utils import logging

from . import __version__
from .caption_pool import CaptionPool
from .data import distilled_layout as layout
from .data.distilled_hub import write_card
from .data.format import CAPTIONS_COLUMN, IMAGE_COLUMN, IMAGE_ID_COLUMN, check_captions
from .selection import EMBEDDING_METHODS, select_captions, select_indices
from .serialization import write_json_atomic

if TYPE_CHECKING:
    from .pipeline_edge import EDGEPipeline

logger = logging.get_logger(__name__)

CaptionFn = Callable[[list[PIL.Image.Image], list[str], int, list[int]], list[list[str]]]
"""A captioner: `fn(images, prompts, num_captions, seeds) -> num_captions non-empty captions per image`."""

DEFAULT_SHARD_SIZE = 64
MANIFEST_VERSION = 2  # 2: every shard and the card are recorded with their SHA-256


def item_seed(seed: int, index: int) -> int:
    """The generator seed of item `index` of a set made with `seed`: a 32-bit draw of `SeedSequence([seed, index])`.

    Depends on nothing else, so an item is the same image whichever process or batch generates it.

    Example:
        >>> item_seed(0, 5) == item_seed(0, 5) != item_seed(1, 5)
        True
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed ({seed}) and item index ({index}) must be non-negative integers.")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


@dataclass
class DistillProgress:
    """What `distill` reports to its `callback` (a fresh copy each call) after every batch and every written shard.

    Attributes:
        event: `"batch"` (a batch was generated and captioned) or `"shard"` (a shard was written).
        items_done: images generated and captioned by this process in this call.
        items_total: images this process has to make in this call (finished shards excluded).
        shard: the shard being made.
        generation_s / captioning_s / writing_s: seconds spent so far in each stage by this process.
        images_per_second: `items_done` over the wall time since generation started.
        last_indices: the item indices of the batch just finished.
    """

    event: str = "batch"
    items_done: int = 0
    items_total: int = 0
    shard: int = -1
    generation_s: float = 0.0
    captioning_s: float = 0.0
    writing_s: float = 0.0
    images_per_second: float = 0.0
    last_indices: list[int] = field(default_factory=list)


@dataclass
class DistillSettings:
    """The settings of one distill run: every argument that shapes the set, fixed before anything is written.

    `manifest()` (its fields in this order) is what `edge_manifest.json` records; a resumed run must have the same,
    and its SHA-256 (`run_id`) marks the shards and the card this run wrote. `format_version` and `num_images` are
    derived, not passed.

    Attributes:
        source_fingerprint: SHA-256 of the source's captions and their image ids, in order.
        source_captions: how many captions the source supplies.
        num_pairs: the budget in (image, caption) pairs.
        captions_per_image: captions stored per image (the prompt + synthesized ones).
        num_images: `ceil(num_pairs / captions_per_image)`, the images (and prompts) of the set.
        selection: the selection rule's name, or `module.qualname` of a selection callable.
        seed, batch_size, shard_size, num_inference_steps, guidance_scale, negative_prompt: as passed to `distill`.
        height, width: the image size (the pipeline's default size when `distill` got None).
        base_model: the pipeline's `name_or_path`.
        lora: the LoRA weights loaded into the pipeline, in order.
        scheduler: the scheduler's class name.
        captioner: the captioner's `describe()` (or its name); None when `captions_per_image == 1`.
        clip_model: the CLIP model that embeds the captions for k-center / k-means selection, else None.

    Example:
        >>> settings = DistillSettings("f" * 64, 10, num_pairs=5, captions_per_image=2, selection="random", seed=0,
        ...     batch_size=8, shard_size=64, num_inference_steps=50, guidance_scale=7.5, height=512, width=512,
        ...     negative_prompt=None, base_model="sd", lora=[], scheduler="DDIM", captioner=None, clip_model=None)
        >>> settings.num_images, settings.num_shards, list(settings.manifest())[:2]
        (3, 1, ['format_version', 'source_fingerprint'])
    """

    format_version: int = field(default=MANIFEST_VERSION, init=False)
    source_fingerprint: str
    source_captions: int
    num_pairs: int
    captions_per_image: int
    num_images: int = field(init=False)
    selection: str
    seed: int
    batch_size: int
    shard_size: int
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    negative_prompt: str | None
    base_model: str
    lora: list[str]
    scheduler: str
    captioner: Any
    clip_model: str | None

    def __post_init__(self) -> None:
        self.num_images = math.ceil(self.num_pairs / self.captions_per_image)

    @property
    def num_shards(self) -> int:
        """Shards of `shard_size` images that hold the set."""
        return math.ceil(self.num_images / self.shard_size)

    def manifest(self) -> dict[str, Any]:
        """The settings as `edge_manifest.json` records them, in the order a mismatch is reported."""
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """The run's identity: the SHA-256 of its manifest (`diffusers_edge.data.distilled_layout.run_id`)."""
        return layout.run_id(self.manifest())


@dataclass
class DistillPlan:
    """What every process generates: per item, its prompt, its generator seed and the source image of its prompt.

    Written once by the main process to `edge_plan.json`, so a resumed run or another process never re-selects.
    """

    prompts: list[str]
    seeds: list[int]
    source_ids: list[str | None]


def _describe_callable(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def describe_selection(selection: str | Callable[[list[str], int, int], Sequence[int]]) -> str:
    """What the manifest records of a selection rule: its name, or `module.qualname` of a callable.

    Example:
        >>> describe_selection("kcenter"), describe_selection(sorted)
        ('kcenter', 'builtins.sorted')
    """
    return selection if isinstance(selection, str) else _describe_callable(selection)


def check_arguments(
    num_pairs: int,
    output_dir: str | os.PathLike | None,
    batch_size: int,
    shard_size: int,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    height: int | None,
    width: int | None,
) -> None:
    """Raises `ValueError` naming the first of `distill`'s arguments that cannot work.

    Checked before anything is written: a bad value would otherwise fail after the manifest recorded it.

    Example:
        >>> check_arguments(10, "out", batch_size=8, shard_size=64, seed=0, num_inference_steps=50,
        ...                 guidance_scale=7.5, height=None, width=None)
    """
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}.")
    if output_dir is None:
        raise ValueError("distill needs output_dir: the folder the distilled set is written to.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be at least 1.")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}.")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}.")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 8 or value % 8):
            raise ValueError(f"{name} must be a positive multiple of 8 (the VAE's downsampling), got {value!r}.")


def _check_captions_out(out: Any, prompts: list[str], indices: list[int], num: int) -> list[list[str]]:
    if not isinstance(out, list) or len(out) != len(prompts):
        raise ValueError(f"The captioner returned {type(out).__name__} for {len(prompts)} images; expected a list.")
    for captions, prompt, index in zip(out, prompts, indices):
        record = f"item {index} (prompt {prompt!r})"
        if len(check_captions(captions, record=f"captioner output for {record}")) != num:
            raise ValueError(f"The captioner returned {len(captions)} captions for {record}; expected {num}.")
    return out


def process_state() -> PartialState:
    """accelerate's process state. A plain `PartialState()` ignores `ACCELERATE_USE_CPU` (only `Accelerator` reads
    it), so under `ACCELERATE_USE_CPU=true torchrun --nproc_per_node P` it would see one process; pass it on.

    Example:
        >>> state = process_state()          # what distill and `diffusers-edge distill` split their work with
        >>> state.num_processes, state.is_main_process
        (1, True)
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def describe_captioner(caption_fn: CaptionFn | None) -> Any:
    """What the manifest and the card record of a captioner: its `describe()`, else its name; None for none.

    Example:
        >>> describe_captioner(None), describe_captioner(sorted)
        (None, {'name': 'builtins.sorted'})
    """
    if caption_fn is None:
        return None
    describe = getattr(caption_fn, "describe", None)
    return describe() if callable(describe) else {"name": _describe_callable(caption_fn)}


def run_distill(
    pipe: EDGEPipeline,
    settings: DistillSettings,
    pool: CaptionPool,
    selection: str | Callable[[list[str], int, int], Sequence[int]],
    caption_fn: CaptionFn | None,
    output_dir: str | os.PathLike,
    resume: bool = True,
    callback: Callable[[DistillProgress], None] | None = None,
    progress: bool = True,
    license: str = "other",
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """The batch job behind `EDGEPipeline.distill`: writes the distilled set to `output_dir` and returns it.

    Args:
        pipe: the pipeline that generates the images (and holds `clip_model` / `clip_processor` for k-center /
            k-means selection).
        settings: the run's settings (checked arguments, the source's fingerprint, the pipeline's description).
        pool: the source's captions and the image id of each (`diffusers_edge.caption_pool.caption_pool`).
        selection: the selection rule (`settings.selection` records its name).
        caption_fn: the resolved captioner (None when `captions_per_image == 1`).
        output_dir, resume, callback, progress, license, cache_dir: as in `EDGEPipeline.distill`.

    Returns:
        The distilled set, read back from `output_dir` (on every process).

    Example:
        >>> distilled = pipe.distill(["a red circle", "a blue square"], 2, captions_per_image=1, output_dir="edge-2")
        >>> distilled.num_rows                                  # EDGEPipeline.distill ends in run_distill
        2
    """
    if settings.num_images > pool.size:
        raise ValueError(
            f"num_pairs={settings.num_pairs} with captions_per_image={settings.captions_per_image} needs "
            f"{settings.num_images} distinct prompts, but the source supplies only {pool.size} captions."
        )
    output_dir = Path(output_dir)
    state = process_state()
    plan = _prepare_output(pipe, output_dir, settings, resume, state, pool, selection, cache_dir, progress)
    run = settings.run_id()
    todo = sorted(set(range(settings.num_shards)) - layout.finished_shards(output_dir, settings.num_shards, run))
    state.wait_for_everyone()  # every process has seen the same finished shards before any writes more
    with state.split_between_processes(todo) as mine:
        _make_shards(pipe, output_dir, list(mine), plan, settings, caption_fn, state, callback, progress)
    state.wait_for_everyone()
    if state.is_main_process:
        _finish(output_dir, settings, license)
        # a fresh Arrow cache: a set regenerated in the same folder must not be served from an older cache
        distilled = datasets.load_dataset(str(output_dir), split=layout.SPLIT, download_mode="force_redownload")
    state.wait_for_everyone()
    if not state.is_main_process:
        distilled = datasets.load_dataset(str(output_dir), split=layout.SPLIT)
    return distilled


def _prepare_output(
    pipe: EDGEPipeline,
    output_dir: Path,
    settings: DistillSettings,
    resume: bool,
    state: PartialState,
    pool: CaptionPool,
    selection: Any,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> DistillPlan:
    """Checks or starts the set in `output_dir` (main process), then every process reads the same plan."""
    manifest = settings.manifest()
    has_manifest = (output_dir / layout.MANIFEST_NAME).is_file()
    # every process checks the folder as it was and raises the same error, so none waits forever
    layout.check_output_dir(output_dir, has_manifest)
    if has_manifest:
        old = layout.read_manifest(output_dir)
        if resume:
            layout.check_manifest(output_dir, old, manifest)  # the files themselves are checked by finished_shards
        else:
            layout.check_owned(output_dir, layout.run_id(old), "discard the set (resume=False)")
    state.wait_for_everyone()
    if state.is_main_process:
        if has_manifest and not resume:
            layout.clear_set(output_dir)
        shutil.rmtree(output_dir / layout.TMP_DIR, ignore_errors=True)  # partial shards of a killed run
        if not (resume and has_manifest):
            output_dir.mkdir(parents=True, exist_ok=True)
            plan = _make_plan(pipe, pool, settings, selection, cache_dir, progress)
            write_json_atomic(output_dir / layout.PLAN_NAME, dataclasses.asdict(plan))
            write_json_atomic(output_dir / layout.MANIFEST_NAME, manifest)
    state.wait_for_everyone()
    return DistillPlan(**json.loads((output_dir / layout.PLAN_NAME).read_text(encoding="utf-8")))


def _make_plan(
    pipe: EDGEPipeline,
    pool: CaptionPool,
    settings: DistillSettings,
    selection: Any,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> DistillPlan:
    num, seed = settings.num_images, settings.seed
    if callable(selection):
        chosen = select_captions(pool.all_captions(), num, selection, seed=seed)
    else:
        embeddings = None
        if selection in EMBEDDING_METHODS:
            if getattr(pipe, "clip_model", None) is None or getattr(pipe, "clip_processor", None) is None:
                raise ValueError(
                    f"selection={selection!r} embeds the captions with CLIP: load the pipeline with clip_model= "
                    "and clip_processor= (e.g. openai/clip-vit-base-patch32), or use selection='random'."
                )
            embeddings = pool.embeddings(pipe.clip_model, pipe.clip_processor, cache_dir=cache_dir, progress=progress)
        chosen = select_indices(pool.size, num, selection, seed=seed, embeddings=embeddings)
    prompts, source_ids = pool.take(chosen)
    return DistillPlan(prompts=prompts, seeds=[item_seed(seed, index) for index in range(num)], source_ids=source_ids)


def _make_shards(
    pipe: EDGEPipeline,
    output_dir: Path,
    shards: list[int],
    plan: DistillPlan,
    settings: DistillSettings,
    caption_fn: CaptionFn | None,
    state: PartialState,
    callback: Callable[[DistillProgress], None] | None,
    progress: bool,
) -> None:
    num_images, shard_size, num_shards = settings.num_images, settings.shard_size, settings.num_shards
    items = {s: list(range(s * shard_size, min((s + 1) * shard_size, num_images))) for s in shards}
    report = DistillProgress(items_total=sum(len(v) for v in items.values()))
    # the bar is diffusers' `pipe.progress_bar`, so `set_progress_bar_config` (e.g. disable=True) governs it
    saved_bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    hidden = {} if progress and state.is_main_process else {"disable": True}
    pipe.set_progress_bar_config(**{"desc": "distill", "unit": "img", **saved_bar_config, **hidden})
    bar = pipe.progress_bar(total=report.items_total)
    pipe.set_progress_bar_config(disable=True)  # no inner bar per batch's denoising loop
    start = time.perf_counter()
    try:
        for shard in shards:
            report.shard = shard
            rows = _make_rows(pipe, items[shard], plan, settings, caption_fn, report, start, callback, bar)
            tick = time.perf_counter()
            path = layout.shard_path(output_dir, shard, num_shards)
            layout.write_shard(rows, path, output_dir / layout.TMP_DIR, run=settings.run_id())
            report.writing_s += time.perf_counter() - tick
            if callback is not None:
                callback(replace(report, event="shard", last_indices=[]))
            logger.info(f"shard {shard + 1}/{num_shards} written: {report.images_per_second:.2f} images/s")
    finally:
        pipe.set_progress_bar_config(**saved_bar_config)
        bar.close()


def _make_rows(
    pipe: EDGEPipeline,
    indices: list[int],
    plan: DistillPlan,
    settings: DistillSettings,
    caption_fn: CaptionFn | None,
    report: DistillProgress,
    start: float,
    callback: Callable[[DistillProgress], None] | None,
    bar: Any,
) -> dict[str, list]:
    rows: dict[str, list] = {name: [] for name in layout.DISTILLED_FEATURES}
    batch_size = settings.batch_size
    for first in range(0, len(indices), batch_size):
        batch = indices[first : first + batch_size]
        prompts = [plan.prompts[i] for i in batch]
        seeds = [plan.seeds[i] for i in batch]
        tick = time.perf_counter()
        images = _generate(pipe, prompts, seeds, settings)
        report.generation_s += time.perf_counter() - tick
        tick = time.perf_counter()
        captions = [[p] for p in prompts]
        if caption_fn is not None:
            extra = caption_fn(images, prompts, settings.captions_per_image - 1, seeds)
            extra = _check_captions_out(extra, prompts, batch, settings.captions_per_image - 1)
            captions = [[p, *e] for p, e in zip(prompts, extra)]
        report.captioning_s += time.perf_counter() - tick
        rows[IMAGE_COLUMN] += [layout.encode_png(image) for image in images]
        rows[CAPTIONS_COLUMN] += captions
        rows[IMAGE_ID_COLUMN] += [str(i) for i in batch]
        rows[layout.PROMPT_COLUMN] += prompts
        rows[layout.SEED_COLUMN] += seeds
        rows[layout.SOURCE_IMAGE_ID_COLUMN] += [plan.source_ids[i] for i in batch]
        report.items_done += len(batch)
        report.images_per_second = report.items_done / max(time.perf_counter() - start, 1e-9)
        bar.update(len(batch))
        if callback is not None:
            callback(replace(report, event="batch", last_indices=list(batch)))
    return rows


def _generate(
    pipe: EDGEPipeline, prompts: list[str], seeds: list[int], settings: DistillSettings
) -> list[PIL.Image.Image]:
    """One pipeline call; CPU generators make the starting noise independent of the device."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    negative = settings.negative_prompt
    return pipe(
        prompt=prompts,
        negative_prompt=None if negative is None else [negative] * len(prompts),
        generator=generators,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        height=settings.height,
        width=settings.width,
        output_type="pil",
    ).images


def _finish(output_dir: Path, settings: DistillSettings, license: str) -> None:
    num_shards = settings.num_shards
    run = settings.run_id()
    missing = set(range(num_shards)) - layout.finished_shards(output_dir, num_shards, run)
    if missing:
        raise RuntimeError(f"Shards {sorted(missing)} of {str(output_dir)!r} were not written by any process.")
    import diffusers

    metadata = {
        "method": "EDGE (arXiv 2509.15472)",
        "base_model": settings.base_model,
        "lora": settings.lora,
        "selection": settings.selection,
        "clip_model": settings.clip_model,
        "captioner": settings.captioner,
        "num_pairs_requested": settings.num_pairs,  # the budget; the card counts the set's own pairs
        "captions_per_image": settings.captions_per_image,
        "seed": settings.seed,
        "item_seeds": "numpy SeedSequence([seed, item_index]).generate_state(1, uint32)",
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "height": settings.height,
        "width": settings.width,
        "negative_prompt": settings.negative_prompt,
        "scheduler": settings.scheduler,
        "source_captions": settings.source_captions,
        "source_fingerprint": settings.source_fingerprint,
        "diffusers_edge_version": __version__,
        "diffusers_version": diffusers.__version__,
    }
    write_card(output_dir, metadata, license=license, run=run)
    shutil.rmtree(output_dir / layout.TMP_DIR, ignore_errors=True)
