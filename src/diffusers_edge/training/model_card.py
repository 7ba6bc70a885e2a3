"""The model card an EDGE fine-tune writes (diffusers' training metadata and the run's settings) and the upload of
what a user of the weights needs.

Example:
    >>> hub_base_model("/cache/hub/models--org--name/snapshots/0123abc")
    'org/name'
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import PIL.Image

from .adapters import DIFFFIT_WEIGHT_NAME, LORA_WEIGHT_NAME

if TYPE_CHECKING:
    from .config import TrainingConfig

# diffusers' LoRA text-to-image script tags its cards with these (diffusers-training marks a training script's card).
DIFFUSERS_TRAINING_TAGS = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers",
                           "diffusers-training"]  # fmt: skip
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

_MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

{{ model_description }}
"""


def hub_base_model(path_or_id: str) -> str:
    """The Hub id to write as a card's `base_model` for `--pretrained_model_name_or_path`.

    A Hub id is returned as it is. A local folder is traced back to its Hub id when it is a huggingface_hub cache
    snapshot (`.../models--org--name/snapshots/<hash>`) or a folder saved from a Hub model (its
    `model_index.json` records the id as `_name_or_path`); otherwise the path is returned as given, as diffusers'
    training scripts write it.

    Example:
        >>> hub_base_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
        'stable-diffusion-v1-5/stable-diffusion-v1-5'
        >>> hub_base_model("/cache/hub/models--org--name/snapshots/0123abc")
        'org/name'
    """
    path = Path(path_or_id)
    for part in path.parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    index = path / "model_index.json"
    if index.is_file():
        recorded = str(json.loads(index.read_text(encoding="utf-8")).get("_name_or_path") or "")
        if _HUB_ID.match(recorded) and not Path(recorded).exists():
            return recorded
    return str(path_or_id)


