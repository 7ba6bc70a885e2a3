"""EDGE fine-tuning of Stable Diffusion: the objective on one batch and the full `accelerate` training loop.

The objective (EDGE, arXiv 2509.15472, figure 2; REFERENCE.md section 1): encode the images with the VAE, add noise
at sampled timesteps, let the UNet predict from the *noisy* latents, turn its prediction into the one-step clean
latent x0 = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t) (or its v-prediction form), decode x0, embed the decoded images
and the captions with a frozen CLIP model, and minimise

    denoise_weight * MSE + contrastive_weight * L_C + diversity_weight * L_D

with L_C and L_D from `diffusers_edge.losses`. Gradients reach the trainable UNet parameters (LoRA, or DiffFit's
biases and norms) through the VAE decoder and CLIP, which stay frozen.

`train(args, dataset=None)` is the whole loop (`accelerate launch examples/train_edge.py ...` runs it; the demo and
the `diffusers-edge train` command call it in-process). `parse_args(argv)` builds its arguments. See
docs/training.md for every flag, its default and the reason for it.

Example:
    >>> args = parse_args(["--pretrained_model_name_or_path", "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                    "--train_data_dir", "my-images", "--output_dir", "edge-lora"])
    >>> args.finetune, args.contrastive_weight, args.loss_max_timestep
    ('lora', 1.0, 500)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import random
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from accelerate.logging import get_logger
from safetensors.torch import load_file, save_file

from .data.format import check_captions
from .losses import DEFAULT_TEMPERATURE, bidirectional_contrastive_loss, caption_group_ids, diversity_loss
from .paths import check_model_reference
from .process_logging import set_library_verbosity

logger = get_logger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DIFFFIT_WEIGHT_NAME = "difffit_weights.safetensors"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_SUFFIX = ".partial"
# the files accelerate's `save_state` writes for one optimizer and one scheduler
CHECKPOINT_STATE_FILES = ("optimizer.bin", "scheduler.bin")
# The attention projections that diffusers' own LoRA scripts adapt (REFERENCE.md section 4).
LORA_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
# What the CLIP losses can be computed on (EDGELossConfig.clip_inputs, --clip_loss_inputs).
CLIP_LOSS_INPUTS = ("one_step", "rollout")
# Searched in this order when --caption_column is not given.
CAPTION_COLUMN_CANDIDATES = ("captions", "text", "caption")
# accelerate's trackers (--report_to) and the package each needs.
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "comet_ml": "comet_ml",
    "mlflow": "mlflow",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
# torchvision's interpolation modes, named as diffusers' --image_interpolation_mode names them.
INTERPOLATION_MODES = [mode.name.lower() for mode in TF.InterpolationMode]


# ----------------------------------------------------------------------------------------------------------------
# The objective on one batch
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EDGELossConfig:
    """Weights and options of the EDGE objective (see docs/training.md for the reasons behind the defaults).

    Attributes:
        denoise_weight: weight of the usual denoising MSE (0 reproduces the released EDGE code, which drops it).
        contrastive_weight: weight of the bi-directional contrastive loss L_C.
        diversity_weight: weight of the diversity loss L_D (the paper's lambda = 1).
        temperature: L_C's temperature (0.1 in the released code).
        loss_max_timestep: only samples with timestep <= this enter the CLIP losses (their one-step x0 carries a
            picture); 999 or more uses every sample, as the released code does.
        clip_batch_size: at most this many eligible samples enter the CLIP losses (memory); `None`: all of them.
        loss_resolution: side in pixels at which x0 is decoded for the CLIP losses (x0 latents are resized first);
            `None`: the training resolution.
        clip_inputs: what the CLIP losses see. `"one_step"`: the one-step x0 predictions of the batch's noisy
            latents (EDGE, section 3); `"rollout"`: the model's own samples, `rollout_steps` DDIM steps from pure
            noise with classifier-free guidance `rollout_guidance_scale`, gradients through every step (our
            variant: the distilled set is sampled from noise, which one-step x0 of real latents never sees;
            docs/demo.md measures the difference). `loss_max_timestep` only applies to `"one_step"`.
        rollout_steps: DDIM steps of a rollout.
        rollout_guidance_scale: classifier-free guidance of a rollout (1 disables it).
        snr_gamma: Min-SNR weighting of the denoising MSE (Hang et al. 2023, arXiv 2303.09556; diffusers'
            `--snr_gamma`, 5.0 recommended there): each sample's MSE is weighted by min(SNR(t), gamma) / SNR(t)
            (epsilon) or / (SNR(t) + 1) (v_prediction). `None`: the plain mean.
        noise_offset: diffusers' `--noise_offset`: adds `noise_offset * N(0, 1)` per sample and channel (constant
            over the image) to the training noise (Guttenberg 2023, "Diffusion with Offset Noise"). 0: off.
    """

    denoise_weight: float = 1.0
    contrastive_weight: float = 1.0
    diversity_weight: float = 1.0
    temperature: float = DEFAULT_TEMPERATURE
    loss_max_timestep: int = 500
    clip_batch_size: int | None = None
    loss_resolution: int | None = None
    clip_inputs: str = "one_step"
    rollout_steps: int = 4
    rollout_guidance_scale: float = 3.0
    snr_gamma: float | None = None
    noise_offset: float = 0.0

    @property
    def uses_clip(self) -> bool:
        return self.contrastive_weight != 0 or self.diversity_weight != 0


@dataclass
class EDGELossOutput:
    """The total loss and its parts (the parts are detached, for logging)."""

    loss: torch.Tensor
    denoise: torch.Tensor
    contrastive: torch.Tensor
    diversity: torch.Tensor
    num_clip_pairs: int

    def logs(self) -> dict[str, float]:
        return {
            "loss": self.loss.item(),
            "loss_denoise": self.denoise.item(),
            "loss_contrastive": self.contrastive.item(),
            "loss_diversity": self.diversity.item(),
            "clip_pairs": float(self.num_clip_pairs),
        }


def predict_x0(
    model_output: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor, noise_scheduler: Any
) -> torch.Tensor:
    """The one-step clean latent the model's output implies, for the scheduler's `prediction_type`.

    epsilon: x0 = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t) (EDGE, section 3); v_prediction: x0 = sqrt(a_t) * z_t -
    sqrt(1 - a_t) * v; sample: the output itself. `a_t` is the scheduler's `alphas_cumprod[t]`.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> scheduler = DDPMScheduler()
        >>> z = torch.ones(1, 4, 2, 2)
        >>> x0 = predict_x0(torch.zeros_like(z), z, torch.tensor([0]), scheduler)
        >>> round(x0.mean().item(), 4)  # no noise predicted: x0 = z / sqrt(a_0)
        1.0001
    """
    prediction_type = noise_scheduler.config.prediction_type
    alphas = noise_scheduler.alphas_cumprod.to(device=noisy_latents.device, dtype=torch.float32)[timesteps]
    alphas = alphas.reshape(-1, *([1] * (noisy_latents.ndim - 1)))
    if prediction_type == "epsilon":
        return (noisy_latents - (1 - alphas).sqrt() * model_output) / alphas.sqrt()
    if prediction_type == "v_prediction":
        return alphas.sqrt() * noisy_latents - (1 - alphas).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample.")


def rollout_latents(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    uncond_hidden_states: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Samples from `latents` (pure noise) with `scheduler` as `StableDiffusionPipeline` does, keeping gradients.

    `scheduler.set_timesteps` must have been called. With `guidance_scale > 1` the unconditional and conditional
    predictions are combined as in classifier-free guidance (`uncond_hidden_states`: the embedding of "", one row).

    Example:
        >>> scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # doctest: +SKIP
        >>> scheduler.set_timesteps(4)  # doctest: +SKIP
        >>> noise = torch.randn(2, 4, 8, 8)
        >>> z0 = rollout_latents(pipe.unet, scheduler, noise, text_states, empty_states, 3.0)  # doctest: +SKIP
    """
    guided = guidance_scale > 1
    if guided:
        uncond = uncond_hidden_states.expand(len(latents), -1, -1).to(encoder_hidden_states.dtype)
        encoder_hidden_states = torch.cat([uncond, encoder_hidden_states])
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        output = unet(model_input, t, encoder_hidden_states, return_dict=False)[0]
        if guided:
            uncond_output, text_output = output.chunk(2)
            output = uncond_output + guidance_scale * (text_output - uncond_output)
        latents = scheduler.step(output, t, latents, return_dict=False)[0]
    return latents


