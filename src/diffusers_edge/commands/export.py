"""`diffusers-edge export`: write a distilled set as the flat JSON + image folder a peer's evaluation code reads.

Example:
    $ diffusers-edge export --distilled flickr-edge-500 --output_dir flickr-edge-500-edge --layout edge
    $ python evaluation/evaluation.py --dataset flickr --distill_ann flickr-edge-500-edge   # in EDGE's repository
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The export flags (`argv=None` reads the command line).

    Example:
        >>> parse_args(["--distilled", "set", "--output_dir", "out", "--layout", "lors"]).benchmark
        'flickr30k'
    """
    from ..data.distilled_export import EXPORT_BENCHMARKS, EXPORT_LAYOUTS

    parser = argparse.ArgumentParser(prog="diffusers-edge export", description=__doc__.split("\n")[0])
    parser.add_argument("--distilled", required=True, help="a distilled-set folder, flat JSON file or Hub id")
    parser.add_argument("--output_dir", required=True, help="the folder to write")
    parser.add_argument(
        "--layout", default="blip", choices=EXPORT_LAYOUTS, help="blip (generic), lors or edge (docs/distill.md 9)"
    )
    parser.add_argument("--benchmark", default="flickr30k", choices=EXPORT_BENCHMARKS, help="names the peers' file")
    parser.add_argument("--json_name", default=None, help="file name of the blip layout (default train.json)")
    parser.add_argument("--image_folder", default="images", help="image sub-folder (blip, lors)")
    parser.add_argument("--image_root", default=None, help="image folder of a JSON --distilled")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Exports the set and prints the JSON file's path and its record count. Returns 0.

    Example:
        >>> main(["--distilled", "flickr-edge-500", "--output_dir", "out", "--layout", "lors"])
        0
    """
    import json

    from ..data.distilled import load_distilled
    from ..data.distilled_export import export_blip_json

    args = parse_args(argv)
    distilled = load_distilled(args.distilled, image_root=args.image_root)
    path = export_blip_json(
        distilled,
        args.output_dir,
        layout=args.layout,
        benchmark=args.benchmark,
        json_name=args.json_name,
        image_folder=args.image_folder,
    )
    records = json.loads(path.read_text(encoding="utf-8"))
    print(f"{path}: {len(records)} pairs, {distilled.num_rows} images ({args.layout} layout)")
    return 0