def save_model_card(
    config: TrainingConfig, output_dir: str | Path, global_step: int, images: Sequence[PIL.Image.Image] = ()
) -> Path:
    """Writes `README.md`: a `huggingface_hub.ModelCard` with diffusers' training metadata and the run's settings.

    The YAML carries what diffusers' `load_or_create_model_card(from_training=True)` + `populate_model_card` write
    for a LoRA training script (`base_model`, `library_name: diffusers`, `license`, `inference: true`, a `widget`
    of the validation images, `instance_prompt`, diffusers' training tags) plus ours. The card is built afresh
    from this run, never loaded from a repository (`load_or_create_model_card` would return the card a previous
    push left and keep its numbers); images of an earlier run (`image_*.png`) are deleted.

    Example:
        >>> save_model_card(config, "edge-lora", global_step=1000)  # doctest: +SKIP
    """
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    output_dir = Path(output_dir)
    base = config.pretrained_model_name_or_path
    files = ", ".join(config.train_data_files or [])
    data = config.dataset_name or config.train_data_dir or files or "an in-memory datasets.Dataset"
    for stale in output_dir.glob("image_*.png"):
        stale.unlink()
    for i, image in enumerate(images):
        image.save(output_dir / f"image_{i}.png")
    widget = [{"text": config.validation_prompt, "output": {"url": f"image_{i}.png"}} for i in range(len(images))]
    card_data = ModelCardData(
        base_model=hub_base_model(base),
        library_name="diffusers",
        license="creativeml-openrail-m",
        inference=True,
        instance_prompt=config.validation_prompt,
        widget=widget or None,
        datasets=[config.dataset_name] if config.dataset_name and not Path(config.dataset_name).exists() else None,
    )
    gallery = "".join(f"![image {i}](./image_{i}.png)\n" for i in range(len(images)))
    if config.finetune == "lora":
        usage = (
            "```python\nfrom diffusers import StableDiffusionPipeline\n\n"
            f'pipe = StableDiffusionPipeline.from_pretrained("{base}")\n'
            f'pipe.load_lora_weights("{config.hub_model_id or output_dir}")\n```\n'
        )
    else:
        usage = (
            "```python\nfrom diffusers import StableDiffusionPipeline\n"
            "from diffusers_edge.training import load_difffit_weights\n\n"
            f'pipe = StableDiffusionPipeline.from_pretrained("{base}")\n'
            f'load_difffit_weights(pipe.unet, "{DIFFFIT_WEIGHT_NAME}")\n```\n'
        )
    rows = [
        ("base model", base),
        ("CLIP model (loss space)", config.clip_model_name_or_path),
        ("training data", f"{data} (image column {config.image_column!r}, caption column {config.caption_column!r})"),
        ("fine-tuning", config.finetune if config.finetune != "lora" else f"LoRA rank {config.rank}, alpha "
         f"{config.lora_alpha if config.lora_alpha is not None else config.rank}"
         f"{', DoRA' if config.use_dora else ''}, layers {config.lora_layers}"),
        ("denoise / contrastive / diversity weights", f"{config.denoise_weight} / {config.contrastive_weight} / "
         f"{config.diversity_weight}"),
        ("temperature", config.temperature),
        ("CLIP losses at timesteps <=", config.loss_max_timestep),
        ("CLIP losses' samples per batch at most", config.clip_batch_size or "all eligible"),
        ("CLIP losses on", config.clip_loss_inputs if config.clip_loss_inputs == "one_step" else
         f"rollouts: {config.rollout_steps} DDIM steps from noise, guidance {config.rollout_guidance_scale}"),
        ("caption dropout", config.caption_dropout),
        ("prediction type", config.prediction_type or "the scheduler's"),
        ("Min-SNR gamma / noise offset", f"{config.snr_gamma or 'off'} / {config.noise_offset or 'off'}"),
        ("resolution / loss resolution", f"{config.resolution} / {config.loss_resolution or config.resolution}"),
        ("optimiser steps", global_step),
        ("batch size x accumulation", f"{config.train_batch_size} x {config.gradient_accumulation_steps} per process"),
        ("optimizer, learning rate, schedule", f"{config.optimizer}, {config.learning_rate}, {config.lr_scheduler}"),
        ("seed", config.seed),
    ]  # fmt: skip
    table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    inputs = (
        "one-step x0 predictions of noisy training latents"
        if config.clip_loss_inputs == "one_step"
        else f"the model's own {config.rollout_steps}-step DDIM samples from pure noise"
    )
    body = (
        f"# EDGE fine-tune of {base}\n\n"
        "Fine-tuned with the EDGE objective (Efficient Multimodal Dataset Distillation via Generative Models, "
        f"arXiv 2509.15472) by diffusers-edge: {inputs}, decoded and embedded by a frozen CLIP, are "
        "pulled towards their captions (bi-directional contrastive loss) and apart from each other (diversity "
        "loss).\n\n"
        f"{table}\n## Use\n\n{usage}\n{gallery}"
    )
    card = ModelCard.from_template(card_data, template_str=_MODEL_CARD_TEMPLATE, model_description=body)
    tags = [*DIFFUSERS_TRAINING_TAGS, "lora" if config.finetune == "lora" else "difffit"]
    card = populate_model_card(card, tags=[*tags, "dataset-distillation", "edge", "diffusers-edge"])
    path = output_dir / "README.md"
    card.save(path)
    return path


def push_training_output(
    config: TrainingConfig, output_dir: str | Path, num_images: int, api: Any | None = None
) -> str:
    """Uploads what a user of the weights needs, and only that: the weights file, `README.md` and the card's
    `image_{i}.png`. Checkpoints, logs and `validation/` stay local; images an earlier push left in the repository
    (`image_*.png`) are deleted in the same commit.

    Example:
        >>> push_training_output(config, "edge-lora", num_images=4)  # doctest: +SKIP
        'me/edge-lora'
    """
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    api = api or HfApi(token=config.hub_token)
    repo_id = api.create_repo(config.hub_model_id or output_dir.name, exist_ok=True, token=config.hub_token).repo_id
    weights = LORA_WEIGHT_NAME if config.finetune == "lora" else DIFFFIT_WEIGHT_NAME
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="EDGE fine-tune",
        allow_patterns=[weights, "README.md", *(f"image_{i}.png" for i in range(num_images))],
        delete_patterns=["image_*.png"],
        token=config.hub_token,
    )
    return repo_id
