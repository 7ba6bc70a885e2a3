"""EDGE fine-tuning of Stable Diffusion: the settings, the objective on one batch and the `accelerate` training loop.

One concept per module:

- `config`: `TrainingConfig` (every setting, each a flag), `build_parser` generated from it, `parse_args`,
  `check_args`;
- `objective`: `EDGELossConfig` and `EDGEObjective`, the EDGE loss on one batch (one-step x0 or rollouts, CLIP);
- `data`: the training split (`load_train_dataset`), seeded items, per-process batches and collation;
- `streaming`: training from a stream (`--streaming`): the stream, its split across processes, its items and the
  position checkpoints record;
- `adapters`: what is tuned (LoRA or DiffFit) and how those weights are saved and loaded;
- `checkpoints`: resumable `checkpoint-N` folders;
- `model_card`: the model card and the Hub upload;
- `loop`: `train(config, dataset=None)`, the loop itself.

Example:
    >>> config = parse_args(["--pretrained_model_name_or_path", "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                      "--train_data_dir", "my-images", "--output_dir", "edge-lora"])
    >>> config.finetune, config.contrastive_weight, config.loss_max_timestep
    ('lora', 1.0, 500)
    >>> result = train(config)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_imports import lazy_exports

# submodule -> the names this package hands on from it (imported at first use)
_SUBMODULES = {
    ".adapters": (
        "DIFFFIT_WEIGHT_NAME", "LORA_TARGET_MODULES", "LORA_WEIGHT_NAME", "add_trainable_parameters", "check_finite",
        "difffit_parameters", "load_difffit_weights", "load_lora_into_unet", "save_difffit", "save_lora",
    ),
    ".checkpoints": (
        "CHECKPOINT_PATTERN", "PARTIAL_SUFFIX", "checkpoint_problem", "checkpoint_step", "list_checkpoints",
        "resolve_checkpoint",
    ),
    ".config": (
        "DATA_FILE_BUILDERS", "TrainingConfig", "build_parser", "check_args", "data_files_builder", "parse_args",
        "report_to_trackers",
    ),
    ".data": (
        "CAPTION_COLUMN_CANDIDATES", "EDGECollator", "EDGETrainItems", "EpochBatchSampler", "as_image_column",
        "load_train_dataset", "load_train_source", "resolve_caption_column", "seeded_random", "train_item",
    ),
    ".loop": ("AccumulatedLoss", "TrainingResult", "check_model_flags", "check_training_finite", "train"),
    ".model_card": ("hub_base_model", "push_training_output", "save_model_card"),
    ".streaming": ("StreamItems", "StreamPosition", "load_train_stream", "split_stream", "stream_batches"),
    ".objective": (
        "CLIP_LOSS_INPUTS", "EDGELossConfig", "EDGELossOutput", "EDGEObjective", "check_clip_model",
        "clip_pixel_values", "empty_caption_states", "predict_x0", "rollout_latents",
    ),
}
_EXPORTS = {name: module for module, names in _SUBMODULES.items() for name in names}
__all__ = [*_EXPORTS]
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .adapters import (
        DIFFFIT_WEIGHT_NAME,
        LORA_TARGET_MODULES,
        LORA_WEIGHT_NAME,
        add_trainable_parameters,
        check_finite,
        difffit_parameters,
        load_difffit_weights,
        load_lora_into_unet,
        save_difffit,
        save_lora,
    )
    from .checkpoints import (
        CHECKPOINT_PATTERN,
        PARTIAL_SUFFIX,
        checkpoint_problem,
        checkpoint_step,
        list_checkpoints,
        resolve_checkpoint,
    )
    from .config import (
        DATA_FILE_BUILDERS,
        TrainingConfig,
        build_parser,
        check_args,
        data_files_builder,
        parse_args,
        report_to_trackers,
    )
    from .data import (
        CAPTION_COLUMN_CANDIDATES,
        EDGECollator,
        EDGETrainItems,
        EpochBatchSampler,
        as_image_column,
        load_train_dataset,
        load_train_source,
        resolve_caption_column,
        seeded_random,
        train_item,
    )
    from .loop import AccumulatedLoss, TrainingResult, check_model_flags, check_training_finite, train
    from .model_card import hub_base_model, push_training_output, save_model_card
    from .objective import (
        CLIP_LOSS_INPUTS,
        EDGELossConfig,
        EDGELossOutput,
        EDGEObjective,
        check_clip_model,
        clip_pixel_values,
        empty_caption_states,
        predict_x0,
        rollout_latents,
    )
    from .streaming import StreamItems, StreamPosition, load_train_stream, split_stream, stream_batches
