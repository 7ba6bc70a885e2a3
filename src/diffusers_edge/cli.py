"""The `diffusers-edge` console command.

Each subcommand lives in its own module under `diffusers_edge.commands` and exposes `main(argv)`; this file only
dispatches, importing the subcommand lazily so that `diffusers-edge --help` stays fast.

Example:
    $ diffusers-edge shapes --output_dir shapes-preview
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": (
        "diffusers_edge.commands.evaluate",
        "train the retrieval student on a distilled set or a baseline; report recall@K",
    ),
    "shapes": ("diffusers_edge.commands.shapes", "build the embedded captioned-shapes dataset, print statistics"),
    "demo": ("diffusers_edge.commands.demo", "run EDGE end to end on the embedded shapes data, offline, on a CPU"),
    "distill": ("diffusers_edge.commands.distill", "generate a distilled image-text set (EDGEPipeline.distill)"),
    "export": ("diffusers_edge.commands.export", "write a distilled set as the JSON + images LoRS / EDGE code reads"),
    "train": ("diffusers_edge.commands.train", "fine-tune Stable Diffusion with the EDGE objective (LoRA or DiffFit)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="diffusers-edge",
        description="EDGE multimodal dataset distillation. Run `diffusers-edge COMMAND --help` for a command's flags.",
        epilog="commands:\n" + "\n".join(f"  {name:<10} {text}" for name, (_, text) in sorted(COMMANDS.items())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
