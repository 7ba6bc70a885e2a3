"""Every training setting as one `TrainingConfig` dataclass, the flags generated from it, and their checks.

A `TrainingConfig` field is a flag of `examples/train_edge.py` and `diffusers-edge train` (diffusers' flag names):
`--<field name>`, its default written once on the field, its argument group, help text and choices in the field's
metadata. `build_parser` is generated from the fields, `parse_args` turns the flags back into a `TrainingConfig`, and
`TrainingConfig.to_argv` writes the flags of a config (those that differ from the defaults). See docs/training.md for
every flag, its default and the reason for it.

Example:
    >>> config = parse_args(["--pretrained_model_name_or_path", "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                      "--train_data_dir", "my-images", "--output_dir", "edge-lora"])
    >>> config.finetune, config.contrastive_weight, config.loss_max_timestep
    ('lora', 1.0, 500)
    >>> config.to_argv()[2:]
    ['--train_data_dir', 'my-images']
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields

import torchvision.transforms.functional as TF

from ..clip_features import DEFAULT_CLIP_MODEL
from ..flags import add_flags, flag, flag_type
from .adapters import LORA_TARGET_MODULES
from .objective import CLIP_LOSS_INPUTS, EDGELossConfig

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
# the datasets builder each --train_data_files extension is read with
DATA_FILE_BUILDERS = {".parquet": "parquet", ".tar": "webdataset"}
# torchvision's interpolation modes, named as diffusers' --image_interpolation_mode names them.
INTERPOLATION_MODES = [mode.name.lower() for mode in TF.InterpolationMode]


MODELS, DATA, OPTIMISATION, TUNED = "models", "data", "optimisation", "what is tuned"
OBJECTIVE, OUTPUT = "EDGE objective", "checkpoints, logging, validation, Hub"
LR_SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
DESCRIPTION = "Fine-tune Stable Diffusion with the EDGE objective (arXiv 2509.15472); LoRA in diffusers format."


# the objective's options are EDGELossConfig's fields of the same names: their defaults are written there
_LOSS = EDGELossConfig


@dataclass
class TrainingConfig:
    """Every setting of an EDGE fine-tune; each field is the flag `--<name>` (docs/training.md describes them all).

    Build one directly (`TrainingConfig(pretrained_model_name_or_path=..., ...)`, then `check_args`) or from flags
    with `parse_args`; `train(config)` runs it. The objective's fields (`denoise_weight` ... `noise_offset`) are
    those of `EDGELossConfig` and default to its values; `loss_config()` gives the `EDGELossConfig`.

    Example:
        >>> config = TrainingConfig(pretrained_model_name_or_path="sd", dataset_name="x", rank=8)
        >>> config.to_argv()
        ['--pretrained_model_name_or_path', 'sd', '--dataset_name', 'x', '--rank', '8']
        >>> parse_args(config.to_argv()) == config
        True
    """

    # models
    pretrained_model_name_or_path: str = flag(MODELS, help="Stable Diffusion repo or folder.")
    revision: str | None = flag(MODELS, None, "Revision of the pretrained model on the Hub.")
    variant: str | None = flag(MODELS, None, "Variant of the model files, e.g. fp16.")
    clip_model_name_or_path: str = flag(
        MODELS, DEFAULT_CLIP_MODEL, "Frozen CLIP model whose embedding space the contrastive and diversity losses use."
    )
    # data
    dataset_name: str | None = flag(DATA, None, "Hub dataset or local folder for load_dataset.")
    dataset_config_name: str | None = flag(DATA, None, "The dataset's config, if it has several.")
    train_data_dir: str | None = flag(DATA, None, "An imagefolder with metadata.jsonl captions.")
    train_data_files: list[str] | None = flag(
        DATA,
        None,
        "Local Parquet files or WebDataset .tar shards (paths or globs, all of one kind), e.g. CC3M's shards.",
    )
    streaming: bool = flag(
        DATA,
        False,
        "Stream the data (load_dataset(..., streaming=True)) instead of loading it; needs --max_train_steps.",
    )
    shuffle_buffer_size: int = flag(DATA, 1000, "Examples in the shuffle buffer of a streamed source.")
    image_column: str = flag(DATA, "image", "Column holding the images.")
    caption_column: str | None = flag(
        DATA, None, "Column holding a caption or a list of captions (default: the first of captions, text, caption)."
    )
    max_train_samples: int | None = flag(DATA, None, "Keep only the first N training images.")
    cache_dir: str | None = flag(DATA, None, "Where downloaded models and datasets are stored.")
    resolution: int = flag(DATA, 512, "Training images are resized and cropped to this.")
    image_interpolation_mode: str = flag(
        DATA,
        "lanczos",
        "torchvision interpolation used to resize the training images (diffusers' default: lanczos).",
        choices=INTERPOLATION_MODES,
    )
    center_crop: bool = flag(DATA, False, "Center-crop instead of a random crop.")
    random_flip: bool = flag(DATA, False, "Randomly flip images horizontally.")
    dataloader_num_workers: int = flag(DATA, 0, "Data loading subprocesses.")
    # optimisation
    train_batch_size: int = flag(OPTIMISATION, 16, "Batch size per device.")
    num_train_epochs: int = flag(OPTIMISATION, 10, "Epochs (10 in the released EDGE code).")
    max_train_steps: int | None = flag(OPTIMISATION, None, "Total optimiser steps; overrides epochs.")
    gradient_accumulation_steps: int = flag(OPTIMISATION, 1, "Batches per optimiser step.")
    gradient_checkpointing: bool = flag(OPTIMISATION, False, "Checkpoint the UNet and the VAE decoder (memory).")
    learning_rate: float = flag(OPTIMISATION, 1e-4, "Learning rate after warm-up.")
    scale_lr: bool = flag(OPTIMISATION, False, "Multiply the lr by accumulation x batch x processes.")
    lr_scheduler: str = flag(OPTIMISATION, "constant", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = flag(OPTIMISATION, 0, "Warm-up steps of the lr scheduler.")
    optimizer: str = flag(OPTIMISATION, "adamw", "sgd: released code.", choices=["adamw", "sgd"])
    adam_beta1: float = flag(OPTIMISATION, 0.9)
    adam_beta2: float = flag(OPTIMISATION, 0.999)
    adam_weight_decay: float = flag(OPTIMISATION, 1e-2)
    adam_epsilon: float = flag(OPTIMISATION, 1e-8)
    max_grad_norm: float = flag(OPTIMISATION, 1.0, "Gradient clipping norm.")
    seed: int = flag(OPTIMISATION, 0, "Seeds data order, captions, crops, noise and timesteps.")
    mixed_precision: str | None = flag(OPTIMISATION, None, choices=["no", "fp16", "bf16"])
    allow_tf32: bool = flag(OPTIMISATION, False, "Allow TF32 matmuls on Ampere or newer GPUs.")
    use_8bit_adam: bool = flag(OPTIMISATION, False, "bitsandbytes' 8-bit AdamW (needs bitsandbytes).")
    enable_xformers_memory_efficient_attention: bool = flag(
        OPTIMISATION, False, "xformers attention in the UNet (needs xformers)."
    )
    local_rank: int = flag(OPTIMISATION, -1, "Distributed: local_rank (LOCAL_RANK wins).")
    # what is tuned
    finetune: str = flag(
        TUNED,
        "lora",
        "lora: peft LoRA on the attention projections; difffit: the UNet's biases and norms (released code).",
        choices=["lora", "difffit"],
    )
    rank: int = flag(TUNED, 4, "LoRA rank.")
    lora_layers: str = flag(
        TUNED,
        ",".join(LORA_TARGET_MODULES),
        "Comma-separated UNet modules LoRA adapts (peft target_modules, matched by name suffix), e.g. "
        '"attn2.to_k,attn2.to_v" for the cross-attention keys and values only, as Custom Diffusion tunes.',
    )
    lora_alpha: float | None = flag(TUNED, None, "LoRA alpha (default: the rank, scale 1).")
    use_dora: bool = flag(TUNED, False, "Weight-decomposed LoRA (DoRA).")
    # the EDGE objective
    denoise_weight: float = flag(OBJECTIVE, _LOSS.denoise_weight, "Denoising MSE weight (0: released code).")
    contrastive_weight: float = flag(OBJECTIVE, _LOSS.contrastive_weight, "Weight of L_C.")
    diversity_weight: float = flag(OBJECTIVE, _LOSS.diversity_weight, "Weight of L_D (paper: lambda = 1).")
    temperature: float = flag(OBJECTIVE, _LOSS.temperature, "L_C temperature.")
    snr_gamma: float | None = flag(
        OBJECTIVE,
        _LOSS.snr_gamma,
        "Min-SNR weighting of the denoising MSE (arXiv 2303.09556); 5.0 is the recommended value. Default: off.",
    )
    noise_offset: float = flag(OBJECTIVE, _LOSS.noise_offset, "Scale of offset noise (0: off).")
    prediction_type: str | None = flag(
        OBJECTIVE,
        None,
        "Train for this prediction type (default: the scheduler's prediction_type).",
        choices=["epsilon", "v_prediction"],
    )
    loss_max_timestep: int = flag(
        OBJECTIVE,
        _LOSS.loss_max_timestep,
        "Only samples at timestep <= this enter the CLIP losses (>= 999: all, as the released code).",
    )
    clip_batch_size: int | None = flag(
        OBJECTIVE, _LOSS.clip_batch_size, "Cap on the CLIP losses' sub-batch (memory)."
    )
    clip_loss_inputs: str = flag(
        OBJECTIVE,
        _LOSS.clip_loss_inputs,
        "What L_C/L_D see: one-step x0 of the noisy batch (paper) or the model's own samples from noise.",
        choices=CLIP_LOSS_INPUTS,
    )
    rollout_steps: int = flag(OBJECTIVE, _LOSS.rollout_steps, "DDIM steps of a rollout (rollout inputs).")
    rollout_guidance_scale: float = flag(
        OBJECTIVE, _LOSS.rollout_guidance_scale, "Classifier-free guidance of a rollout."
    )
    loss_resolution: int | None = flag(
        OBJECTIVE, _LOSS.loss_resolution, "Decode x0 at this side for the CLIP losses (memory)."
    )
    caption_dropout: float = flag(
        OBJECTIVE, 0.1, "Fraction of captions replaced by '' for the UNet (keeps classifier-free guidance working)."
    )
    # checkpoints, logging, validation, Hub
    output_dir: str = flag(OUTPUT, "edge-lora", "Where weights, checkpoints and logs go.")
    logging_dir: str = flag(OUTPUT, "logs", "Tracker folder, relative to output_dir.")
    report_to: str = flag(
        OUTPUT,
        "tensorboard",
        "Accelerate tracker(s), comma-separated: tensorboard (default, skipped when not installed), wandb, "
        "comet_ml, mlflow, ...; 'all' (every installed one) or 'none'.",
    )
    tracker_project_name: str = flag(OUTPUT, "diffusers-edge")
    checkpointing_steps: int = flag(OUTPUT, 500, "Save a resumable state every N steps.")
    checkpoints_total_limit: int | None = flag(OUTPUT, None, "Keep at most N checkpoints.")
    resume_from_checkpoint: str | None = flag(OUTPUT, None, "A checkpoint folder, or 'latest' in output_dir.")
    validation_prompt: str | None = flag(OUTPUT, None, "Prompt for validation images.")
    num_validation_images: int = flag(OUTPUT, 4)
    validation_epochs: int = flag(OUTPUT, 1, "Validate every N epochs (and at the end).")
    num_validation_inference_steps: int = flag(OUTPUT, 30)
    validation_guidance_scale: float = flag(OUTPUT, 7.5)
    push_to_hub: bool = flag(OUTPUT, False, "Upload output_dir to the Hub at the end.")
    hub_model_id: str | None = flag(OUTPUT, None, "Hub repo (default: the output_dir name).")
    hub_token: str | None = flag(OUTPUT, None, "Token for --push_to_hub (default: the logged-in one).")

    def loss_config(self) -> EDGELossConfig:
        """The objective's options: this config's fields that `EDGELossConfig` has.

        Example:
            >>> TrainingConfig(pretrained_model_name_or_path="sd", temperature=0.05).loss_config().temperature
            0.05
        """
        return EDGELossConfig(**{f.name: getattr(self, f.name) for f in fields(EDGELossConfig)})

    def to_argv(self) -> list[str]:
        """The flags that give this config: the required one and every field that differs from its default.

        `parse_args(config.to_argv()) == config`. Raises `ValueError` for a value no flag can give (`None` where
        the default is not, `False` for a flag that is off by default).

        Example:
            >>> TrainingConfig(pretrained_model_name_or_path="sd", center_crop=True, seed=3).to_argv()
            ['--pretrained_model_name_or_path', 'sd', '--center_crop', '--seed', '3']
        """
        argv = []
        for config_field in fields(self):
            value = getattr(self, config_field.name)
            if config_field.default is not MISSING and value == config_field.default:
                continue
            flag = f"--{config_field.name}"
            if flag_type(TrainingConfig, config_field) is bool:
                if value is not True:
                    raise ValueError(f"TrainingConfig.{config_field.name}={value!r} cannot be written as {flag}.")
                argv.append(flag)
            elif value is None:
                raise ValueError(f"TrainingConfig.{config_field.name}=None has no flag (its default is not None).")
            elif isinstance(value, list):
                argv += [flag, *map(str, value)]
            else:
                text = str(value)  # `--flag=-x`: a value that starts with "-" must not read as a flag
                argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
        return argv




def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `examples/train_edge.py` and `diffusers-edge train`: one flag per `TrainingConfig`
    field, in its argument group, with its default, help text and choices (diffusers' flag names).

    Args:
        prog: the program name in usage and error lines (default: the running script's name).

    Example:
        >>> build_parser().get_default("rank")
        4
    """
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_flags(parser, TrainingConfig)
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> TrainingConfig:
    """Parses and checks the training flags (`argv=None` reads `sys.argv`; `prog` names the program in errors).

    Example:
        >>> parse_args(["--pretrained_model_name_or_path", "sd", "--dataset_name", "x", "--rank", "8"]).rank
        8
    """
    config = TrainingConfig(**vars(build_parser(prog).parse_args(argv)))
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:  # what the launcher says wins, as in diffusers' scripts
        config.local_rank = env_local_rank
    check_args(config)
    return config


