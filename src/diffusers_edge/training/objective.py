"""The EDGE objective on one batch: one-step x0 (or a rollout), decoded, embedded by a frozen CLIP, and the losses.

The objective (EDGE, arXiv 2509.15472, figure 2; docs/method.md, "The EDGE objective"): encode the images with the
VAE, add noise at sampled timesteps, let the UNet predict from the *noisy* latents, turn its prediction into the
one-step clean latent x0 = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t) (or its v-prediction form), decode x0, embed the
decoded images and the captions with a frozen CLIP model, and minimise

    denoise_weight * MSE + contrastive_weight * L_C + diversity_weight * L_D

with L_C and L_D from `diffusers_edge.losses`. Gradients reach the trainable UNet parameters (LoRA, or DiffFit's
biases and norms) through the VAE decoder and CLIP, which stay frozen.

Example:
    >>> config = EDGELossConfig(loss_max_timestep=999)
    >>> config.uses_clip, config.clip_loss_inputs
    (True, 'one_step')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ..clip_features import clip_features
from ..losses import DEFAULT_TEMPERATURE, bidirectional_contrastive_loss, diversity_loss

# What the CLIP losses can be computed on (EDGELossConfig.clip_loss_inputs, --clip_loss_inputs).
CLIP_LOSS_INPUTS = ("one_step", "rollout")


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
        clip_loss_inputs: what the CLIP losses see. `"one_step"`: the one-step x0 predictions of the batch's noisy
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
    clip_loss_inputs: str = "one_step"
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
        uncond_hidden_states: the text encoder's states for "" (one row); needed by `clip_loss_inputs="rollout"` with
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
        if config.clip_loss_inputs not in CLIP_LOSS_INPUTS:
            raise ValueError(f"clip_loss_inputs must be one of {CLIP_LOSS_INPUTS}, got {config.clip_loss_inputs!r}.")
        if config.clip_loss_inputs == "rollout" and config.rollout_guidance_scale > 1 and uncond_hidden_states is None:
            raise ValueError("clip_loss_inputs='rollout' with guidance needs uncond_hidden_states (the states of '').")
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
        if config.clip_loss_inputs == "rollout":
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
            return clip_features(self.clip_model.get_image_features(pixel_values=pixels)).float()

    def _text_embeds(self, batch: dict[str, torch.Tensor], selected: torch.Tensor) -> torch.Tensor:
        device = self.clip_model.device
        rows = selected.cpu()
        with torch.no_grad(), torch.profiler.record_function("edge/clip_text"):
            output = self.clip_model.get_text_features(
                input_ids=batch["clip_input_ids"][rows].to(device),
                attention_mask=batch["clip_attention_mask"][rows].to(device),
            )
        return clip_features(output).float()


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
        image = clip_features(clip_model.get_image_features(pixel_values=pixels))
        tokens = tokenizer(["a photo"], return_tensors="pt").to(device)
        text = clip_features(clip_model.get_text_features(**tokens))
    if image.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"CLIP model {name!r} gives image embeddings of size {image.shape[-1]} but text embeddings of size "
            f"{text.shape[-1]}; the contrastive and diversity losses need both in one space of the same size."
        )
    return int(image.shape[-1])


@torch.no_grad()
def empty_caption_states(tokenizer: Any, text_encoder: torch.nn.Module) -> torch.Tensor:
    """The text encoder's states for "" (the unconditional input of classifier-free guidance), on its device.

    Example:
        >>> empty_caption_states(pipe.tokenizer, pipe.text_encoder).shape  # doctest: +SKIP
        torch.Size([1, 77, 768])
    """
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return text_encoder(ids.input_ids.to(text_encoder.device), return_dict=False)[0]