def clip_pixel_values(images: torch.Tensor, image_processor: Any) -> torch.Tensor:
    """Differentiable version of what a CLIP image processor does to pictures, for images in [-1, 1].

    Clamps to [0, 1] (what a pipeline outputs), resizes the shortest edge to the processor's `size` (bicubic with
    antialiasing, as PIL does), center-crops to `crop_size` and normalises with `image_mean` / `image_std`.

    Example:
        >>> from transformers import CLIPImageProcessor
        >>> processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size=8)
        >>> clip_pixel_values(torch.zeros(1, 3, 16, 16), processor).shape
        torch.Size([1, 3, 8, 8])
    """
    images = (images / 2 + 0.5).clamp(0, 1)
    if image_processor.do_resize:
        short = image_processor.size["shortest_edge"]
        height, width = images.shape[-2:]
        scale = short / min(height, width)
        size = (max(short, round(height * scale)), max(short, round(width * scale)))
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    if image_processor.do_center_crop:
        crop = image_processor.crop_size
        images = TF.center_crop(images, [crop["height"], crop["width"]])
    if image_processor.do_normalize:
        mean = torch.tensor(image_processor.image_mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(image_processor.image_std, device=images.device, dtype=images.dtype)
        images = (images - mean[:, None, None]) / std[:, None, None]
    return images


def _features(output: Any) -> torch.Tensor:
    """`get_image_features` / `get_text_features` return a tensor (transformers 4) or an output whose pooler is it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class EDGEObjective:
    """The EDGE training objective on one collated batch.

    Args:
        unet: the UNet being tuned (possibly wrapped by `accelerator.prepare`).
        vae: `AutoencoderKL` (frozen here).
        text_encoder: Stable Diffusion text encoder that conditions the UNet (frozen here).
        clip_model: CLIP model (frozen here) (`get_image_features` / `get_text_features`) for the losses.
        image_processor: the CLIP model's image processor (sizes, mean, std).
        noise_scheduler: the training scheduler (`DDPMScheduler` with the model's `prediction_type`).
        config: loss weights and options.
        uncond_hidden_states: the text encoder's states for "" (one row); needed by `clip_inputs="rollout"` with
            guidance.

    A batch is a dict with `pixel_values` (B, 3, H, W) in [-1, 1], `input_ids` (SD tokenizer, dropped captions
    already replaced by ""), `clip_input_ids` / `clip_attention_mask` (CLIP tokenizer, the real captions),
    `clip_keep` (bool: caption not dropped) and `caption_groups` (equal ids for equal captions).

    Example:
        >>> objective = EDGEObjective(unet, vae, text_encoder, clip, processor.image_processor, scheduler,
        ...                           EDGELossConfig())  # doctest: +SKIP
        >>> out = objective(batch, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> out.loss.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: Any,
        text_encoder: torch.nn.Module,
        clip_model: Any,
        image_processor: Any,
        noise_scheduler: Any,
        config: EDGELossConfig,
        uncond_hidden_states: torch.Tensor | None = None,
    ) -> None:
        if config.clip_inputs not in CLIP_LOSS_INPUTS:
            raise ValueError(f"clip_inputs must be one of {CLIP_LOSS_INPUTS}, got {config.clip_inputs!r}.")
        if config.clip_inputs == "rollout" and config.rollout_guidance_scale > 1 and uncond_hidden_states is None:
            raise ValueError("clip_inputs='rollout' with guidance needs uncond_hidden_states (the states of '').")
        for frozen in (vae, text_encoder, clip_model):
            frozen.requires_grad_(False)
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.clip_model = clip_model
        self.image_processor = image_processor
        self.noise_scheduler = noise_scheduler
        self.config = config
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.uncond_hidden_states = uncond_hidden_states
        self.rollout_scheduler = None
        if config.clip_inputs == "rollout":
            from diffusers import DDIMScheduler

            self.rollout_scheduler = DDIMScheduler.from_config(noise_scheduler.config)
            self.rollout_scheduler.set_timesteps(config.rollout_steps)

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> EDGELossOutput:
        device, dtype = self.vae.device, self.vae.dtype
        with torch.no_grad():
            pixel_values = batch["pixel_values"].to(device=device, dtype=dtype)
            latents = self.vae.encode(pixel_values).latent_dist.sample(generator).float()
            latents = latents * self.vae.config.scaling_factor
            encoder_hidden_states = self.text_encoder(batch["input_ids"].to(device), return_dict=False)[0]
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        if self.config.noise_offset:
            offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=torch.float32)
            noise = noise + self.config.noise_offset * offset
        noise = noise.to(device)
        num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)

        model_pred = self.unet(noisy_latents.to(dtype), timesteps, encoder_hidden_states, return_dict=False)[0]
        model_pred = model_pred.float()
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        elif self.noise_scheduler.config.prediction_type == "sample":
            target = latents
        else:
            target = noise
        denoise = self._denoise_loss(model_pred, target, timesteps)

        zero = denoise.new_zeros(())
        contrastive, diversity, pairs = zero, zero, 0
        if self.config.uses_clip:
            selected = self._clip_indices(timesteps, batch["clip_keep"].to(device))
            pairs = len(selected)
            if pairs:
                x0 = self._clip_latents(
                    model_pred, noisy_latents, timesteps, encoder_hidden_states, selected, generator
                )
                image_embeds = self._image_embeds(x0)
                text_embeds = self._text_embeds(batch, selected)
                groups = batch["caption_groups"][selected.cpu()]
                contrastive = bidirectional_contrastive_loss(
                    image_embeds, text_embeds, self.config.temperature, groups
                )
                diversity = diversity_loss(image_embeds, text_embeds)
        loss = (
            self.config.denoise_weight * denoise
            + self.config.contrastive_weight * contrastive
            + self.config.diversity_weight * diversity
        )
        return EDGELossOutput(loss, denoise.detach(), contrastive.detach(), diversity.detach(), pairs)

    def _denoise_loss(self, model_pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The denoising MSE: the plain mean, or Min-SNR weighted per sample (`snr_gamma`), as diffusers does."""
        if self.config.snr_gamma is None:
            return F.mse_loss(model_pred, target)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=self.config.snr_gamma)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            weights = weights / snr
        elif prediction_type == "v_prediction":
            weights = weights / (snr + 1)
        per_sample = F.mse_loss(model_pred, target, reduction="none").mean(dim=list(range(1, model_pred.ndim)))
        return (per_sample * weights).mean()

    def _clip_latents(
        self,
        model_pred: torch.Tensor,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        selected: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The latents the CLIP losses decode: one-step x0 of the selected rows, or their rollouts from noise."""
        if self.rollout_scheduler is None:
            return predict_x0(model_pred[selected], noisy_latents[selected], timesteps[selected], self.noise_scheduler)
        shape = (len(selected), *noisy_latents.shape[1:])
        start = torch.randn(shape, generator=generator, dtype=torch.float32).to(noisy_latents.device)
        latents = rollout_latents(
            self.unet,
            self.rollout_scheduler,
            start.to(encoder_hidden_states.dtype),
            encoder_hidden_states[selected],
            self.uncond_hidden_states,
            self.config.rollout_guidance_scale,
        )
        return latents.float()

    def _clip_indices(self, timesteps: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        eligible = keep.bool()
        if self.rollout_scheduler is None:  # a rollout starts from noise: the batch's timesteps do not matter
            eligible = eligible & (timesteps <= self.config.loss_max_timestep)
        eligible = torch.nonzero(eligible).flatten()
        if self.config.clip_batch_size is not None:
            eligible = eligible[: self.config.clip_batch_size]
        return eligible

    def _image_embeds(self, x0: torch.Tensor) -> torch.Tensor:
        if self.config.loss_resolution is not None:
            side = self.config.loss_resolution // self.vae_scale_factor
            if x0.shape[-1] != side or x0.shape[-2] != side:
                x0 = F.interpolate(x0, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        with torch.profiler.record_function("edge/vae_decode"):
            images = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        with torch.profiler.record_function("edge/clip_image"):
            pixels = clip_pixel_values(images.float(), self.image_processor).to(self.clip_model.dtype)
            return _features(self.clip_model.get_image_features(pixel_values=pixels)).float()

    def _text_embeds(self, batch: dict[str, torch.Tensor], selected: torch.Tensor) -> torch.Tensor:
        device = self.clip_model.device
        rows = selected.cpu()
        with torch.no_grad(), torch.profiler.record_function("edge/clip_text"):
            output = self.clip_model.get_text_features(
                input_ids=batch["clip_input_ids"][rows].to(device),
                attention_mask=batch["clip_attention_mask"][rows].to(device),
            )
        return _features(output).float()


def check_clip_model(clip_model: Any, tokenizer: Any, image_processor: Any, name: str) -> int:
    """Runs one tiny probe through the CLIP model and returns its embedding size.

    Raises `ValueError` if the model has no `get_image_features` / `get_text_features`, or if its image and text
    embeddings differ in size (the losses compare them directly).

    Example:
        >>> check_clip_model(clip, processor.tokenizer, processor.image_processor, "openai/clip-vit-base-patch32")
        ... # doctest: +SKIP
        512
    """
    if not (hasattr(clip_model, "get_image_features") and hasattr(clip_model, "get_text_features")):
        raise ValueError(
            f"--clip_model_name_or_path {name!r} loaded a {type(clip_model).__name__}, which has no "
            "get_image_features/get_text_features; EDGE needs a dual encoder such as CLIPModel."
        )
    crop = image_processor.crop_size if image_processor.do_center_crop else None
    side = (crop["height"], crop["width"]) if crop else (image_processor.size["shortest_edge"],) * 2
    device = clip_model.device
    with torch.no_grad():
        pixels = torch.zeros(1, 3, *side, device=device, dtype=clip_model.dtype)
        image = _features(clip_model.get_image_features(pixel_values=pixels))
        tokens = tokenizer(["a photo"], return_tensors="pt").to(device)
        text = _features(clip_model.get_text_features(**tokens))
    if image.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"CLIP model {name!r} gives image embeddings of size {image.shape[-1]} but text embeddings of size "
            f"{text.shape[-1]}; the contrastive and diversity losses need both in one space of the same size."
        )
    return int(image.shape[-1])


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `examples/train_edge.py` and `diffusers-edge train` (diffusers' flag names).

    Args:
        prog: the program name in usage and error lines (default: the running script's name).
    """
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune Stable Diffusion with the EDGE objective (arXiv 2509.15472); LoRA in diffusers format.",
    )
    g = p.add_argument_group("models")
    g.add_argument("--pretrained_model_name_or_path", type=str, required=True, help="Stable Diffusion repo or folder.")
    g.add_argument("--revision", type=str, default=None, help="Revision of the pretrained model on the Hub.")
    g.add_argument("--variant", type=str, default=None, help="Variant of the model files, e.g. fp16.")
    g.add_argument(
        "--clip_model_name_or_path",
        type=str,
        default=DEFAULT_CLIP_MODEL,
        help="Frozen CLIP model whose embedding space the contrastive and diversity losses use.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None, help="Hub dataset or local folder for load_dataset.")
    g.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's config, if it has several.")
    g.add_argument("--train_data_dir", type=str, default=None, help="An imagefolder with metadata.jsonl captions.")
    g.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    g.add_argument(
        "--caption_column",
        type=str,
        default=None,
        help="Column holding a caption or a list of captions (default: the first of captions, text, caption).",
    )
    g.add_argument("--max_train_samples", type=int, default=None, help="Keep only the first N training images.")
    g.add_argument("--cache_dir", type=str, default=None, help="Where downloaded models and datasets are stored.")
    g.add_argument("--resolution", type=int, default=512, help="Training images are resized and cropped to this.")
    g.add_argument(
        "--image_interpolation_mode",
        type=str,
        default="lanczos",
        choices=INTERPOLATION_MODES,
        help="torchvision interpolation used to resize the training images (diffusers' default: lanczos).",
    )
    g.add_argument("--center_crop", action="store_true", help="Center-crop instead of a random crop.")
    g.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="Data loading subprocesses.")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=16, help="Batch size per device.")
    g.add_argument("--num_train_epochs", type=int, default=10, help="Epochs (10 in the released EDGE code).")
    g.add_argument("--max_train_steps", type=int, default=None, help="Total optimiser steps; overrides epochs.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimiser step.")
    g.add_argument(
        "--gradient_checkpointing", action="store_true", help="Checkpoint the UNet and the VAE decoder (memory)."
    )
    g.add_argument("--learning_rate", type=float, default=1e-4, help="Learning rate after warm-up.")
    g.add_argument("--scale_lr", action="store_true", help="Multiply the lr by accumulation x batch x processes.")
    g.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    g.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps of the lr scheduler.")
    g.add_argument("--optimizer", type=str, default="adamw", choices=["adamw", "sgd"], help="sgd: released code.")
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-2)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    g.add_argument("--seed", type=int, default=0, help="Seeds data order, captions, crops, noise and timesteps.")
    g.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    g.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere or newer GPUs.")
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW (needs bitsandbytes).")
    g.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers attention in the UNet (needs xformers).",
    )
    g.add_argument("--local_rank", type=int, default=-1, help="Distributed: local_rank (LOCAL_RANK wins).")
    g = p.add_argument_group("what is tuned")
    g.add_argument(
        "--finetune",
        type=str,
        default="lora",
        choices=["lora", "difffit"],
        help="lora: peft LoRA on the attention projections; difffit: the UNet's biases and norms (released code).",
    )
    g.add_argument("--rank", type=int, default=4, help="LoRA rank.")
    g.add_argument(
        "--lora_layers",
        type=str,
        default=",".join(LORA_TARGET_MODULES),
        help='Comma-separated UNet modules LoRA adapts (peft target_modules, matched by name suffix), e.g. '
        '"attn2.to_k,attn2.to_v" for the cross-attention keys and values only, as Custom Diffusion tunes.',
    )
    g.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1).")
    g.add_argument("--use_dora", action="store_true", help="Weight-decomposed LoRA (DoRA).")
    g = p.add_argument_group("EDGE objective")
    g.add_argument("--denoise_weight", type=float, default=1.0, help="Denoising MSE weight (0: released code).")
    g.add_argument("--contrastive_weight", type=float, default=1.0, help="Weight of L_C.")
    g.add_argument("--diversity_weight", type=float, default=1.0, help="Weight of L_D (paper: lambda = 1).")
    g.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="L_C temperature.")
    g.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR weighting of the denoising MSE (arXiv 2303.09556); 5.0 is the recommended value. Default: off.",
    )
    g.add_argument("--noise_offset", type=float, default=0, help="Scale of offset noise (0: off).")
    g.add_argument(
        "--prediction_type",
        type=str,
        default=None,
        choices=["epsilon", "v_prediction"],
        help="Train for this prediction type (default: the scheduler's prediction_type).",
    )
    g.add_argument(
        "--loss_max_timestep",
        type=int,
        default=500,
        help="Only samples at timestep <= this enter the CLIP losses (>= 999: all, as the released code).",
    )
    g.add_argument("--clip_batch_size", type=int, default=None, help="Cap on the CLIP losses' sub-batch (memory).")
    g.add_argument(
        "--clip_loss_inputs",
        type=str,
        default="one_step",
        choices=CLIP_LOSS_INPUTS,
        help="What L_C/L_D see: one-step x0 of the noisy batch (paper) or the model's own samples from noise.",
    )
    g.add_argument("--rollout_steps", type=int, default=4, help="DDIM steps of a rollout (rollout inputs).")
    g.add_argument("--rollout_guidance_scale", type=float, default=3.0, help="Classifier-free guidance of a rollout.")
    g.add_argument(
        "--loss_resolution", type=int, default=None, help="Decode x0 at this side for the CLIP losses (memory)."
    )
    g.add_argument(
        "--caption_dropout",
        type=float,
        default=0.1,
        help="Fraction of captions replaced by '' for the UNet (keeps classifier-free guidance working).",
    )
    g = p.add_argument_group("checkpoints, logging, validation, Hub")
    g.add_argument("--output_dir", type=str, default="edge-lora", help="Where weights, checkpoints and logs go.")
    g.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to output_dir.")
    g.add_argument(
        "--report_to",
        type=str,
        default="tensorboard",
        help="Accelerate tracker(s), comma-separated: tensorboard (default, skipped when not installed), wandb, "
        "comet_ml, mlflow, ...; 'all' (every installed one) or 'none'.",
    )
    g.add_argument("--tracker_project_name", type=str, default="diffusers-edge")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable state every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    g.add_argument(
        "--resume_from_checkpoint", type=str, default=None, help="A checkpoint folder, or 'latest' in output_dir."
    )
    g.add_argument("--validation_prompt", type=str, default=None, help="Prompt for validation images.")
    g.add_argument("--num_validation_images", type=int, default=4)
    g.add_argument("--validation_epochs", type=int, default=1, help="Validate every N epochs (and at the end).")
    g.add_argument("--num_validation_inference_steps", type=int, default=30)
    g.add_argument("--validation_guidance_scale", type=float, default=7.5)
    g.add_argument("--push_to_hub", action="store_true", help="Upload output_dir to the Hub at the end.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Hub repo (default: the output_dir name).")
    g.add_argument("--hub_token", type=str, default=None, help="Token for --push_to_hub (default: the logged-in one).")
    return p


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parses and checks the training flags (`argv=None` reads `sys.argv`; `prog` names the program in errors).

    Example:
        >>> parse_args(["--pretrained_model_name_or_path", "sd", "--dataset_name", "x", "--rank", "8"]).rank
        8
    """
    args = build_parser(prog).parse_args(argv)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:  # what the launcher says wins, as in diffusers' scripts
        args.local_rank = env_local_rank
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raises `ValueError` naming the flag for values that cannot work (called again by `train`)."""
    positive = ["resolution", "train_batch_size", "num_train_epochs", "gradient_accumulation_steps", "rank"]
    positive += ["checkpointing_steps", "num_validation_images", "validation_epochs", "num_validation_inference_steps"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    for name in ("max_train_steps", "max_train_samples", "clip_batch_size", "loss_resolution"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive when given, got {getattr(args, name)}.")
    for name in ("denoise_weight", "contrastive_weight", "diversity_weight"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if args.denoise_weight == args.contrastive_weight == args.diversity_weight == 0:
        raise ValueError("all loss weights are 0: nothing would be trained.")
    if not math.isfinite(args.learning_rate) or args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be a positive finite number, got {args.learning_rate}.")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {args.temperature}.")
    if not 0 <= args.caption_dropout < 1:
        raise ValueError(f"--caption_dropout must be in [0, 1), got {args.caption_dropout}.")
    if args.rollout_steps < 1:
        raise ValueError(f"--rollout_steps must be >= 1, got {args.rollout_steps}.")
    if args.loss_max_timestep < 0:
        raise ValueError(f"--loss_max_timestep must be >= 0, got {args.loss_max_timestep}.")
    if any(not name.strip() for name in args.lora_layers.split(",")):
        raise ValueError(f"--lora_layers must be comma-separated module names, got {args.lora_layers!r}.")
    if args.lora_alpha is not None and args.lora_alpha <= 0:
        raise ValueError(f"--lora_alpha must be positive, got {args.lora_alpha}.")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("give either --dataset_name or --train_data_dir, not both.")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be positive when given, got {args.snr_gamma}.")
    if args.noise_offset < 0:
        raise ValueError(f"--noise_offset must be >= 0, got {args.noise_offset}.")
    if args.use_8bit_adam and args.optimizer != "adamw":
        raise ValueError(f"--use_8bit_adam replaces AdamW; it cannot be combined with --optimizer {args.optimizer}.")
    if args.use_8bit_adam:
        _require_package("--use_8bit_adam", "bitsandbytes")
    if args.enable_xformers_memory_efficient_attention:
        _require_package("--enable_xformers_memory_efficient_attention", "xformers")
    trackers = report_to_trackers(args.report_to)
    if args.hub_token is not None and "wandb" in trackers:
        raise ValueError(
            "--hub_token with --report_to wandb would expose the token in the run's logged config; "
            "log in with `hf auth login` instead (diffusers refuses the same combination)."
        )


def _require_package(flag: str, package: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{flag} needs the {package!r} package, which is not installed: pip install {package}")


def report_to_trackers(report_to: str) -> list[str]:
    """The trackers `--report_to` names, checked: known to accelerate and, except tensorboard, installed.

    `tensorboard` (the default, as in diffusers) is passed to accelerate even when it is not installed: accelerate
    then skips it without a warning. `all` and `none` are returned as they are.

    Example:
        >>> report_to_trackers("none")
        ['none']
    """
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if names in (["all"], ["none"]):
        return names
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ValueError(
                f"--report_to {name!r} is not a tracker accelerate knows; choose from "
                f"{sorted(TRACKER_PACKAGES)}, 'all' or 'none'."
            )
        if name != "tensorboard":
            _require_package(f"--report_to {name}", TRACKER_PACKAGES[name])
    if not names:
        raise ValueError("--report_to is empty; use 'none' to log nowhere.")
    return names


def _to_serialisable(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_train_dataset(args: argparse.Namespace, dataset: datasets.Dataset | None = None) -> datasets.Dataset:
    """The training split from `dataset`, `--dataset_name` or `--train_data_dir`, with its columns checked.

    Raises `ValueError` if no source is given, if the image or caption column is missing, or if an image has no
    caption or an empty one (naming the row). Images are not decoded here.

    Example:
        >>> ds = load_train_dataset(args)  # doctest: +SKIP
    """
    if dataset is None:
        if args.dataset_name is not None:
            dataset = datasets.load_dataset(
                args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, split="train"
            )
        elif args.train_data_dir is not None:
            if not Path(args.train_data_dir).is_dir():
                raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a folder.")
            dataset = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)
            dataset = dataset["train"]
        else:
            raise ValueError("no training data: give --dataset_name or --train_data_dir (or pass a Dataset).")
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"the dataset has no 'train' split (splits: {list(dataset)}).")
        dataset = dataset["train"]
    if args.image_column not in dataset.column_names:
        raise ValueError(
            f"--image_column {args.image_column!r} is not a column of the training data; its columns are "
            f"{dataset.column_names}."
        )
    args.caption_column = _caption_column(args.caption_column, dataset.column_names)
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the training data holds no rows.")
    for row, value in enumerate(dataset[args.caption_column]):
        _caption_list(value, f"training row {row} (column {args.caption_column!r})")
    return dataset


def _caption_column(name: str | None, columns: list[str]) -> str:
    if name is not None:
        if name not in columns:
            raise ValueError(
                f"--caption_column {name!r} is not a column of the training data; its columns are {columns}."
            )
        return name
    for candidate in CAPTION_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise ValueError(
        f"the training data has none of the caption columns {list(CAPTION_COLUMN_CANDIDATES)} (columns: {columns}); "
        "name yours with --caption_column."
    )


def _caption_list(value: Any, record: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, (list, tuple)):
        raise ValueError(f"{record}: a caption must be a string or a list of strings, got {type(value).__name__}.")
    return check_captions(value, record=record)


def _rng(*keys: int) -> random.Random:
    """A private random stream for one (seed, epoch, index, ...) key: the same key always draws the same values."""
    return random.Random(int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0]))


class EDGETrainItems(torch.utils.data.Dataset):
    """Training items keyed by `(row, epoch)`: image crop, flip, caption choice and caption dropout are drawn from a
    stream seeded by `(seed, epoch, row)`, so a resumed run sees exactly what an uninterrupted one would.
    """

    def __init__(self, dataset: datasets.Dataset, args: argparse.Namespace) -> None:
        self.dataset = dataset
        self.args = args

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        row, epoch = key
        args = self.args
        rng = _rng(args.seed, epoch, row)
        record = self.dataset[row]
        image = record[args.image_column]
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(
                f"training row {row}: column {args.image_column!r} holds {type(image).__name__}, not an image."
            )
        captions = _caption_list(record[args.caption_column], f"training row {row} (column {args.caption_column!r})")
        caption = captions[rng.randrange(len(captions))]
        keep = rng.random() >= args.caption_dropout
        return {
            "pixel_values": self._pixels(image.convert("RGB"), rng),
            "caption": caption,
            "unet_caption": caption if keep else "",
            "keep": keep,
        }

    def _pixels(self, image: PIL.Image.Image, rng: random.Random) -> torch.Tensor:
        size = self.args.resolution
        mode = TF.InterpolationMode[self.args.image_interpolation_mode.upper()]
        image = TF.resize(image, size, interpolation=mode)
        if self.args.center_crop:
            image = TF.center_crop(image, [size, size])
        else:
            top = rng.randint(0, image.height - size)
            left = rng.randint(0, image.width - size)
            image = TF.crop(image, top, left, size, size)
        if self.args.random_flip and rng.random() < 0.5:
            image = TF.hflip(image)
        return TF.to_tensor(image) * 2 - 1


class EpochBatchSampler(torch.utils.data.Sampler):
    """This process's batches of `(row, epoch)` keys: one seeded permutation per epoch, split across processes.

    Every process gets full batches: the permutation is extended cyclically to a multiple of
    `batch_size * num_processes` (as accelerate's `even_batches` does). `skip` drops the first batches of the next
    iteration (resuming inside an epoch).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_rows / (self.batch_size * self.num_processes))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        span = self.batch_size * self.num_processes
        order = (order * math.ceil(len(self) * span / self.num_rows))[: len(self) * span]
        skip, self.skip = self.skip, 0
        for batch in range(skip, len(self)):
            start = batch * span + self.process_index * self.batch_size
            yield [(row, self.epoch) for row in order[start : start + self.batch_size]]


class EDGECollator:
    """Stacks items and tokenises captions for the SD text encoder and for CLIP."""

    def __init__(self, tokenizer: Any, clip_tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.clip_tokenizer = clip_tokenizer

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [item["caption"] for item in items]
        input_ids = self.tokenizer(
            [item["unet_caption"] for item in items],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        clip_tokens = self.clip_tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.clip_tokenizer.model_max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "input_ids": input_ids,
            "clip_input_ids": clip_tokens.input_ids,
            "clip_attention_mask": clip_tokens.attention_mask,
            "clip_keep": torch.tensor([item["keep"] for item in items]),
            "caption_groups": caption_group_ids(captions),
        }


# ----------------------------------------------------------------------------------------------------------------
# What is tuned, and how it is saved
# ----------------------------------------------------------------------------------------------------------------


def add_trainable_parameters(unet: torch.nn.Module, args: argparse.Namespace) -> list[torch.nn.Parameter]:
    """Freezes the UNet, then adds a LoRA adapter or unfreezes DiffFit's parameters; returns the trainable list.

    The list (not a `filter` object) is what the optimizer and gradient clipping both receive (REFERENCE.md 4).

    Example:
        >>> params = add_trainable_parameters(unet, parse_args([...]))  # doctest: +SKIP
    """
    unet.requires_grad_(False)
    if args.finetune == "lora":
        from peft import LoraConfig

        config = LoraConfig(
            r=args.rank,
            lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.rank,
            use_dora=args.use_dora,
            init_lora_weights="gaussian",
            target_modules=[name.strip() for name in args.lora_layers.split(",")],
        )
        unet.add_adapter(config)
    else:
        for parameter in difffit_parameters(unet).values():
            parameter.requires_grad_(True)
    return [p for p in unet.parameters() if p.requires_grad]


def difffit_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """DiffFit-style trainable set of the released EDGE code: every bias and every norm layer's affine weights.

    Example:
        >>> sorted(difffit_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))))
        ['0.bias', '1.bias', '1.weight']
    """
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    chosen = {}
    for module_name, module in unet.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, norms):
                chosen[f"{module_name}.{name}" if module_name else name] = parameter
    return chosen


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raises `FloatingPointError` naming the first tensor with a NaN or infinite value (nothing is written).

    Example:
        >>> check_finite({"w": torch.ones(2)}, "edge-lora")
    """
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise FloatingPointError(
                f"Refusing to write {where!r}: weight {name!r} holds NaN or infinite values (the training diverged)."
            )


def save_lora(unet: torch.nn.Module, save_directory: str | Path) -> Path:
    """Writes the UNet's LoRA in diffusers format, with the adapter metadata so `lora_alpha` survives reload.

    Example:
        >>> save_lora(unet, "edge-lora")  # doctest: +SKIP
        PosixPath('edge-lora/pytorch_lora_weights.safetensors')
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    check_finite(state, str(save_directory))
    metadata = unet.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        save_directory, unet_lora_layers=state, unet_lora_adapter_metadata=metadata, safe_serialization=True
    )
    return Path(save_directory) / LORA_WEIGHT_NAME


def load_lora_into_unet(unet: torch.nn.Module, directory: str | Path) -> None:
    """Loads a LoRA saved by `save_lora` into a UNet that already carries the same adapter (resuming)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(str(directory))
    state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{directory}: LoRA keys that the UNet does not have: {result.unexpected_keys[:5]}")


def save_difffit(unet: torch.nn.Module, path: str | Path, base_model: str) -> Path:
    """Writes the DiffFit parameters (biases and norms) to a safetensors file keyed by UNet parameter name."""
    tensors = {name: p.detach().cpu().contiguous() for name, p in difffit_parameters(unet).items()}
    check_finite(tensors, str(path))
    save_file(tensors, str(path), metadata={"format": "pt", "finetune": "difffit", "base_model": base_model})
    return Path(path)


def load_difffit_weights(unet: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Loads a `--finetune difffit` file into a Stable Diffusion UNet (in place) and returns the UNet.

    Raises `ValueError` if the file names a parameter the UNet lacks or has a different shape.

    Example:
        >>> pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
        ... # doctest: +SKIP
        >>> load_difffit_weights(pipe.unet, "edge-difffit/difffit_weights.safetensors")  # doctest: +SKIP
    """
    tensors = load_file(str(path))
    own = dict(unet.named_parameters())
    for name, tensor in tensors.items():
        if name not in own:
            raise ValueError(f"{path}: parameter {name!r} is not in this UNet (a different base model?).")
        if own[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: {name!r} has shape {tuple(tensor.shape)}, the UNet's is {tuple(own[name].shape)}."
            )
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].dtype))
    return unet


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """What `train` leaves behind."""

    output_dir: Path
    weights_path: Path
    global_step: int
    last_logs: dict[str, float]


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete, readable checkpoint (naming the file), or None if it is.

    A checkpoint holds the trainable weights and accelerate's optimizer and scheduler states. The zip archives torch
    writes and the safetensors files are checked for truncation and damage without unpickling anything.

    Example:
        >>> checkpoint_problem("edge-lora/checkpoint-500") is None
        True
    """
    folder = Path(folder)
    if folder.name.endswith(PARTIAL_SUFFIX):
        return "a save that did not finish"
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    weights = names & {LORA_WEIGHT_NAME, DIFFFIT_WEIGHT_NAME}
    missing = [] if weights else [f"{LORA_WEIGHT_NAME} or {DIFFFIT_WEIGHT_NAME}"]
    missing += [name for name in CHECKPOINT_STATE_FILES if name not in names]
    if missing:
        return f"incomplete: no {', '.join(missing)}"
    for name in sorted(names):
        path = folder / name
        try:
            if name.endswith(".safetensors"):
                load_file(str(path))
            elif name.endswith(".bin"):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad!r} fails its CRC check")
        except Exception as error:  # safetensors and zipfile raise several types for damaged files
            return f"{name} is damaged ({type(error).__name__}: {error})"
    return None


def list_checkpoints(output_dir: str | Path) -> tuple[list[Path], list[str]]:
    """The complete `checkpoint-N` folders of `output_dir` by step, and a note for each `checkpoint-*` left out.

    Example:
        >>> complete, skipped = list_checkpoints("edge-lora")
        >>> [p.name for p in complete], skipped
        (['checkpoint-500', 'checkpoint-1000'], ['checkpoint-1500.partial (a save that did not finish)'])
    """
    output_dir = Path(output_dir)
    complete, skipped = [], []
    folders = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None and not CHECKPOINT_PATTERN.match(folder.name):
            problem = "not named checkpoint-<step>, so its step is unknown"
        if problem is None:
            complete.append(folder)
        else:
            skipped.append(f"{folder.name} ({problem})")
    complete.sort(key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))
    return complete, skipped


def checkpoint_step(folder: str | Path, flag: str = "--resume_from_checkpoint") -> int:
    """The optimiser step a `checkpoint-N` folder was saved at (`ValueError` naming the folder otherwise).

    Example:
        >>> checkpoint_step("edge-lora/checkpoint-500")
        500
    """
    match = CHECKPOINT_PATTERN.match(Path(folder).name)
    if match is None:
        raise ValueError(
            f"{flag} {str(folder)!r}: a checkpoint folder must be named checkpoint-<step> (the step the run resumes "
            "at is read from its name); rename it, e.g. to checkpoint-500."
        )
    return int(match.group(1))


def resolve_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder `--resume_from_checkpoint` names; `None` for a fresh start.

    `latest` picks the highest complete `checkpoint-N` in `output_dir` (or `None` if there is none); folders it
    skips (a save interrupted by a kill, a damaged file, a name without a step) are named in a warning. Any other
    value is a folder (absolute, or relative to `output_dir`) that must exist, be named `checkpoint-N` and be
    complete; otherwise `ValueError` / `FileNotFoundError` names the problem before any model is loaded.

    Example:
        >>> resolve_checkpoint(None, "edge-lora") is None
        True
    """
    if resume is None:
        return None
    output_dir = Path(output_dir)
    if resume == "latest":
        complete, skipped = list_checkpoints(output_dir)
        if skipped:
            chosen = f"resuming from {complete[-1].name}" if complete else "starting a new run"
            warnings.warn(
                f"--resume_from_checkpoint latest skipped {'; '.join(skipped)} in {str(output_dir)!r}; {chosen}.",
                stacklevel=2,
            )
        return complete[-1] if complete else None
    for candidate in (Path(resume), output_dir / resume):
        if candidate.is_dir():
            checkpoint_step(candidate)
            problem = checkpoint_problem(candidate)
            if problem is not None:
                raise ValueError(
                    f"--resume_from_checkpoint {str(candidate)!r} cannot be resumed from: {problem}. Resume from an "
                    "earlier checkpoint (or `latest`, which skips such folders)."
                )
            return candidate
    raise FileNotFoundError(
        f"--resume_from_checkpoint {resume!r} is neither a folder nor a folder inside "
        f"--output_dir {str(output_dir)!r}."
    )


