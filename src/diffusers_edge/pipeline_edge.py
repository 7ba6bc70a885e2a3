"""`EDGEPipeline`: Stable Diffusion that turns a (fine-tuned) generator into a distilled image-text set.

`EDGEPipeline` subclasses diffusers' `StableDiffusionPipeline`: it loads a folder or repo saved by
`StableDiffusionPipeline`, loads LoRA weights the same way, and called like it gives the same images. It adds four
optional components, which `save_pretrained` / `EDGEPipeline.from_pretrained` round-trip:

| component             | what for                                                  | e.g.                           |
|-----------------------|-----------------------------------------------------------|--------------------------------|
| `clip_model`          | CLIP text embeddings for `selection="kcenter"`/`"kmeans"` | `openai/clip-vit-base-patch32` |
| `clip_processor`      | its processor                                             |                                |
| `captioner`           | a transformers image-to-text / VLM / causal LM model      | BLIP, SmolVLM, LLaVA-1.5       |
| `captioner_processor` | its processor (or tokenizer)                              |                                |

and `distill(...)`, which writes the distilled set (EDGE, arXiv 2509.15472): select prompts, generate one image
per prompt with a seed derived from (seed, item index), add synthesized captions, and write Parquet shards in the
Hub layout of `diffusers_edge.data.distilled`, resumably and across `accelerate` processes.

A folder saved (or pushed) by `EDGEPipeline.save_pretrained` names `StableDiffusionPipeline` in its
`model_index.json`, so diffusers' generic `DiffusionPipeline.from_pretrained` opens it anywhere as a working
text-to-image pipeline (it skips the extra components, with a warning that names them), while
`EDGEPipeline.from_pretrained` (a subclass's loader ignores `_class_name`) loads it with them.

Example:
    >>> from diffusers_edge.captioning import Captioner
    >>> from diffusers_edge.data.sources import load_source
    >>> from diffusers_edge.pipeline_edge import EDGEPipeline
    >>> train = load_source("annotations/flickr30k_train.json", image_root="data/flickr30k")
    >>> pipe = EDGEPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> pipe.load_lora_weights("edge-lora")
    >>> distilled = pipe.distill(train, num_pairs=500, captions_per_image=2, output_dir="flickr-edge-500",
    ...                          captioner=Captioner.from_pretrained("HuggingFaceTB/SmolVLM-256M-Instruct"))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging
from transformers import PreTrainedModel, ProcessorMixin

from . import __version__
from .data import distilled as layout
from .data.format import CAPTIONS_COLUMN, IMAGE_ID_COLUMN, check_captions
from .paths import check_model_reference
from .selection import EMBEDDING_METHODS, embed_captions, select_captions

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
class _Plan:
    prompts: list[str]
    seeds: list[int]
    source_ids: list[str | None]


def _caption_rows(source: datasets.Dataset | datasets.IterableDataset) -> Iterable[tuple[list[str], Any]]:
    """(captions, image_id) per row, without decoding images; a streamed source is read once, row by row."""
    columns = source.column_names
    if columns is not None and CAPTIONS_COLUMN not in columns:
        raise ValueError(
            f"The source dataset has no {CAPTIONS_COLUMN!r} column (columns: {columns}); "
            "distill needs the normalized form (image, captions, image_id) or a list of captions."
        )
    if isinstance(source, datasets.Dataset):
        ids = source[IMAGE_ID_COLUMN] if IMAGE_ID_COLUMN in columns else [None] * source.num_rows
        return zip(source[CAPTIONS_COLUMN], ids)
    return ((row.get(CAPTIONS_COLUMN), row.get(IMAGE_ID_COLUMN)) for row in source.select_columns(
        [c for c in (CAPTIONS_COLUMN, IMAGE_ID_COLUMN) if columns is None or c in columns]
    ))


def _caption_pool(
    source: datasets.Dataset | datasets.IterableDataset | Sequence[str],
) -> tuple[list[str], list[str | None]]:
    """Every caption of `source` (flattened, in order) and the `image_id` it belongs to (None for a caption list)."""
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        captions, owners = [], []
        for row, (image_captions, image_id) in enumerate(_caption_rows(source)):
            checked = check_captions(image_captions, record=f"source row {row} (image_id={image_id!r})")
            captions += checked
            owners += [None if image_id is None else str(image_id)] * len(checked)
        return captions, owners
    if isinstance(source, str) or not isinstance(source, Sequence):
        raise TypeError(f"source must be a datasets.Dataset or a list of captions, got {type(source).__name__}.")
    captions = check_captions(list(source), record="the source caption list")
    return captions, [None] * len(captions)


def _fingerprint(captions: list[str], owners: list[str | None]) -> str:
    digest = hashlib.sha256()
    for caption, owner in zip(captions, owners):
        digest.update(f"{owner}\x1f{caption}\x1e".encode())
    return digest.hexdigest()


def _describe_callable(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _check_manifest(output_dir: Path, old: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Refuses to mix sets: raises naming the first argument that differs from the folder's manifest `old`."""
    for key in [*manifest, *(k for k in old if k not in manifest)]:  # the call's own arguments come first
        if old.get(key) != manifest.get(key):
            raise ValueError(
                f"{str(output_dir)!r} holds a distilled set made with {key}={old.get(key)!r}, but this call has "
                f"{key}={manifest.get(key)!r}. Use another output_dir, or resume=False to discard it and start over."
            )


