#!/usr/bin/env python
"""Prompt selection at CC3M scale: time and peak memory of a streamed pool of 100k, 1M and 3M captions against the
in-memory path.

The benchmark writes a synthetic caption source as local Parquet shards (100,000 rows each; columns `captions`
(one caption per row, 8-14 words drawn with a seeded generator from the tiny CLIP's vocabulary) and `image_id`; no
images, since prompt selection reads only captions) and reads it with `datasets.load_dataset("parquet",
streaming=True)`. For each pool size it measures, each in a fresh subprocess:

* `count`: the counting and fingerprinting pass of `caption_pool` over the stream;
* `embed`: that pass plus embedding every caption with the tiny CLIP of the shipped `scenes` stack into an on-disk
  `EmbeddingStore` (`CaptionPool.embeddings`); `embed (in memory)`: the captions of a `datasets.Dataset` read into
  a list and embedded into one tensor (`embed_captions`), the path a non-streamed source takes;
* `select <method> <k>` (streamed): random / k-center / k-means selection of k prompts from the store plus the
  pass that keeps the chosen captions (`CaptionPool.take`); `(in memory)`: the same selection on the embeddings
  loaded into one tensor, the captions held in a list. Both must return the same indices; the benchmark checks.

Peak memory: after the process's inputs exist it resets its peak resident set size (`/proc/self/clear_refs` = 5)
and reads `VmHWM` after the stage; "peak extra" is that high-water mark minus the resident size just before, and
"peak" the high-water mark itself (the imports, the tiny CLIP and an opened stream take about 0.9 GiB before any
stage). The peak extra of one stage varies between runs by a few hundred MiB with how the allocator reuses freed
chunks; read it as a bound. Times are wall seconds of one run on one torch thread.

Example:
    python benchmarks/bench_scale.py --sizes 100000 1000000 3000000 --budgets 500 1000 --work_dir /tmp/scale \
        --json bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHARD_ROWS = 100_000
METHODS = ("random", "kcenter", "kmeans")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--in_memory_max", type=int, default=1_000_000, help="largest pool run in memory too")
    parser.add_argument("--work_dir", default="bench-scale", help="shards and embedding stores (GBs at 3M)")
    parser.add_argument("--clip_model", default=None, help="default: the tiny CLIP of the shipped scenes stack")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--only_selection", action="store_true",
                        help="skip the count and embedding stages (their stores exist from an earlier run)")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # a child process's one measurement
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- the source


def write_shards(work_dir: Path, total: int, clip_model: str) -> list[str]:
    """Parquet shards of `total` synthetic captions (written once, reused by every size: a pool is a prefix)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import CLIPTokenizer

    folder = work_dir / "source"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = sorted(w.removesuffix("</w>") for w in CLIPTokenizer.from_pretrained(clip_model).get_vocab()
                   if w.endswith("</w>") and w[:-4].isalpha())  # fmt: skip
    paths = []
    for shard in range(-(-total // SHARD_ROWS)):
        path = folder / f"shard-{shard:05d}.parquet"
        paths.append(str(path))
        if path.is_file():
            continue
        rng = np.random.default_rng(shard)
        lengths = rng.integers(8, 15, size=SHARD_ROWS)
        words = rng.integers(len(vocab), size=int(lengths.sum()))
        ends = np.cumsum(lengths)
        captions = [[" ".join(vocab[w] for w in words[e - n : e])] for n, e in zip(lengths, ends)]
        ids = [str(shard * SHARD_ROWS + i) for i in range(SHARD_ROWS)]
        table = pa.table({"captions": pa.array(captions, pa.list_(pa.string())), "image_id": ids})
        pq.write_table(table, str(path) + ".tmp")
        Path(str(path) + ".tmp").replace(path)
    return paths


def stream(work_dir: Path, size: int):
    import datasets

    files = sorted(str(p) for p in (work_dir / "source").glob("shard-*.parquet"))[: size // SHARD_ROWS]
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)


# ----------------------------------------------------------------------------------------------- one stage


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_stage(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; returns seconds, peak and peak extra (MiB) and the indices chosen."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from diffusers_edge.caption_pool import caption_pool
    from diffusers_edge.selection import select_indices

    torch.set_num_threads(1)
    work_dir, size = Path(args.work_dir), args.size
    model = CLIPModel.from_pretrained(args.clip_model).eval()
    processor = CLIPProcessor.from_pretrained(args.clip_model)
    cache = work_dir / "stores"
    source = stream(work_dir, size)
    prepared = {}
    if args.stage.endswith("memory"):  # a non-streamed Dataset (Arrow, memory-mapped), as distill gets it
        import datasets

        files = [str(p) for p in sorted((work_dir / "source").glob("shard-*.parquet"))[: size // SHARD_ROWS]]
        held = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(work_dir / "arrow"))
    if args.stage.startswith("select"):
        pool = caption_pool(source)  # the counting pass, timed by the `count` stage
        store = pool.embeddings(model, processor, cache_dir=cache, progress=False)
        prepared["embeddings"] = None if args.method == "random" else store
        prepared["pool"] = pool
        if args.stage == "select-memory":  # captions in a list, embeddings in a tensor (the same numbers)
            prepared["pool"] = caption_pool(held)
            prepared["embeddings"] = None if args.method == "random" else store.load()

    def stage():
        if args.stage == "count":
            return caption_pool(source).size
        if args.stage == "embed":
            return len(caption_pool(source).embeddings(model, processor, cache_dir=cache, progress=False))
        if args.stage == "embed-memory":
            return len(caption_pool(held).embeddings(model, processor, progress=False))
        chosen = select_indices(size, args.budget, args.method, seed=0, embeddings=prepared["embeddings"])
        prepared["pool"].take(chosen)
        return chosen

    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    out = stage()
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    return {"seconds": seconds, "peak_mib": peak / 1024, "peak_extra_mib": (peak - before) / 1024,
            "chosen": out if isinstance(out, list) else None}  # fmt: skip


def child(args: argparse.Namespace, stage: str, size: int, method: str | None = None, budget: int | None = None):
    argv = [sys.executable, __file__, "--stage", stage, "--size", str(size), "--work_dir", args.work_dir,
            "--clip_model", args.clip_model]  # fmt: skip
    if method is not None:
        argv += ["--method", method, "--budget", str(budget)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} {size} {method} {budget} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.clip_model is None:
        from diffusers_edge.shapes.stack import shapes_stack_path

        args.clip_model = str(shapes_stack_path("clip", config="scenes"))
    if args.stage is not None:
        print(json.dumps(run_stage(args)))
        return
    if any(size % SHARD_ROWS for size in args.sizes):
        raise SystemExit(f"--sizes must be multiples of {SHARD_ROWS} (the shard size).")
    write_shards(Path(args.work_dir), max(args.sizes), args.clip_model)
    results = []

    def record(row: dict) -> None:
        results.append(row)
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items() if k != "chosen"}
        print(json.dumps(shown), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    sizes = sorted(args.sizes)
    for size in sizes:
        in_memory = size <= args.in_memory_max
        for stage in ("count", "embed") + (("embed-memory",) if size == sizes[0] else ()):
            if not args.only_selection:
                record({"size": size, "stage": stage, **child(args, stage, size)})
        for method in args.methods:
            for budget in args.budgets:
                streamed = child(args, "select-store", size, method, budget)
                record({"size": size, "stage": f"select {method} {budget}", **streamed})
                if in_memory:
                    held = child(args, "select-memory", size, method, budget)
                    held["same_selection"] = held["chosen"] == streamed["chosen"]
                    record({"size": size, "stage": f"select {method} {budget} (in memory)", **held})
                    if not held["same_selection"]:
                        raise SystemExit(f"{method} {budget} at {size}: the store and the tensor chose differently")
    for size in sizes[1:]:  # last: the in-memory embedding of the larger pools only adds a comparison
        if size <= args.in_memory_max and not args.only_selection:
            record({"size": size, "stage": "embed-memory", **child(args, "embed-memory", size)})
    print(markdown(results))


def markdown(results: list[dict]) -> str:
    lines = ["| pool | stage | seconds | peak MiB | peak extra MiB |", "|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['size']:,} | {row['stage']} | {row['seconds']:.1f} | {row['peak_mib']:.0f} | "
                     f"{row['peak_extra_mib']:.0f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
