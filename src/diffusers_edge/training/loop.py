"""The EDGE fine-tuning loop: `train(config, dataset=None)` under `accelerate`, in one process or several.

`accelerate launch examples/train_edge.py ...` runs it; the demo and the `diffusers-edge train` command call it
in-process. See docs/training.md for every setting of `TrainingConfig`, its default and the reason for it.

Example:
    >>> config = TrainingConfig(pretrained_model_name_or_path="stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                         train_data_dir="my-images", output_dir="edge-lora")
    >>> result = train(config)  # doctest: +SKIP
    >>> result.weights_path  # doctest: +SKIP
    PosixPath('edge-lora/pytorch_lora_weights.safetensors')
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate.logging import get_logger

from ..clip_features import DEFAULT_CLIP_MODEL
from ..paths import check_model_reference
from ..process_logging import set_library_verbosity
from .adapters import DIFFFIT_WEIGHT_NAME, LORA_WEIGHT_NAME, add_trainable_parameters, save_difffit, save_lora
from .checkpoints import (
    checkpoint_step,
    list_checkpoints,
    register_checkpoint_hooks,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig, check_args, report_to_trackers
from .data import EDGECollator, EDGETrainItems, EpochBatchSampler, load_train_dataset
from .model_card import push_training_output, save_model_card
from .objective import EDGELossOutput, EDGEObjective, check_clip_model, empty_caption_states
from .streaming import StreamItems, load_train_stream, split_stream, stream_batches

logger = get_logger(__name__)


@dataclass
class TrainingResult:
    """What `train` leaves behind."""

    output_dir: Path
    weights_path: Path
    global_step: int
    last_logs: dict[str, float]


def check_model_flags(config: TrainingConfig) -> None:
    """Checks the model flags before anything loads: the paths exist (or are Hub ids) and the CLIP model is a
    dual image-text encoder (its config has `text_config` and `vision_config`), not e.g. a BERT."""
    from transformers import AutoConfig

    check_model_reference(config.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
    check_model_reference(config.clip_model_name_or_path, "--clip_model_name_or_path")
    clip_config = AutoConfig.from_pretrained(config.clip_model_name_or_path, cache_dir=config.cache_dir)
    if not (hasattr(clip_config, "text_config") and hasattr(clip_config, "vision_config")):
        raise ValueError(
            f"--clip_model_name_or_path {config.clip_model_name_or_path!r} is a {clip_config.model_type!r} model "
            f"({', '.join(clip_config.architectures or [])}), not a dual image-text encoder; EDGE's contrastive and "
            f"diversity losses need one such as CLIPModel (e.g. {DEFAULT_CLIP_MODEL})."
        )


def _check_resolution(config: TrainingConfig, vae: Any) -> None:
    """The VAE maps pixels to latents by an exact factor (8 for Stable Diffusion); the UNet takes any latent size."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    for name in ("resolution", "loss_resolution"):
        value = getattr(config, name)
        if value is not None and value % factor:
            raise ValueError(
                f"--{name} {value} is not divisible by the VAE's downsampling factor {factor}; "
                f"try {max(factor, value // factor * factor)}."
            )


def _load_models(config: TrainingConfig) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoModel, AutoProcessor, CLIPTextModel, CLIPTokenizer

    common = {"revision": config.revision, "cache_dir": config.cache_dir}
    path, variant = config.pretrained_model_name_or_path, config.variant
    models = {
        "noise_scheduler": DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common),
        "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **common),
        "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=variant, **common),
        "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", variant=variant, **common),
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=variant, **common),
        "clip_model": AutoModel.from_pretrained(config.clip_model_name_or_path, cache_dir=config.cache_dir),
        "clip_processor": AutoProcessor.from_pretrained(config.clip_model_name_or_path, cache_dir=config.cache_dir),
    }
    return models


