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
Hub layout of `diffusers_edge.data.distilled`, resumably and across `accelerate` processes. The batch job itself
(settings, plan, shards, resumption, process split) is `diffusers_edge.distillation.run_distill`.

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

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import torch
from diffusers import StableDiffusionPipeline
from transformers import PreTrainedModel, ProcessorMixin

from .caption_pool import caption_pool
from .distillation import (
    DEFAULT_SHARD_SIZE,
    CaptionFn,
    DistillProgress,
    DistillSettings,
    check_arguments,
    describe_captioner,
    describe_selection,
    item_seed,
    run_distill,
)
from .paths import check_model_reference
from .selection import EMBEDDING_METHODS

__all__ = ["EDGEPipeline", "CaptionFn", "DistillProgress", "item_seed"]


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
        cache_dir: str | os.PathLike | None = None,
    ) -> datasets.Dataset:
        """Generates a distilled set of `num_pairs` image-caption pairs and writes it to `output_dir`.

        EDGE's recipe (arXiv 2509.15472): pick `ceil(num_pairs / captions_per_image)` prompts from the source
        captions, generate one image per prompt, keep the prompt as the image's first caption and add
        `captions_per_image - 1` synthesized captions (2 captions per image was EDGE's best budget split).

        Args:
            source: the real training set in the normalized form (`captions`, optionally `image_id`), or a list of
                captions. A streamed `IterableDataset` (e.g. `load_source(..., streaming=True)` over CC3M's shards)
                is never held in memory: it is read once to count and fingerprint its captions, once more to embed
                them for k-center / k-means, and once to keep the chosen prompts (see `diffusers_edge.caption_pool`).
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
            cache_dir: where a streamed source's caption embeddings are kept for k-center / k-means, keyed by the
                CLIP model and the source (default `$HF_HOME/diffusers_edge/embeddings`); in-memory sources are
                embedded in memory.

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
        check_arguments(
            num_pairs, output_dir, batch_size, shard_size, seed, num_inference_steps, guidance_scale, height, width
        )
        pool = caption_pool(source)
        embeds = isinstance(selection, str) and selection in EMBEDDING_METHODS
        settings = DistillSettings(
            source_fingerprint=pool.fingerprint,
            source_captions=pool.size,
            num_pairs=num_pairs,
            captions_per_image=captions_per_image,
            selection=describe_selection(selection),
            seed=seed,
            batch_size=batch_size,
            shard_size=shard_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height or self.unet.config.sample_size * self.vae_scale_factor,
            width=width or self.unet.config.sample_size * self.vae_scale_factor,
            negative_prompt=negative_prompt,
            base_model=str(self.name_or_path),
            lora=list(self._edge_lora_sources),
            scheduler=type(self.scheduler).__name__,
            captioner=describe_captioner(caption_fn),
            clip_model=self._component_name("clip_model") if embeds else None,
        )
        return run_distill(
            self, settings, pool, selection, caption_fn, output_dir, resume, callback, progress, license, cache_dir
        )

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

    def _component_name(self, name: str) -> str | None:
        component = getattr(self, name, None)
        return str(getattr(getattr(component, "config", None), "_name_or_path", "") or "") or None