def check_args(config: TrainingConfig) -> None:
    """Raises `ValueError` naming the flag for values that cannot work (called again by `train`)."""
    positive = ["resolution", "train_batch_size", "num_train_epochs", "gradient_accumulation_steps", "rank"]
    positive += ["checkpointing_steps", "num_validation_images", "validation_epochs", "num_validation_inference_steps"]
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(config, name)}.")
    for name in ("max_train_steps", "max_train_samples", "clip_batch_size", "loss_resolution"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ValueError(f"--{name} must be positive when given, got {getattr(config, name)}.")
    for name in ("denoise_weight", "contrastive_weight", "diversity_weight"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(config, name)}.")
    if config.denoise_weight == config.contrastive_weight == config.diversity_weight == 0:
        raise ValueError("all loss weights are 0: nothing would be trained.")
    if not math.isfinite(config.learning_rate) or config.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be a positive finite number, got {config.learning_rate}.")
    if config.temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {config.temperature}.")
    if not 0 <= config.caption_dropout < 1:
        raise ValueError(f"--caption_dropout must be in [0, 1), got {config.caption_dropout}.")
    if config.rollout_steps < 1:
        raise ValueError(f"--rollout_steps must be >= 1, got {config.rollout_steps}.")
    if config.loss_max_timestep < 0:
        raise ValueError(f"--loss_max_timestep must be >= 0, got {config.loss_max_timestep}.")
    if any(not name.strip() for name in config.lora_layers.split(",")):
        raise ValueError(f"--lora_layers must be comma-separated module names, got {config.lora_layers!r}.")
    if config.lora_alpha is not None and config.lora_alpha <= 0:
        raise ValueError(f"--lora_alpha must be positive, got {config.lora_alpha}.")
    sources = [name for name in ("dataset_name", "train_data_dir", "train_data_files") if getattr(config, name)]
    if len(sources) > 1:
        raise ValueError(f"give one data source, not {' and '.join('--' + name for name in sources)}.")
    if config.train_data_files is not None:
        data_files_builder(config.train_data_files)
    if config.shuffle_buffer_size <= 0:
        raise ValueError(f"--shuffle_buffer_size must be positive, got {config.shuffle_buffer_size}.")
    if config.streaming:
        _check_streaming(config)
    if config.snr_gamma is not None and config.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be positive when given, got {config.snr_gamma}.")
    if config.noise_offset < 0:
        raise ValueError(f"--noise_offset must be >= 0, got {config.noise_offset}.")
    if config.use_8bit_adam and config.optimizer != "adamw":
        raise ValueError(f"--use_8bit_adam replaces AdamW; it cannot be combined with --optimizer {config.optimizer}.")
    if config.use_8bit_adam:
        _require_package("--use_8bit_adam", "bitsandbytes")
    if config.enable_xformers_memory_efficient_attention:
        _require_package("--enable_xformers_memory_efficient_attention", "xformers")
    trackers = report_to_trackers(config.report_to)
    if config.hub_token is not None and "wandb" in trackers:
        raise ValueError(
            "--hub_token with --report_to wandb would expose the token in the run's logged config; "
            "log in with `hf auth login` instead (diffusers refuses the same combination)."
        )


def _check_streaming(config: TrainingConfig) -> None:
    if config.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps: a stream has no length, so a run has no epochs.")
    if config.max_train_samples is not None:
        raise ValueError(
            "--max_train_samples cannot be used with --streaming (a stream is read in its own order, not indexed); "
            "give --train_data_files fewer shards, or drop --streaming."
        )
    if config.dataloader_num_workers > 0:
        raise ValueError(
            "--dataloader_num_workers must be 0 with --streaming: the stream's position, which checkpoints record "
            "for an exact resume, is counted in the training process."
        )


def data_files_builder(data_files: Sequence[str]) -> str:
    """The `datasets` builder for `--train_data_files`, from the files' extension: `parquet` for `.parquet`,
    `webdataset` for `.tar`. `ValueError` for no files, another extension, or a mix.

    Example:
        >>> data_files_builder(["cc3m/train-*.tar"])
        'webdataset'
    """
    builders = set()
    for path in data_files:
        extension = os.path.splitext(path)[1].lower()
        if extension not in DATA_FILE_BUILDERS:
            raise ValueError(
                f"--train_data_files {path!r}: cannot tell the format from {extension or 'no extension'!r}; "
                f"give {' or '.join(DATA_FILE_BUILDERS)} files."
            )
        builders.add(DATA_FILE_BUILDERS[extension])
    if len(builders) != 1:
        raise ValueError(f"--train_data_files must all be of one kind, got {sorted(builders) or 'no files'}.")
    return builders.pop()


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
