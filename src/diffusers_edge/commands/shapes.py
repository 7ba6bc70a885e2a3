"""`diffusers-edge shapes`: build the embedded captioned-shapes dataset, print its statistics, write a preview.

Writes `<output_dir>/preview.png` (a grid of 16 training images, each with its first caption underneath) and
`<output_dir>/statistics.json` (split sizes, attribute coverage, vocabulary, example captions, timing).

Example:
    $ diffusers-edge shapes --output_dir shapes-preview
    $ diffusers-edge shapes --config two_objects --seed 1 --num_train 2000 --output_dir shapes-two
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, ImageDraw, ImageFont

PREVIEW_IMAGES = 16
_ZOOM = 4  # 32 px images shown at 128 px
_TILE_WIDTH = 170
_TEXT_LINES = 3
_LINE_HEIGHT = 13


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the flags of `diffusers-edge shapes`.

    Example:
        >>> parse_args(["--config", "two_objects", "--num_train", "100"]).num_train
        100
    """
    from diffusers_edge.shapes.dataset import CONFIGS

    parser = argparse.ArgumentParser(
        prog="diffusers-edge shapes",
        description="Build the embedded captioned-shapes dataset, print statistics and write a preview grid.",
    )
    parser.add_argument("--config", choices=list(CONFIGS), default="scenes")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data (pixels and captions)")
    parser.add_argument("--output_dir", default="shapes-preview", help="where preview.png and statistics.json go")
    parser.add_argument("--num_train", type=int, default=5000)
    parser.add_argument("--num_val", type=int, default=500)
    parser.add_argument("--num_test", type=int, default=1000)
    parser.add_argument(
        "--cache_dir", default=None, help="keep the Arrow files here (default: a temporary folder, removed after)"
    )
    return parser.parse_args(argv)


def preview_grid(dataset: datasets.Dataset, num_images: int = PREVIEW_IMAGES, columns: int = 4) -> Image.Image:
    """A grid of the first `num_images` images, enlarged 4x, each with its first caption written underneath.

    Example:
        >>> from diffusers_edge.shapes.dataset import load_captioned_shapes
        >>> preview_grid(load_captioned_shapes(num_train=4, num_val=0, num_test=0)["train"], 4, columns=2).size
        (340, 362)
    """
    num_images = min(num_images, dataset.num_rows)
    rows = -(-num_images // columns)
    font = ImageFont.load_default(size=11)
    tile_height = dataset[0]["image"].height * _ZOOM + 8 + _TEXT_LINES * _LINE_HEIGHT + 6
    grid = Image.new("RGB", (columns * _TILE_WIDTH, rows * tile_height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(num_images):
        example = dataset[i]
        image = example["image"].convert("RGB")
        image = image.resize((image.width * _ZOOM, image.height * _ZOOM), Image.Resampling.NEAREST)
        x, y = (i % columns) * _TILE_WIDTH, (i // columns) * tile_height
        grid.paste(image, (x + (_TILE_WIDTH - image.width) // 2, y + 4))
        lines = textwrap.wrap(example["captions"][0], width=28)[:_TEXT_LINES]
        for j, line in enumerate(lines):
            draw.text((x + 4, y + image.height + 8 + j * _LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return grid


def main(argv: list[str] | None = None) -> int:
    """Runs `diffusers-edge shapes`; returns the exit status.

    Example:
        >>> main(["--num_train", "200", "--num_test", "50", "--output_dir", "out"])  # doctest: +SKIP
        0
    """
    from diffusers_edge.shapes.dataset import load_captioned_shapes, shapes_statistics

    args = parse_args(argv)
    start = time.perf_counter()
    dataset = load_captioned_shapes(
        args.config,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        cache_dir=args.cache_dir,
    )
    seconds = time.perf_counter() - start
    stats: dict[str, Any] = {"seed": args.seed, **shapes_statistics(dataset, args.config, subset_size=100)}
    stats["generation_seconds"] = round(seconds, 2)
    train = dataset["train"]
    stats["examples"] = [{"image_id": train[i]["image_id"], "captions": train[i]["captions"]} for i in range(3)]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    preview_grid(train).save(output_dir / "preview.png")
    (output_dir / "statistics.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(_report(stats, output_dir))
    return 0


def _report(stats: dict[str, Any], output_dir: Path) -> str:
    lines = [f"captioned-shapes {stats['config']} (seed {stats['seed']}), built in {stats['generation_seconds']} s"]
    for split, s in stats["splits"].items():
        lines.append(
            f"  {split:<10} {s['images']:>6} images  {s['captions']:>6} captions  "
            f"{s['combinations']:>5} / {stats['possible_combinations']} attribute combinations"
        )
    lines.append(
        f"  a random {stats['train_subset_size']}-image subset of train covers "
        f"{stats['train_subset_combinations']} / {stats['possible_combinations']} combinations"
    )
    if "t2i_r1_ceiling_test" in stats:
        lines.append(f"  text-to-image R@1 ceiling on test (attribute ties): {stats['t2i_r1_ceiling_test']:.1f}%")
    lines.append(f"  caption vocabulary: {stats['vocabulary_size']} words ({stats['words_used']} used)")
    for example in stats["examples"]:
        lines.append(f"  {example['image_id']}:")
        lines.extend(f"    {caption}" for caption in example["captions"])
    lines.append(f"wrote {output_dir / 'preview.png'} and {output_dir / 'statistics.json'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
