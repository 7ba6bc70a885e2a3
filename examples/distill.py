#!/usr/bin/env python
"""Generate a distilled image-text set with EDGE (arXiv 2509.15472): select prompts, generate, caption, write.

The work lives in `diffusers_edge.commands.distill` (also `diffusers-edge distill`); this file is its
diffusers-style front. Flags and the output layout are described in docs/distill.md.

Example:
    # one GPU (or the CPU)
    python examples/distill.py --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --lora edge-lora --source annotations/flickr30k_train.json --image_root data/flickr30k \\
        --num_pairs 500 --captions_per_image 2 --captioner HuggingFaceTB/SmolVLM-256M-Instruct \\
        --dtype float16 --output_dir flickr-edge-500

    # several GPUs: the shards are split across processes, the result is the same set
    accelerate launch --multi_gpu --num_processes 4 examples/distill.py ...same flags...

    # several CPU processes (accelerate launch --cpu runs only one; see docs/distill.md)
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/distill.py ...same flags...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diffusers_edge.commands.distill import main as _main
from diffusers_edge.commands.distill import parse_args as _parse_args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The distill flags (`argv=None` reads the command line)."""
    return _parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the flags and writes the distilled set."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
