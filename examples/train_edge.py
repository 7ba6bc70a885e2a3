#!/usr/bin/env python
"""Fine-tune Stable Diffusion with the EDGE objective (arXiv 2509.15472) and save a diffusers-format LoRA.

The loop lives in `diffusers_edge.training` (the demo and `diffusers-edge train` reuse it); this file is its
diffusers-style front. The flags are the fields of `diffusers_edge.training.TrainingConfig`; every flag and its
default is described in docs/training.md.

Example:
    accelerate launch examples/train_edge.py \\
        --pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --dataset_name=nlphuji/flickr30k --caption_column=caption \\
        --resolution=512 --train_batch_size=16 --gradient_checkpointing --mixed_precision=bf16 \\
        --max_train_steps=2000 --checkpointing_steps=500 --output_dir=edge-lora

    # then
    pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.load_lora_weights("edge-lora")
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers_edge.training import TrainingConfig, train
from diffusers_edge.training import parse_args as _parse_args


def parse_args(argv: Sequence[str] | None = None) -> TrainingConfig:
    """The training flags as a `TrainingConfig` (`argv=None` reads the command line)."""
    return _parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Parses the flags and runs the EDGE fine-tune."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
