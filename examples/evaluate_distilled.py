#!/usr/bin/env python
"""Evaluate a distilled image-text set (or a coreset baseline) with the MTT-VL / LoRS / EDGE retrieval protocol.

A short front for `diffusers-edge evaluate` (same flags; run with --help). Examples:

    # a distilled set from the Hub against the Flickr30K test split, LoRS protocol, 5 seeds
    python examples/evaluate_distilled.py --distilled me/flickr30k-edge-500 \\
        --test_source nlphuji/flickr30k --split_column split --test_split test --protocol lors --seeds 0 1 2 3 4

    # the random real-pair baseline at the same budget, evaluated by the same code
    python examples/evaluate_distilled.py --baseline random --num_pairs 500 \\
        --train_source nlphuji/flickr30k --test_source nlphuji/flickr30k --split_column split --seeds 0 1 2 3 4
"""

import sys

from diffusers_edge.commands.evaluate import build_parser
from diffusers_edge.commands.evaluate import main as _main


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    """Parses the flags, trains and evaluates the students, prints the table; returns 0."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
