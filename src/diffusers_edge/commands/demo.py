"""`diffusers-edge demo`: EDGE end to end, offline, on the embedded captioned-shapes data with the tiny stack.

Fine-tunes the tiny Stable Diffusion with the EDGE objective (LoRA), distills sets at each budget (plain
generation, EDGE with and without caption synthesis, EDGE with k-center prompts), judges them claim by claim,
trains the retrieval student on them and on real-pair baselines, and writes `report.md`, `results.json`,
`samples.png` and the distilled sets. The world is `scenes` (`--shapes_config one_object` for the first one).
About 7 minutes on a 2-core CPU by default; `--quick` is a smoke run of about 1 minute; `--full_study` (three
generation seeds and the loss ablations) about 20 minutes. See docs/demo.md.

Examples:
    $ diffusers-edge demo
    $ diffusers-edge demo --quick --output_dir edge-demo-quick
    $ diffusers-edge demo --full_study
    $ diffusers-edge demo --budgets 100 --seeds 0 1 2 3 4 --max_train_steps 200
"""

from __future__ import annotations

import argparse
import sys

HELP = "run EDGE end to end offline on the embedded shapes data with the tiny stack (about 7 min on a CPU)"


def build_parser() -> argparse.ArgumentParser:
    """The flags of `diffusers-edge demo`: `--quick`, `--full_study` and one flag per `DemoConfig` setting.

    A flag left unset keeps the `DemoConfig` default (or the `--quick` value); the help quotes the defaults from
    `DemoConfig`, where they are written.
    """
    from ..flags import add_flags
    from ..shapes.demo.config import DemoConfig

    parser = argparse.ArgumentParser(
        prog="diffusers-edge demo",
        description="EDGE end to end on the embedded captioned-shapes data with the tiny pretrained stack, offline. "
        "Unset flags take the defaults of the full run (or of --quick).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 pairs, 1 seed, few steps (< 3 min)")
    parser.add_argument("--full_study", action="store_true",
                        help="generation seeds 0 1 2 and the ablation fine-tunes (w/o L_C, w/o L_D): the numbers of "
                        "docs/demo.md; see there for its run time")
    add_flags(parser, DemoConfig, keep_unset=True)
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:  # noqa: F821 - imported lazily below
    """The `DemoConfig` the parsed flags describe (unset flags keep the preset's value)."""
    from ..shapes.demo.config import DemoConfig

    overrides = {key: value for key, value in vars(args).items() if key not in ("quick", "full_study")}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.full_study:
        overrides = {"generation_seeds": [0, 1, 2], "ablations": True} | overrides
    return DemoConfig.quick_preset(**overrides) if args.quick else DemoConfig(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `diffusers-edge demo`; prints where the report is and the EDGE-vs-plain line per budget."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config = config_from_args(build_parser().parse_args(argv))  # checked before the heavy import below

    from ..shapes.demo.run import run_demo

    results = run_demo(config)
    for budget, c in results["comparison"].items():
        edge, plain = c["EDGE r_mean (last)"], c["plain generation r_mean (last)"]
        print(
            f"{budget} pairs: EDGE r_mean {edge['mean']:.1f} ± {edge['std']:.1f} vs plain generation "
            f"{plain['mean']:.1f} ± {plain['std']:.1f}"
        )
    print(f"Report: {config.output_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