def check_model_flags(args: argparse.Namespace) -> None:
    """Checks the model flags before anything loads: the paths exist (or are Hub ids) and the CLIP model is a
    dual image-text encoder (its config has `text_config` and `vision_config`), not e.g. a BERT."""
    from transformers import AutoConfig

    check_model_reference(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
    check_model_reference(args.clip_model_name_or_path, "--clip_model_name_or_path")
    config = AutoConfig.from_pretrained(args.clip_model_name_or_path, cache_dir=args.cache_dir)
    if not (hasattr(config, "text_config") and hasattr(config, "vision_config")):
        raise ValueError(
            f"--clip_model_name_or_path {args.clip_model_name_or_path!r} is a {config.model_type!r} model "
            f"({', '.join(config.architectures or [])}), not a dual image-text encoder; EDGE's contrastive and "
            "diversity losses need one such as CLIPModel (e.g. openai/clip-vit-base-patch32)."
        )


def _check_resolution(args: argparse.Namespace, vae: Any) -> None:
    """The VAE maps pixels to latents by an exact factor (8 for Stable Diffusion); the UNet takes any latent size."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    for name in ("resolution", "loss_resolution"):
        value = getattr(args, name)
        if value is not None and value % factor:
            raise ValueError(
                f"--{name} {value} is not divisible by the VAE's downsampling factor {factor}; "
                f"try {max(factor, value // factor * factor)}."
            )


def _load_models(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoModel, AutoProcessor, CLIPTextModel, CLIPTokenizer

    common = {"revision": args.revision, "cache_dir": args.cache_dir}
    path = args.pretrained_model_name_or_path
    models = {
        "noise_scheduler": DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common),
        "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **common),
        "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=args.variant, **common),
        "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", variant=args.variant, **common),
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=args.variant, **common),
        "clip_model": AutoModel.from_pretrained(args.clip_model_name_or_path, cache_dir=args.cache_dir),
        "clip_processor": AutoProcessor.from_pretrained(args.clip_model_name_or_path, cache_dir=args.cache_dir),
    }
    return models


def train(args: argparse.Namespace, dataset: datasets.Dataset | None = None) -> TrainingResult:
    """Fine-tunes the UNet with the EDGE objective and writes the LoRA (or DiffFit file) and a model card.

    Runs unchanged in one process or under `accelerate launch` / `torchrun` (DDP). Bad input (missing columns,
    empty captions, a CLIP model with mismatched projections, a resolution not divisible by the VAE factor, a
    checkpoint that does not exist) raises before any training step.

    Args:
        args: flags from `parse_args` (or a namespace with the same fields).
        dataset: an already loaded training `datasets.Dataset`; overrides `--dataset_name` / `--train_data_dir`.

    Returns:
        A `TrainingResult` with the weights file and the last step's logs.

    Example:
        >>> result = train(parse_args(["--pretrained_model_name_or_path", "sd", "--train_data_dir", "imgs"]))
        ... # doctest: +SKIP
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    check_args(args)
    check_model_flags(args)
    output_dir = Path(args.output_dir)
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else report_to_trackers(args.report_to),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_library_verbosity(accelerator.is_local_main_process)
    logger.info("accelerate state: %s", str(accelerator.state).replace("\n", "; "), main_process_only=False)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    dataset = load_train_dataset(args, dataset)
    models = _load_models(args)
    unet, vae, text_encoder, clip_model = models["unet"], models["vae"], models["text_encoder"], models["clip_model"]
    clip_processor = models["clip_processor"]
    if args.prediction_type is not None:
        models["noise_scheduler"].register_to_config(prediction_type=args.prediction_type)
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    _check_resolution(args, vae)
    check_clip_model(
        clip_model, clip_processor.tokenizer, clip_processor.image_processor, args.clip_model_name_or_path
    )

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    cast = {"dtype": weight_dtype} if weight_dtype != torch.float32 else {}
    for frozen in (vae, text_encoder, clip_model):
        frozen.requires_grad_(False).eval().to(accelerator.device, **cast)
    params = add_trainable_parameters(unet, args)
    unet.to(accelerator.device, **cast)
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    sampler = EpochBatchSampler(
        len(dataset), args.train_batch_size, args.seed, accelerator.process_index, accelerator.num_processes
    )
    dataloader = torch.utils.data.DataLoader(
        EDGETrainItems(dataset, args),
        batch_sampler=sampler,
        collate_fn=EDGECollator(models["tokenizer"], clip_processor.tokenizer),
        num_workers=args.dataloader_num_workers,
    )
    # whole accumulation cycles per epoch: the leftover batches of an epoch are skipped, so optimiser steps line up
    # with epochs (and with the resume position)
    updates_per_epoch = len(dataloader) // args.gradient_accumulation_steps
    if updates_per_epoch == 0:
        raise ValueError(
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} exceeds the {len(dataloader)} batches "
            "per epoch of each process; lower it or the batch size."
        )
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = _optimizer(args, params, learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    _register_hooks(accelerator, args)
    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=_to_serialisable(args))

    objective = EDGEObjective(
        unet,
        vae,
        text_encoder,
        clip_model,
        clip_processor.image_processor,
        models["noise_scheduler"],
        loss_config(args),
        uncond_hidden_states=(
            empty_caption_states(models["tokenizer"], text_encoder)
            if args.clip_loss_inputs == "rollout"
            else None
        ),
    )
    global_step = 0
    if checkpoint is not None:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # torch, pickle and safetensors raise many types for a damaged or foreign state
            raise RuntimeError(
                f"checkpoint {str(checkpoint)!r} could not be loaded ({type(error).__name__}: {error}); resume from "
                "an earlier checkpoint, or check that it was saved with the same flags (--finetune, --rank, ...)."
            ) from error
        global_step = checkpoint_step(checkpoint)
        logger.info("resumed from %s at step %d", checkpoint, global_step)
    elif args.resume_from_checkpoint == "latest":
        logger.info("no checkpoint in %s: starting a new run", output_dir)
    first_epoch = global_step // updates_per_epoch
    sampler.skip = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    logger.info(
        "training: %d images, %d epochs, batch %d x %d processes x %d accumulation, %d steps",
        len(dataset), num_epochs, args.train_batch_size, accelerator.num_processes,
        args.gradient_accumulation_steps, max_train_steps,
    )  # fmt: skip
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="EDGE steps", disable=not accelerator.is_local_main_process
    )
    logs: dict[str, float] = {}
    meter = AccumulatedLoss()
    trainable = [(name, p) for name, p in accelerator.unwrap_model(unet).named_parameters() if p.requires_grad]
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        sampler.set_epoch(epoch)
        batch_offset = sampler.skip
        for index, batch in enumerate(dataloader, start=batch_offset):
            if index >= updates_per_epoch * args.gradient_accumulation_steps:
                break
            keys = [args.seed, epoch, index, accelerator.process_index]
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence(keys).generate_state(1)[0]))
            with accelerator.accumulate(unet):
                output = objective(batch, generator=generator)
                meter.add(output)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            logs = meter.logs(accelerator, lr_scheduler.get_last_lr()[0])
            check_training_finite(logs, trainable, global_step, output_dir)
            progress.set_postfix(loss=f"{logs['loss']:.4f}", L_C=f"{logs['loss_contrastive']:.3f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                _save_checkpoint(accelerator, args, output_dir, global_step)
            if global_step >= max_train_steps:
                break
        last_epoch = global_step >= max_train_steps or epoch + 1 == num_epochs
        # the final weights are validated once, after the loop
        due = (epoch + 1) % args.validation_epochs == 0
        if args.validation_prompt and accelerator.is_main_process and due and not last_epoch:
            _validate(accelerator, args, models, accelerator.unwrap_model(unet), global_step)
        if global_step >= max_train_steps:
            break

    accelerator.wait_for_everyone()
    weights = output_dir / (LORA_WEIGHT_NAME if args.finetune == "lora" else DIFFFIT_WEIGHT_NAME)
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if args.finetune == "lora":
            save_lora(final_unet, output_dir)
        else:
            save_difffit(final_unet, weights, args.pretrained_model_name_or_path)
        images = _validate(accelerator, args, models, final_unet, global_step) if args.validation_prompt else []
        save_model_card(args, output_dir, global_step, images)
        if args.push_to_hub:
            push_training_output(args, output_dir, len(images))
    accelerator.wait_for_everyone()  # the other processes wait while the main one saves and validates
    accelerator.end_training()
    return TrainingResult(output_dir, weights, global_step, logs)


@torch.no_grad()
def empty_caption_states(tokenizer: Any, text_encoder: torch.nn.Module) -> torch.Tensor:
    """The text encoder's states for "" (the unconditional input of classifier-free guidance), on its device.

    Example:
        >>> empty_caption_states(pipe.tokenizer, pipe.text_encoder).shape  # doctest: +SKIP
        torch.Size([1, 77, 768])
    """
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return text_encoder(ids.input_ids.to(text_encoder.device), return_dict=False)[0]


def loss_config(args: argparse.Namespace) -> EDGELossConfig:
    """The objective's options from the parsed flags."""
    return EDGELossConfig(
        denoise_weight=args.denoise_weight,
        contrastive_weight=args.contrastive_weight,
        diversity_weight=args.diversity_weight,
        temperature=args.temperature,
        loss_max_timestep=args.loss_max_timestep,
        clip_batch_size=args.clip_batch_size,
        loss_resolution=args.loss_resolution,
        clip_inputs=args.clip_loss_inputs,
        rollout_steps=args.rollout_steps,
        rollout_guidance_scale=args.rollout_guidance_scale,
        snr_gamma=args.snr_gamma,
        noise_offset=args.noise_offset,
    )


def _optimizer(args: argparse.Namespace, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    optimizer_class = torch.optim.AdamW
    if args.use_8bit_adam:
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    return optimizer_class(
        params,
        lr=lr,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


class AccumulatedLoss:
    """The logged losses of one optimiser step: the mean over its gradient-accumulation micro-batches (as diffusers'
    `train_loss`), then over processes.

    Example:
        >>> meter = AccumulatedLoss()
        >>> meter.add(output_a); meter.add(output_b)  # doctest: +SKIP
        >>> meter.logs(accelerator, lr=1e-4)["loss"]  # (loss_a + loss_b) / 2  # doctest: +SKIP
    """

    NAMES = ("loss", "loss_denoise", "loss_contrastive", "loss_diversity", "clip_pairs")

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, output: EDGELossOutput) -> None:
        parts = torch.stack([output.loss.detach(), output.denoise, output.contrastive, output.diversity]).float()
        parts = torch.cat([parts, torch.tensor([float(output.num_clip_pairs)], device=parts.device)])
        self.total = parts if self.total is None else self.total + parts
        self.count += 1

    def logs(self, accelerator: Any, lr: float) -> dict[str, float]:
        """The means since the last call (then resets), reduced over processes, and the learning rate."""
        mean = accelerator.reduce(self.total / self.count, reduction="mean").tolist()
        self.total, self.count = None, 0
        return {**dict(zip(self.NAMES, mean)), "lr": lr}


def _register_hooks(accelerator: Any, args: argparse.Namespace) -> None:
    """Checkpoints hold only the trainable weights (LoRA or DiffFit), plus accelerate's optimizer and RNG states."""

    def save_hook(models: list, weights: list, directory: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                unet = accelerator.unwrap_model(model)
                if args.finetune == "lora":
                    save_lora(unet, directory)
                else:
                    save_difffit(unet, Path(directory) / DIFFFIT_WEIGHT_NAME, args.pretrained_model_name_or_path)
        weights.clear()

    def load_hook(models: list, directory: str) -> None:
        while models:
            unet = accelerator.unwrap_model(models.pop())
            if args.finetune == "lora":
                load_lora_into_unet(unet, directory)
            else:
                load_difffit_weights(unet, Path(directory) / DIFFFIT_WEIGHT_NAME)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def check_training_finite(
    logs: dict[str, float], trainable: list[tuple[str, torch.Tensor]], step: int, output_dir: Path
) -> None:
    """Stops training with `FloatingPointError` when a loss term or a trainable weight is NaN or infinite.

    `logs` are the step's losses averaged over processes and the weights are the same on every process, so every
    process raises together. The error names the step and the loss term; nothing of this step is saved.
    """
    terms = ("loss", "loss_denoise", "loss_contrastive", "loss_diversity")
    bad = [f"{name}={logs[name]}" for name in terms if not math.isfinite(logs[name])]
    weights = [name for name, p in trainable if not torch.isfinite(p).all()]
    if not bad and not weights:
        return
    what = f"the loss is not finite ({', '.join(bad)})" if bad else f"weight {weights[0]!r} is not finite"
    if bad and weights:
        what += f" and {len(weights)} weight(s) are, e.g. {weights[0]!r}"
    complete, _ = list_checkpoints(output_dir)
    last = f"the last checkpoint (finite weights) is {str(complete[-1])!r}" if complete else "no checkpoint was saved"
    raise FloatingPointError(
        f"Training diverged at step {step}: {what}. No weights of this run were written from this step on; {last}. "
        "Lower --learning_rate (or --max_grad_norm), or check the data."
    )


def _save_checkpoint(accelerator: Any, args: argparse.Namespace, output_dir: Path, step: int) -> None:
    """Saves to `checkpoint-N.partial`, then renames it to `checkpoint-N`: a kill mid-save leaves no `checkpoint-N`
    that `--resume_from_checkpoint latest` could pick (it skips the partial folder and says so)."""
    final, partial = output_dir / f"checkpoint-{step}", output_dir / f"checkpoint-{step}{PARTIAL_SUFFIX}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted save of the same step
        if args.checkpoints_total_limit is not None:
            existing, _ = list_checkpoints(output_dir)
            for old in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                logger.info("removing old checkpoint %s", old)
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # an incomplete or earlier save of the same step (e.g. a run resumed from before it)
            logger.info("replacing %s", final)
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()


def _validate(accelerator: Any, args: argparse.Namespace, models: dict, unet: Any, step: int) -> list[PIL.Image.Image]:
    """Generates `--num_validation_images` for the prompt, saves them under output_dir/validation, logs them."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        args.pretrained_model_name_or_path,
        unet=unet,
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=models["tokenizer"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        revision=args.revision,
        variant=args.variant,
        cache_dir=args.cache_dir,
        dtype=models["vae"].dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad(), accelerator.autocast():
        images = pipe(
            [args.validation_prompt] * args.num_validation_images,
            num_inference_steps=args.num_validation_inference_steps,
            guidance_scale=args.validation_guidance_scale,
            height=args.resolution,
            width=args.resolution,
            generator=generator,
        ).images
    unet.train(was_training)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"step-{step}_{i}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(
                "validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC"
            )
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(im, caption=args.validation_prompt) for im in images]}, step=step)
    return images


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
    args: argparse.Namespace, output_dir: str | Path, global_step: int, images: Sequence[PIL.Image.Image] = ()
) -> Path:
    """Writes `README.md`: a `huggingface_hub.ModelCard` with diffusers' training metadata and the run's settings.

    The YAML carries what diffusers' `load_or_create_model_card(from_training=True)` + `populate_model_card` write
    for a LoRA training script (`base_model`, `library_name: diffusers`, `license`, `inference: true`, a `widget`
    of the validation images, `instance_prompt`, diffusers' training tags) plus ours. The card is built afresh
    from this run, never loaded from a repository (`load_or_create_model_card` would return the card a previous
    push left and keep its numbers); images of an earlier run (`image_*.png`) are deleted.

    Example:
        >>> save_model_card(args, "edge-lora", global_step=1000)  # doctest: +SKIP
    """
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    output_dir = Path(output_dir)
    base = args.pretrained_model_name_or_path
    data = args.dataset_name or args.train_data_dir or "an in-memory datasets.Dataset"
    for stale in output_dir.glob("image_*.png"):
        stale.unlink()
    for i, image in enumerate(images):
        image.save(output_dir / f"image_{i}.png")
    widget = [{"text": args.validation_prompt, "output": {"url": f"image_{i}.png"}} for i in range(len(images))]
    card_data = ModelCardData(
        base_model=hub_base_model(base),
        library_name="diffusers",
        license="creativeml-openrail-m",
        inference=True,
        instance_prompt=args.validation_prompt,
        widget=widget or None,
        datasets=[args.dataset_name] if args.dataset_name and not Path(args.dataset_name).exists() else None,
    )
    gallery = "".join(f"![image {i}](./image_{i}.png)\n" for i in range(len(images)))
    if args.finetune == "lora":
        usage = (
            "```python\nfrom diffusers import StableDiffusionPipeline\n\n"
            f'pipe = StableDiffusionPipeline.from_pretrained("{base}")\n'
            f'pipe.load_lora_weights("{args.hub_model_id or output_dir}")\n```\n'
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
        ("CLIP model (loss space)", args.clip_model_name_or_path),
        ("training data", f"{data} (image column {args.image_column!r}, caption column {args.caption_column!r})"),
        ("fine-tuning", args.finetune if args.finetune != "lora" else f"LoRA rank {args.rank}, alpha "
         f"{args.lora_alpha if args.lora_alpha is not None else args.rank}{', DoRA' if args.use_dora else ''}, "
         f"layers {args.lora_layers}"),
        ("denoise / contrastive / diversity weights", f"{args.denoise_weight} / {args.contrastive_weight} / "
         f"{args.diversity_weight}"),
        ("temperature", args.temperature),
        ("CLIP losses at timesteps <=", args.loss_max_timestep),
        ("CLIP losses' samples per batch at most", args.clip_batch_size or "all eligible"),
        ("CLIP losses on", args.clip_loss_inputs if args.clip_loss_inputs == "one_step" else
         f"rollouts: {args.rollout_steps} DDIM steps from noise, guidance {args.rollout_guidance_scale}"),
        ("caption dropout", args.caption_dropout),
        ("prediction type", args.prediction_type or "the scheduler's"),
        ("Min-SNR gamma / noise offset", f"{args.snr_gamma or 'off'} / {args.noise_offset or 'off'}"),
        ("resolution / loss resolution", f"{args.resolution} / {args.loss_resolution or args.resolution}"),
        ("optimiser steps", global_step),
        ("batch size x accumulation", f"{args.train_batch_size} x {args.gradient_accumulation_steps} per process"),
        ("optimizer, learning rate, schedule", f"{args.optimizer}, {args.learning_rate}, {args.lr_scheduler}"),
        ("seed", args.seed),
    ]  # fmt: skip
    table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    inputs = (
        "one-step x0 predictions of noisy training latents"
        if args.clip_loss_inputs == "one_step"
        else f"the model's own {args.rollout_steps}-step DDIM samples from pure noise"
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
    tags = [*DIFFUSERS_TRAINING_TAGS, "lora" if args.finetune == "lora" else "difffit"]
    card = populate_model_card(card, tags=[*tags, "dataset-distillation", "edge", "diffusers-edge"])
    path = output_dir / "README.md"
    card.save(path)
    return path


def push_training_output(
    args: argparse.Namespace, output_dir: str | Path, num_images: int, api: Any | None = None
) -> str:
    """Uploads what a user of the weights needs, and only that: the weights file, `README.md` and the card's
    `image_{i}.png`. Checkpoints, logs and `validation/` stay local; images an earlier push left in the repository
    (`image_*.png`) are deleted in the same commit.

    Example:
        >>> push_training_output(args, "edge-lora", num_images=4)  # doctest: +SKIP
        'me/edge-lora'
    """
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    api = api or HfApi(token=args.hub_token)
    repo_id = api.create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token).repo_id
    weights = LORA_WEIGHT_NAME if args.finetune == "lora" else DIFFFIT_WEIGHT_NAME
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="EDGE fine-tune",
        allow_patterns=[weights, "README.md", *(f"image_{i}.png" for i in range(num_images))],
        delete_patterns=["image_*.png"],
        token=args.hub_token,
    )
    return repo_id