def _check_output_dir(output_dir: Path, has_manifest: bool) -> None:
    """Refuses a file, or a folder that holds anything but a set distill began (`edge_manifest.json` present).

    A folder with only a plan or partial files (a run killed before it wrote its manifest) counts as empty.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file, not a folder.")
    if has_manifest or not output_dir.is_dir():
        return
    others = sorted(p.name for p in output_dir.iterdir() if p.name not in (layout.PLAN_NAME, layout.TMP_DIR))
    if others:
        listed = others[:5] + ([f"... {len(others) - 5} more"] if len(others) > 5 else [])
        raise ValueError(
            f"output_dir {str(output_dir)!r} is not empty and holds no distilled set begun by distill (no "
            f"{layout.MANIFEST_NAME}); it holds {listed}. distill writes only into an empty folder or one it wrote "
            "itself, so nothing there was changed: choose another (or an empty) output_dir."
        )


def _clear_set(output_dir: Path) -> None:
    """Removes what a previous distill wrote in `output_dir`; the caller has checked that every file is ours.

    The manifest goes last, so a clear interrupted half-way still leaves a folder recognised as ours.
    """
    for path in layout.set_files(output_dir):
        path.unlink()
        (output_dir / layout.RECORDS_DIR / f"{path.name}.json").unlink(missing_ok=True)
    shutil.rmtree(output_dir / layout.RECORDS_DIR, ignore_errors=True)
    shutil.rmtree(output_dir / layout.TMP_DIR, ignore_errors=True)
    (output_dir / layout.PLAN_NAME).unlink(missing_ok=True)
    (output_dir / layout.MANIFEST_NAME).unlink()


def _check_sampling_arguments(
    num_inference_steps: int, guidance_scale: float, height: int | None, width: int | None
) -> None:
    """Checked before anything is written: a bad value would otherwise fail after the manifest recorded it."""
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


def _process_state() -> PartialState:
    """accelerate's process state. A plain `PartialState()` ignores `ACCELERATE_USE_CPU` (only `Accelerator` reads
    it), so under `ACCELERATE_USE_CPU=true torchrun --nproc_per_node P` it would see one process; pass it on."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


