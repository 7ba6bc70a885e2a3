"""`diffusers-edge train`: EDGE fine-tuning of Stable Diffusion (the flags of `examples/train_edge.py`, one per
`diffusers_edge.training.TrainingConfig` field).

Runs in this process; for several GPUs launch the module through accelerate instead:
`accelerate launch --multi_gpu --num_processes 4 -m diffusers_edge.commands.train --pretrained_model_name_or_path ...`.

Example:
    $ diffusers-edge train --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --train_data_dir my-captioned-images --output_dir edge-lora
"""

from __future__ import annotations

import sys

from ..training import parse_args, train


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` (default: the command line) into a `TrainingConfig`, trains, prints where the weights went;
    returns 0."""
    result = train(parse_args(sys.argv[1:] if argv is None else argv, prog="diffusers-edge train"))
    print(f"EDGE weights written to {result.weights_path} after {result.global_step} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
