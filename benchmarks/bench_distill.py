#!/usr/bin/env python
"""Images per second of `EDGEPipeline.distill` against a plain `StableDiffusionPipeline` loop on the same components.

Both sides generate the same prompts with the same batch size, steps and per-item CPU generators and produce PIL
images; `distill` adds selection, PNG encoding, Parquet shards, the card and the final `load_dataset`. The ratio
(distill images/s over loop images/s; >= 0.95 expected) says what the bookkeeping costs. A second `distill` run
with a captioner (`captions_per_image=2`) reports the time shares of generation, captioning and writing, taken
from the `DistillProgress` the callback receives.

Runs offline on the tiny random Stable Diffusion of `diffusers_edge.testing` unless given a real model folder.
Medians of `--repeats` alternating runs are reported.

Example:
    python benchmarks/bench_distill.py --num_images 32 --batch_size 8 --num_inference_steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained_model_name_or_path", default=None, help="default: a tiny random SD (offline)")
    parser.add_argument("--captioner", default=None, help="default: a tiny random ViT-BERT captioner (offline)")
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_inference_steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `fn()`.

    On a shared machine the wall time swings with other jobs; the process CPU time (one torch thread) does not, so
    both are reported.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_loop(pipe, prompts: list[str], seeds: list[int], batch_size: int, steps: int) -> None:
    """A plain StableDiffusionPipeline loop over `prompts` (PIL output, per-item CPU generators)."""
    for first in range(0, len(prompts), batch_size):
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[first : first + batch_size]]
        pipe(prompts[first : first + batch_size], generator=generators, num_inference_steps=steps, output_type="pil")


def main(argv: list[str] | None = None) -> None:
    from diffusers import StableDiffusionPipeline

    from diffusers_edge.captioning import Captioner
    from diffusers_edge.distillation import item_seed
    from diffusers_edge.pipeline_edge import EDGEPipeline
    from diffusers_edge.shapes.dataset import load_captioned_shapes
    from diffusers_edge.testing import save_tiny_captioner, save_tiny_stable_diffusion

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    model = args.pretrained_model_name_or_path or save_tiny_stable_diffusion(work / "sd")
    source = load_captioned_shapes(num_train=max(args.num_images, 64), num_val=0, num_test=0)["train"]
    edge = EDGEPipeline.from_pretrained(model).to(args.device)
    sd_parts = {k: v for k, v in edge.components.items() if k in _sd_keys()}
    plain = StableDiffusionPipeline(**sd_parts, requires_safety_checker=False).to(args.device)
    for p in (edge, plain):
        p.set_progress_bar_config(disable=True)
    common = {"batch_size": args.batch_size, "num_inference_steps": args.num_inference_steps, "progress": False}

    # the loop generates exactly what distill generates: its plan's prompts and item seeds
    warm = edge.distill(source, args.num_images, captions_per_image=1, output_dir=work / "warm", **common)
    prompts, seeds = warm["prompt"], [item_seed(0, i) for i in range(args.num_images)]
    loop, dist = [], []
    for r in range(args.repeats):
        loop.append(timed(lambda: plain_loop(plain, prompts, seeds, args.batch_size, args.num_inference_steps)))
        dist.append(timed(lambda r=r: edge.distill(source, args.num_images, 1, output_dir=work / f"r{r}", **common)))

    captioner_path = args.captioner or save_tiny_captioner(work / "captioner")
    captioner = Captioner.from_pretrained(captioner_path, device=args.device)
    shares = []
    for r in range(args.repeats):
        reports = []
        start = time.perf_counter()
        edge.distill(
            source, 2 * args.num_images, captions_per_image=2, captioner=captioner, output_dir=work / f"cap{r}",
            callback=reports.append, **common,
        )  # fmt: skip
        wall = time.perf_counter() - start
        last = reports[-1]
        shares.append((last.generation_s / wall, last.captioning_s / wall, last.writing_s / wall, wall))

    print(f"device={args.device} threads={args.threads} images={args.num_images} batch={args.batch_size} "
          f"steps={args.num_inference_steps} repeats={args.repeats} (medians)")  # fmt: skip
    print("| run | images/s (wall) | images/s (process CPU time) |")
    print("|---|---|---|")
    for name, runs in (("StableDiffusionPipeline loop", loop), ("EDGEPipeline.distill (captions_per_image=1)", dist)):
        wall, cpu = (args.num_images / statistics.median(t[i] for t in runs) for i in (0, 1))
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    for i, kind in ((0, "wall"), (1, "CPU time")):
        ratios = [a[i] / b[i] for a, b in zip(loop, dist)]  # back to back pairs: a load spike hits both sides
        listed = ", ".join(f"{x:.3f}" for x in ratios)
        median = statistics.median(ratios)
        print(f"ratio distill/loop images/s by {kind}, per repetition: {listed}; median {median:.3f}")
    med = [statistics.median(s[i] for s in shares) for i in range(4)]
    other = 1.0 - sum(med[:3])
    print()
    print("| distill with captioner (captions_per_image=2) | generation | captioning | writing | other | wall s |")
    print("|---|---|---|---|---|---|")
    print(f"| time share | {med[0]:.1%} | {med[1]:.1%} | {med[2]:.1%} | {other:.1%} | {med[3]:.1f} |")


def _sd_keys() -> set[str]:
    return {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor",
            "image_encoder"}  # fmt: skip


if __name__ == "__main__":
    main()