class EDGEPipeline(StableDiffusionPipeline):
    """Stable Diffusion with EDGE's `distill`: a (LoRA fine-tuned) generator to a distilled image-text set.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor, image_encoder,
        requires_safety_checker: as in `StableDiffusionPipeline`.
        clip_model: optional `transformers.CLIPModel` used to embed captions for k-center / k-means selection.
        clip_processor: its `CLIPProcessor`.
        captioner: optional transformers captioning model (image-to-text, VLM, or causal LM for paraphrases);
            `distill` wraps it as `Captioner(captioner, captioner_processor)` when given no `captioner=`.
        captioner_processor: its processor or tokenizer.

    Example:
        >>> from transformers import CLIPModel, CLIPProcessor
        >>> pipe = EDGEPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ...     clip_model=CLIPModel.from_pretrained("openai/clip-vit-base-patch32"),
        ...     clip_processor=CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32"),
        ... )
        >>> pipe.save_pretrained("edge-pipeline")            # the CLIP components are saved too
        >>> pipe = EDGEPipeline.from_pretrained("edge-pipeline")
    """

    _optional_components = [
        *StableDiffusionPipeline._optional_components,
        "clip_model",
        "clip_processor",
        "captioner",
        "captioner_processor",
    ]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        clip_model: PreTrainedModel | None = None,
        clip_processor: ProcessorMixin | None = None,
        captioner: PreTrainedModel | None = None,
        captioner_processor: ProcessorMixin | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_modules(
            clip_model=clip_model,
            clip_processor=clip_processor,
            captioner=captioner,
            captioner_processor=captioner_processor,
        )
        self._edge_lora_sources: list[str] = []

    def to_json_string(self) -> str:
        """The `model_index.json` that `save_pretrained` writes, with `_class_name` `StableDiffusionPipeline`.

        diffusers' generic `DiffusionPipeline.from_pretrained` imports the class `_class_name` names from the
        `diffusers` package, where ours does not exist; naming our base class makes a saved or pushed folder load
        anywhere as a Stable Diffusion pipeline (the list form, `["diffusers_edge", ...]`, would instead demand
        `trust_remote_code`). `EDGEPipeline.from_pretrained` ignores `_class_name` and restores the extras.

        Example:
            >>> pipe.save_pretrained("edge-pipeline")
            >>> type(DiffusionPipeline.from_pretrained("edge-pipeline")).__name__
            'StableDiffusionPipeline'
        """
        config = json.loads(super().to_json_string())
        config["_class_name"] = StableDiffusionPipeline.__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, **kwargs) -> None:
        """`StableDiffusionPipeline.load_lora_weights`, also remembering the source for the distilled set's card.

        Example:
            >>> pipe.load_lora_weights("edge-lora")     # a folder written by examples/train_edge.py
        """
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, (str, os.PathLike)):
            check_model_reference(source, "LoRA")
        try:
            super().load_lora_weights(source, adapter_name=adapter_name, **kwargs)
        except (OSError, ValueError) as error:
            if not isinstance(source, (str, os.PathLike)) or Path(source).exists():
                raise
            raise FileNotFoundError(
                f"LoRA {str(source)!r} is not a local folder or file, and no Hub repository of that name could be "
                f"read ({error})."
            ) from error
        name = str(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"
        bad = [n for n, p in self.unet.named_parameters() if "lora_" in n and not torch.isfinite(p).all()]
        if bad:
            raise ValueError(
                f"The LoRA {name!r} holds non-finite (NaN or infinite) weights, e.g. {bad[0]!r}: it would generate "
                "blank images. It comes from a training run that diverged; retrain it with a lower learning rate."
            )
        self._edge_lora_sources.append(name)

    # ------------------------------------------------------------------------------------------------- distill

    def distill(
        self,
        source: datasets.Dataset | datasets.IterableDataset | Sequence[str],
        num_pairs: int,
        captions_per_image: int = 2,
        selection: str | Callable[[list[str], int, int], Sequence[int]] = "random",
        seed: int = 0,
        output_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | None = None,
        captioner: CaptionFn | None = None,
        resume: bool = True,
        shard_size: int = DEFAULT_SHARD_SIZE,
        callback: Callable[[DistillProgress], None] | None = None,
        progress: bool = True,
        license: str = "other",
    ) -> datasets.Dataset:
        """Generates a distilled set of `num_pairs` image-caption pairs and writes it to `output_dir`.

        EDGE's recipe (arXiv 2509.15472): pick `ceil(num_pairs / captions_per_image)` prompts from the source
        captions, generate one image per prompt, keep the prompt as the image's first caption and add
        `captions_per_image - 1` synthesized captions (2 captions per image was EDGE's best budget split).

        Args:
            source: the real training set in the normalized form (`captions`, optionally `image_id`; a streamed
                `IterableDataset` is read once for its captions), or a list of captions.
            num_pairs: the budget in (image, caption) pairs.
            captions_per_image: captions stored per generated image (the prompt + synthesized ones).
            selection: `"random"` (EDGE), `"kcenter"`, `"kmeans"` (both need `clip_model`/`clip_processor`), or
                a callable `fn(captions, num, seed) -> indices`.
            seed: seeds the selection and, with the item index, every image (`item_seed`).
            output_dir: the folder to write (Hub layout, see `diffusers_edge.data.distilled`).
            batch_size: prompts per pipeline call.
            num_inference_steps, guidance_scale, height, width, negative_prompt: as in `__call__`.
            captioner: a `diffusers_edge.captioning.Captioner` or any callable
                `fn(images, prompts, num_captions, seeds) -> list[list[str]]`; default: the pipeline's
                `captioner` + `captioner_processor` components. Needed when `captions_per_image > 1`.
            resume: continue a set already begun in `output_dir` with the same arguments (finished shards are
                kept); `False` deletes what a previous run wrote there and starts over.
            shard_size: images per Parquet shard, the unit of resumption and of work split across processes.
            callback: called with a `DistillProgress` after every batch.
            progress: show a progress bar (main process only; `set_progress_bar_config(disable=True)` hides it too).
            license: the dataset card's `license` (a Hub license id); `other` by default, since the images follow the
                generator's license and the captions the source data's terms.

        Returns:
            The distilled set as a `datasets.Dataset` (read back from `output_dir`), one row per image with
            `image`, `captions`, `image_id`, `prompt`, `seed`, `source_image_id`.

        Example:
            >>> distilled = pipe.distill(train, num_pairs=100, captions_per_image=2, output_dir="edge-100",
            ...                          num_inference_steps=30, batch_size=16)
            >>> distilled.num_rows, len(distilled[0]["captions"])
            (50, 2)
        """
        caption_fn = self._resolve_captioner(captioner, captions_per_image)
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}.")
        if output_dir is None:
            raise ValueError("distill needs output_dir: the folder the distilled set is written to.")
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be at least 1.")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}.")
        _check_sampling_arguments(num_inference_steps, guidance_scale, height, width)
        captions, owners = _caption_pool(source)
        num_images = math.ceil(num_pairs / captions_per_image)
        if num_images > len(captions):
            raise ValueError(
                f"num_pairs={num_pairs} with captions_per_image={captions_per_image} needs {num_images} distinct "
                f"prompts, but the source supplies only {len(captions)} captions."
            )
        settings = {
            "seed": seed,
            "batch_size": batch_size,
            "shard_size": shard_size,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "height": height or self.unet.config.sample_size * self.vae_scale_factor,
            "width": width or self.unet.config.sample_size * self.vae_scale_factor,
            "negative_prompt": negative_prompt,
        }
        manifest = self._manifest(captions, owners, num_pairs, captions_per_image, selection, caption_fn, settings)
        output_dir = Path(output_dir)
        state = _process_state()
        plan = self._prepare_output(output_dir, manifest, resume, state, captions, owners, selection)
        num_shards = math.ceil(num_images / shard_size)
        run = layout.run_id(manifest)
        todo = sorted(set(range(num_shards)) - layout.finished_shards(output_dir, num_shards, run))
        state.wait_for_everyone()  # every process has seen the same finished shards before any writes more
        with state.split_between_processes(todo) as mine:
            self._make_shards(output_dir, list(mine), plan, manifest, caption_fn, state, callback, progress)
        state.wait_for_everyone()
        if state.is_main_process:
            self._finish(output_dir, manifest, license)
            # a fresh Arrow cache: a set regenerated in the same folder must not be served from an older cache
            distilled = datasets.load_dataset(str(output_dir), split=layout.SPLIT, download_mode="force_redownload")
        state.wait_for_everyone()
        if not state.is_main_process:
            distilled = datasets.load_dataset(str(output_dir), split=layout.SPLIT)
        return distilled

    # -------------------------------------------------------------------------------------- distill's parts

    def _manifest(
        self,
        captions: list[str],
        owners: list[str | None],
        num_pairs: int,
        captions_per_image: int,
        selection: Any,
        caption_fn: CaptionFn | None,
        settings: dict[str, Any],
    ) -> dict[str, Any]:
        """Every argument that shapes the set, in the order a mismatch is reported (the call's own first)."""
        embeds = isinstance(selection, str) and selection in EMBEDDING_METHODS
        return {
            "format_version": MANIFEST_VERSION,
            "source_fingerprint": _fingerprint(captions, owners),
            "source_captions": len(captions),
            "num_pairs": num_pairs,
            "captions_per_image": captions_per_image,
            "num_images": math.ceil(num_pairs / captions_per_image),
            "selection": selection if isinstance(selection, str) else _describe_callable(selection),
            **settings,
            "base_model": str(self.name_or_path),
            "lora": list(self._edge_lora_sources),
            "scheduler": type(self.scheduler).__name__,
            "captioner": self._describe_captioner(caption_fn),
            "clip_model": self._component_name("clip_model") if embeds else None,
        }

    def _resolve_captioner(self, captioner: CaptionFn | None, captions_per_image: int) -> CaptionFn | None:
        if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, int) or captions_per_image < 1:
            raise ValueError(f"captions_per_image must be an integer >= 1, got {captions_per_image!r}.")
        if captions_per_image == 1:
            return None
        if captioner is not None:
            if not callable(captioner):
                raise TypeError(f"captioner must be a Captioner or a callable, got {type(captioner).__name__}.")
            return captioner
        if getattr(self, "captioner", None) is not None:
            from .captioning import Captioner

            return Captioner(self.captioner, self.captioner_processor)
        raise ValueError(
            f"captions_per_image={captions_per_image} needs a captioner to synthesize "
            f"{captions_per_image - 1} extra caption(s) per image: pass captioner=Captioner.from_pretrained(...) "
            "(or any callable), load the pipeline with captioner=/captioner_processor=, or use captions_per_image=1."
        )

    @staticmethod
    def _describe_captioner(caption_fn: CaptionFn | None) -> Any:
        if caption_fn is None:
            return None
        describe = getattr(caption_fn, "describe", None)
        return describe() if callable(describe) else {"name": _describe_callable(caption_fn)}

    def _prepare_output(
        self,
        output_dir: Path,
        manifest: dict[str, Any],
        resume: bool,
        state: PartialState,
        captions: list[str],
        owners: list[str | None],
        selection: Any,
    ) -> _Plan:
        """Checks or starts the set in `output_dir` (main process), then every process reads the same plan."""
        has_manifest = (output_dir / layout.MANIFEST_NAME).is_file()
        # every process checks the folder as it was and raises the same error, so none waits forever
        _check_output_dir(output_dir, has_manifest)
        if has_manifest:
            old = layout.read_manifest(output_dir)
            if resume:
                _check_manifest(output_dir, old, manifest)  # the files themselves are checked by finished_shards
            else:
                layout.check_owned(output_dir, layout.run_id(old), "discard the set (resume=False)")
        state.wait_for_everyone()
        if state.is_main_process:
            if has_manifest and not resume:
                _clear_set(output_dir)
            shutil.rmtree(output_dir / layout.TMP_DIR, ignore_errors=True)  # partial shards of a killed run
            if not (resume and has_manifest):
                output_dir.mkdir(parents=True, exist_ok=True)
                plan = self._make_plan(captions, owners, manifest, selection)
                _write_json_atomic(output_dir / layout.PLAN_NAME, plan.__dict__)
                _write_json_atomic(output_dir / layout.MANIFEST_NAME, manifest)
        state.wait_for_everyone()
        return _Plan(**json.loads((output_dir / layout.PLAN_NAME).read_text(encoding="utf-8")))

    def _make_plan(
        self, captions: list[str], owners: list[str | None], manifest: dict[str, Any], selection: Any
    ) -> _Plan:
        num, seed = manifest["num_images"], manifest["seed"]
        embeddings = None
        if isinstance(selection, str) and selection in EMBEDDING_METHODS:
            if getattr(self, "clip_model", None) is None or getattr(self, "clip_processor", None) is None:
                raise ValueError(
                    f"selection={selection!r} embeds the captions with CLIP: load the pipeline with clip_model= "
                    "and clip_processor= (e.g. openai/clip-vit-base-patch32), or use selection='random'."
                )
            embeddings = embed_captions(captions, self.clip_model, self.clip_processor)
        chosen = select_captions(captions, num, selection, seed=seed, embeddings=embeddings)
        return _Plan(
            prompts=[captions[i] for i in chosen],
            seeds=[item_seed(seed, index) for index in range(num)],
            source_ids=[owners[i] for i in chosen],
        )

    def _make_shards(
        self,
        output_dir: Path,
        shards: list[int],
        plan: _Plan,
        manifest: dict[str, Any],
        caption_fn: CaptionFn | None,
        state: PartialState,
        callback: Callable[[DistillProgress], None] | None,
        progress: bool,
    ) -> None:
        num_images, shard_size = manifest["num_images"], manifest["shard_size"]
        num_shards = math.ceil(num_images / shard_size)
        items = {s: list(range(s * shard_size, min((s + 1) * shard_size, num_images))) for s in shards}
        report = DistillProgress(items_total=sum(len(v) for v in items.values()))
        # the bar is diffusers' `self.progress_bar`, so `set_progress_bar_config` (e.g. disable=True) governs it
        saved_bar_config = dict(getattr(self, "_progress_bar_config", {}))
        hidden = {} if progress and state.is_main_process else {"disable": True}
        self.set_progress_bar_config(**{"desc": "distill", "unit": "img", **saved_bar_config, **hidden})
        bar = self.progress_bar(total=report.items_total)
        self.set_progress_bar_config(disable=True)  # no inner bar per batch's denoising loop
        start = time.perf_counter()
        try:
            for shard in shards:
                report.shard = shard
                rows = self._make_rows(items[shard], plan, manifest, caption_fn, report, start, callback, bar)
                tick = time.perf_counter()
                path = layout.shard_path(output_dir, shard, num_shards)
                layout.write_shard(rows, path, output_dir / layout.TMP_DIR, run=layout.run_id(manifest))
                report.writing_s += time.perf_counter() - tick
                if callback is not None:
                    callback(replace(report, event="shard", last_indices=[]))
                logger.info(f"shard {shard + 1}/{num_shards} written: {report.images_per_second:.2f} images/s")
        finally:
            self.set_progress_bar_config(**saved_bar_config)
            bar.close()

    def _make_rows(
        self,
        indices: list[int],
        plan: _Plan,
        manifest: dict[str, Any],
        caption_fn: CaptionFn | None,
        report: DistillProgress,
        start: float,
        callback: Callable[[DistillProgress], None] | None,
        bar: Any,
    ) -> dict[str, list]:
        rows: dict[str, list] = {name: [] for name in layout.DISTILLED_FEATURES}
        batch_size = manifest["batch_size"]
        for first in range(0, len(indices), batch_size):
            batch = indices[first : first + batch_size]
            prompts = [plan.prompts[i] for i in batch]
            seeds = [plan.seeds[i] for i in batch]
            tick = time.perf_counter()
            images = self._generate(prompts, seeds, manifest)
            report.generation_s += time.perf_counter() - tick
            tick = time.perf_counter()
            captions = [[p] for p in prompts]
            if caption_fn is not None:
                extra = caption_fn(images, prompts, manifest["captions_per_image"] - 1, seeds)
                extra = _check_captions_out(extra, prompts, batch, manifest["captions_per_image"] - 1)
                captions = [[p, *e] for p, e in zip(prompts, extra)]
            report.captioning_s += time.perf_counter() - tick
            rows[layout.IMAGE_COLUMN] += [layout.encode_png(image) for image in images]
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

    def _generate(self, prompts: list[str], seeds: list[int], manifest: dict[str, Any]) -> list[PIL.Image.Image]:
        """One pipeline call; CPU generators make the starting noise independent of the device."""
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        negative = manifest["negative_prompt"]
        return self(
            prompt=prompts,
            negative_prompt=None if negative is None else [negative] * len(prompts),
            generator=generators,
            num_inference_steps=manifest["num_inference_steps"],
            guidance_scale=manifest["guidance_scale"],
            height=manifest["height"],
            width=manifest["width"],
            output_type="pil",
        ).images

    def _finish(self, output_dir: Path, manifest: dict[str, Any], license: str) -> None:
        num_shards = math.ceil(manifest["num_images"] / manifest["shard_size"])
        run = layout.run_id(manifest)
        missing = set(range(num_shards)) - layout.finished_shards(output_dir, num_shards, run)
        if missing:
            raise RuntimeError(f"Shards {sorted(missing)} of {str(output_dir)!r} were not written by any process.")
        import diffusers

        metadata = {
            "method": "EDGE (arXiv 2509.15472)",
            "base_model": manifest["base_model"],
            "lora": manifest["lora"],
            "selection": manifest["selection"],
            "clip_model": manifest["clip_model"],
            "captioner": manifest["captioner"],
            "num_pairs_requested": manifest["num_pairs"],  # the budget; the card counts the set's own pairs
            "captions_per_image": manifest["captions_per_image"],
            "seed": manifest["seed"],
            "item_seeds": "numpy SeedSequence([seed, item_index]).generate_state(1, uint32)",
            "num_inference_steps": manifest["num_inference_steps"],
            "guidance_scale": manifest["guidance_scale"],
            "height": manifest["height"],
            "width": manifest["width"],
            "negative_prompt": manifest["negative_prompt"],
            "scheduler": manifest["scheduler"],
            "source_captions": manifest["source_captions"],
            "source_fingerprint": manifest["source_fingerprint"],
            "diffusers_edge_version": __version__,
            "diffusers_version": diffusers.__version__,
        }
        layout.write_card(output_dir, metadata, license=license, run=run)
        shutil.rmtree(output_dir / layout.TMP_DIR, ignore_errors=True)

    def _component_name(self, name: str) -> str | None:
        component = getattr(self, name, None)
        return str(getattr(getattr(component, "config", None), "_name_or_path", "") or "") or None