def train(
    config: TrainingConfig, dataset: datasets.Dataset | datasets.IterableDataset | None = None
) -> TrainingResult:
    """Fine-tunes the UNet with the EDGE objective and writes the LoRA (or DiffFit file) and a model card.

    Runs unchanged in one process or under `accelerate launch` / `torchrun` (DDP). Bad input (missing columns,
    empty captions, a CLIP model with mismatched projections, a resolution not divisible by the VAE factor, a
    checkpoint that does not exist) raises before any training step.

    Args:
        config: the settings, from `parse_args` or built directly (`check_args` runs on it again here).
        dataset: an already loaded training `datasets.Dataset` (or, with `--streaming`, a
            `datasets.IterableDataset`); overrides `--dataset_name` / `--train_data_dir` / `--train_data_files`.

    Returns:
        A `TrainingResult` with the weights file and the last step's logs.

    Example:
        >>> result = train(parse_args(["--pretrained_model_name_or_path", "sd", "--train_data_dir", "imgs"]))
        ... # doctest: +SKIP
        >>> result = train(TrainingConfig(pretrained_model_name_or_path="sd", max_train_steps=100), dataset=ds)
        ... # doctest: +SKIP
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    check_args(config)
    check_model_flags(config)
    output_dir = Path(config.output_dir)
    checkpoint = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else report_to_trackers(config.report_to),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_library_verbosity(accelerator.is_local_main_process)
    logger.info("accelerate state: %s", str(accelerator.state).replace("\n", "; "), main_process_only=False)
    set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    load = load_train_stream if config.streaming else load_train_dataset
    dataset, caption_column = load(config, dataset)
    config = dataclasses.replace(config, caption_column=caption_column)  # the caller's config stays as it was
    models = _load_models(config)
    unet, vae, text_encoder, clip_model = models["unet"], models["vae"], models["text_encoder"], models["clip_model"]
    clip_processor = models["clip_processor"]
    if config.prediction_type is not None:
        models["noise_scheduler"].register_to_config(prediction_type=config.prediction_type)
    if config.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    _check_resolution(config, vae)
    check_clip_model(
        clip_model, clip_processor.tokenizer, clip_processor.image_processor, config.clip_model_name_or_path
    )

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    cast = {"dtype": weight_dtype} if weight_dtype != torch.float32 else {}
    for frozen in (vae, text_encoder, clip_model):
        frozen.requires_grad_(False).eval().to(accelerator.device, **cast)
    params = add_trainable_parameters(unet, config)
    unet.to(accelerator.device, **cast)
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()
    if config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    collator = EDGECollator(models["tokenizer"], clip_processor.tokenizer)
    if config.streaming:
        stream = split_stream(dataset, accelerator.process_index, accelerator.num_processes)
        items = StreamItems(stream, config, accelerator.process_index, accelerator.num_processes)
        dataloader = torch.utils.data.DataLoader(items, batch_size=config.train_batch_size, collate_fn=collator)
        accelerator.register_for_checkpointing(items)  # the stream position travels in every checkpoint
        max_train_steps = config.max_train_steps
    else:
        sampler = EpochBatchSampler(
            len(dataset), config.train_batch_size, config.seed, accelerator.process_index, accelerator.num_processes
        )
        dataloader = torch.utils.data.DataLoader(
            EDGETrainItems(dataset, config),
            batch_sampler=sampler,
            collate_fn=collator,
            num_workers=config.dataloader_num_workers,
        )
        # whole accumulation cycles per epoch: the leftover batches of an epoch are skipped, so optimiser steps line
        # up with epochs (and with the resume position)
        updates_per_epoch = len(dataloader) // config.gradient_accumulation_steps
        if updates_per_epoch == 0:
            raise ValueError(
                f"--gradient_accumulation_steps {config.gradient_accumulation_steps} exceeds the {len(dataloader)} "
                "batches per epoch of each process; lower it or the batch size."
            )
        max_train_steps = config.max_train_steps or config.num_train_epochs * updates_per_epoch
        num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    learning_rate = config.learning_rate
    if config.scale_lr:
        learning_rate *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = _optimizer(config, params, learning_rate)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    register_checkpoint_hooks(accelerator, config)
    if accelerator.is_main_process:
        accelerator.init_trackers(config.tracker_project_name, config=_to_serialisable(config))

    objective = EDGEObjective(
        unet,
        vae,
        text_encoder,
        clip_model,
        clip_processor.image_processor,
        models["noise_scheduler"],
        config.loss_config(),
        uncond_hidden_states=(
            empty_caption_states(models["tokenizer"], text_encoder) if config.clip_loss_inputs == "rollout" else None
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
    elif config.resume_from_checkpoint == "latest":
        logger.info("no checkpoint in %s: starting a new run", output_dir)
    if config.streaming:
        first_index = global_step * config.gradient_accumulation_steps
        batches = stream_batches(dataloader, config.seed, accelerator.process_index, first_index)
        logger.info(
            "training on a stream: batch %d x %d processes x %d accumulation, %d steps",
            config.train_batch_size, accelerator.num_processes, config.gradient_accumulation_steps, max_train_steps,
        )  # fmt: skip
    else:
        first_epoch = global_step // updates_per_epoch
        sampler.skip = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
        per_epoch = updates_per_epoch * config.gradient_accumulation_steps
        epochs = range(first_epoch, num_epochs)
        batches = _epoch_batches(dataloader, sampler, epochs, per_epoch, config.seed, accelerator.process_index)
        logger.info(
            "training: %d images, %d epochs, batch %d x %d processes x %d accumulation, %d steps",
            len(dataset), num_epochs, config.train_batch_size, accelerator.num_processes,
            config.gradient_accumulation_steps, max_train_steps,
        )  # fmt: skip
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="EDGE steps", disable=not accelerator.is_local_main_process
    )
    logs: dict[str, float] = {}
    meter = AccumulatedLoss()
    trainable = [(name, p) for name, p in accelerator.unwrap_model(unet).named_parameters() if p.requires_grad]
    unet.train()
    for epoch, keys, batch in batches:
        if batch is None:  # the end of an epoch (map-style data only); the final weights are validated after the loop
            last_epoch = global_step >= max_train_steps or epoch + 1 == num_epochs
            due = (epoch + 1) % config.validation_epochs == 0
            if config.validation_prompt and accelerator.is_main_process and due and not last_epoch:
                _validate(accelerator, config, models, accelerator.unwrap_model(unet), global_step)
            if global_step >= max_train_steps:
                break
            continue
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(keys).generate_state(1)[0]))
        with accelerator.accumulate(unet):
            output = objective(batch, generator=generator)
            meter.add(output)
            accelerator.backward(output.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
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
        if global_step % config.checkpointing_steps == 0:
            save_checkpoint(accelerator, config, output_dir, global_step)
        if global_step >= max_train_steps:
            break

    accelerator.wait_for_everyone()
    weights = output_dir / (LORA_WEIGHT_NAME if config.finetune == "lora" else DIFFFIT_WEIGHT_NAME)
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if config.finetune == "lora":
            save_lora(final_unet, output_dir)
        else:
            save_difffit(final_unet, weights, config.pretrained_model_name_or_path)
        images = _validate(accelerator, config, models, final_unet, global_step) if config.validation_prompt else []
        save_model_card(config, output_dir, global_step, images)
        if config.push_to_hub:
            push_training_output(config, output_dir, len(images))
    accelerator.wait_for_everyone()  # the other processes wait while the main one saves and validates
    accelerator.end_training()
    return TrainingResult(output_dir, weights, global_step, logs)


def _epoch_batches(
    dataloader: torch.utils.data.DataLoader,
    sampler: EpochBatchSampler,
    epochs: range,
    per_epoch: int,
    seed: int,
    process_index: int,
) -> Iterator[tuple[int, list[int] | None, dict[str, torch.Tensor] | None]]:
    """`(epoch, noise keys, batch)` of map-style data, the first `per_epoch` micro-batches of each epoch (from
    `sampler.skip` in the first), keyed `(seed, epoch, index, process_index)`; `(epoch, None, None)` ends an epoch."""
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for index, batch in enumerate(dataloader, start=sampler.skip):
            if index >= per_epoch:
                break
            yield epoch, [seed, epoch, index, process_index], batch
        yield epoch, None, None


def _optimizer(config: TrainingConfig, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    return optimizer_class(
        params,
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
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


def _validate(accelerator: Any, config: TrainingConfig, models: dict, unet: Any, step: int) -> list[PIL.Image.Image]:
    """Generates `--num_validation_images` for the prompt, saves them under output_dir/validation, logs them."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        config.pretrained_model_name_or_path,
        unet=unet,
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=models["tokenizer"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        revision=config.revision,
        variant=config.variant,
        cache_dir=config.cache_dir,
        dtype=models["vae"].dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad(), accelerator.autocast():
        images = pipe(
            [config.validation_prompt] * config.num_validation_images,
            num_inference_steps=config.num_validation_inference_steps,
            guidance_scale=config.validation_guidance_scale,
            height=config.resolution,
            width=config.resolution,
            generator=generator,
        ).images
    unet.train(was_training)
    folder = Path(config.output_dir) / "validation"
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

            logged = [wandb.Image(im, caption=config.validation_prompt) for im in images]
            tracker.log({"validation": logged}, step=step)
    return images


def _to_serialisable(config: TrainingConfig) -> dict[str, Any]:
    return {k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool))}
