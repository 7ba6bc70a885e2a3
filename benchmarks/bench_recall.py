"""Benchmark of image-text recall@K at COCO test size (issue 3).

Measures, at 5000 images x 25010 texts (the Karpathy COCO test split: 5 captions per image, 10 images with a
6th) and embedding dims 512 (CLIP) and 2304 (NFNet-l0, the student of MTT-VL/LoRS/EDGE):

(a) ``retrieval_recall_from_embeddings`` (never holds the 5000 x 25010 matrix),
(b) ``retrieval_recall`` on the precomputed similarity matrix,
(c) a naive per-query ``argsort`` in the style of BLIP's ``itm_eval``, written here, timed on an evenly spaced
    subsample of queries and extrapolated linearly to all queries (each query costs the same: one argsort of a
    row of fixed length),
(d) torchmetrics ``RetrievalHitRate``, only if torchmetrics is installed (it is not a dependency),

plus the matmul floor: ``2 * n_images * n_texts * d`` FLOPs over the GEMM rate of this machine, measured by
timing the full ``image_embeds @ text_embeds.T`` product in the same run, interleaved with (a).

Peak memory: each measurement runs in its own subprocess. After the inputs exist, the process resets its
peak resident set size (``/proc/self/clear_refs`` = 5, Linux) and reads ``VmHWM`` after one call; "peak extra"
is that high-water mark minus the resident size just before the call. This counts every allocation (torch's
allocator, MKL's packing buffers, numpy), unlike ``tracemalloc``, which sees only Python's allocator. On CUDA
the figure is ``torch.cuda.max_memory_allocated`` above the memory allocated before the call.

Times are medians over ``--reps`` runs; ratios are the medians of per-run ratios measured back to back.

Example:
    python benchmarks/bench_recall.py --dims 512 2304 --reps 3 --json bench_recall.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from diffusers_edge.metrics import retrieval_recall, retrieval_recall_from_embeddings

N_IMAGES = 5000
N_TEXTS = 25010


def coco_like_inputs(
    n_images: int, n_texts: int, dim: int, seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-norm embeddings whose true pairs have cosine ~4.2/sqrt(dim): R@1 in the tens of percent."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.full((n_images,), n_texts // n_images)
    counts[: n_texts % n_images] += 1
    text_to_image = torch.repeat_interleave(torch.arange(n_images), counts)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=1)
    target_cos = 4.2 / math.sqrt(dim)
    noise = math.sqrt(1 / target_cos**2 - 1)
    noise_vectors = torch.nn.functional.normalize(torch.randn(n_texts, dim, generator=g), dim=1)
    texts = torch.nn.functional.normalize(images[text_to_image] + noise * noise_vectors, dim=1)
    return images.to(device), texts.to(device), text_to_image.to(device)


def naive_itm_eval_ranks(
    score_i2t: np.ndarray,
    score_t2i: np.ndarray,
    text_to_image: np.ndarray,
    image_queries: np.ndarray,
    text_queries: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query argsort ranks in the style of BLIP's ``itm_eval`` (0-based; ties in argsort order)."""
    img2txt = [[] for _ in range(score_i2t.shape[0])]
    for j, i in enumerate(text_to_image):
        img2txt[i].append(j)
    i2t = np.empty(len(image_queries), dtype=np.int64)
    for q, i in enumerate(image_queries):
        order = np.argsort(score_i2t[i])[::-1]
        i2t[q] = min(np.where(order == j)[0][0] for j in img2txt[i])
    t2i = np.empty(len(text_queries), dtype=np.int64)
    for q, j in enumerate(text_queries):
        order = np.argsort(score_t2i[j])[::-1]
        t2i[q] = np.where(order == text_to_image[j])[0][0]
    return i2t, t2i


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak extra memory (MiB) of the code inside the ``with`` block; see the module docstring."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _rss_kib("VmHWM") * 1024
        self.mib = (peak - self.base) / 2**20


def _timed(fn, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process."""
    torch.set_grad_enabled(False)
    images, texts, t2i = coco_like_inputs(args.n_images, args.n_texts, args.dim, device=args.device)
    result: dict = {"path": args.path, "dim": args.dim, "device": args.device, "threads": torch.get_num_threads()}
    if args.path == "embeddings":

        def run():
            return retrieval_recall_from_embeddings(images, texts, t2i, chunk_size=args.chunk_size)

        with PeakMemory(args.device) as mem:
            _, recall = _timed(run, args.device)
        result["peak_extra_mib"] = mem.mib
        gemm, ours = [], []
        for _ in range(args.reps):
            t, product = _timed(lambda: images @ texts.T, args.device)
            gemm.append(t)
            del product
            ours.append(_timed(run, args.device)[0])
        result.update(recall=recall, times=ours, gemm_times=gemm)
        return result

    # (b) and (c) share one process and alternate, so their ratio is measured under the same machine load.
    similarity = images @ texts.T
    # naive: BLIP holds both score matrices (i2t and its transpose) as numpy arrays
    score_i2t = similarity.cpu().numpy()
    score_t2i = np.ascontiguousarray(score_i2t.T)
    text_to_image = t2i.cpu().numpy()
    image_queries = np.linspace(0, args.n_images - 1, args.naive_image_queries).astype(np.int64)
    text_queries = np.linspace(0, args.n_texts - 1, args.naive_text_queries).astype(np.int64)

    def ours():
        return retrieval_recall(similarity, t2i, chunk_size=args.chunk_size)

    def naive_images():
        return naive_itm_eval_ranks(score_i2t, score_t2i, text_to_image, image_queries, text_queries[:0])[0]

    def naive_texts():
        return naive_itm_eval_ranks(score_i2t, score_t2i, text_to_image, image_queries[:0], text_queries)[1]

    with PeakMemory(args.device) as mem:
        _, recall = _timed(ours, args.device)
    with PeakMemory("cpu") as naive_mem:
        i2t_rank = naive_images()
        t2i_rank = naive_texts()
    times, naive_times, ratios = [], [], []
    for _ in range(args.reps):
        t_ours = _timed(ours, args.device)[0]
        t_img = _timed(naive_images, "cpu")[0]
        t_txt = _timed(naive_texts, "cpu")[0]
        # linear extrapolation to all queries: every query of a direction costs one argsort of a fixed-length row
        t_naive = t_img * args.n_images / len(image_queries) + t_txt * args.n_texts / len(text_queries)
        times.append(t_ours)
        naive_times.append(t_naive)
        ratios.append(t_naive / t_ours)
    result.update(
        peak_extra_mib=mem.mib,
        naive_peak_extra_mib=naive_mem.mib,
        recall=recall,
        times=times,
        naive_times_extrapolated=naive_times,
        naive_over_similarity=ratios,
        image_queries=len(image_queries),
        text_queries=len(text_queries),
        subsample_i2t_R1=100 * float(np.mean(i2t_rank < 1)),
        subsample_t2i_R1=100 * float(np.mean(t2i_rank < 1)),
    )
    return result


def run_child(args: argparse.Namespace, path: str, dim: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        path,
        "--dim",
        str(dim),
        "--n-images",
        str(args.n_images),
        "--n-texts",
        str(args.n_texts),
        "--reps",
        str(args.reps),
        "--device",
        args.device,
        "--naive-image-queries",
        str(args.naive_image_queries),
        "--naive-text-queries",
        str(args.naive_text_queries),
    ]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2304])
    parser.add_argument("--n-images", type=int, default=N_IMAGES)
    parser.add_argument("--n-texts", type=int, default=N_TEXTS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="query rows per block (default: automatic)")
    parser.add_argument("--naive-image-queries", type=int, default=1000)
    parser.add_argument("--naive-text-queries", type=int, default=5000)
    parser.add_argument("--json", default=None, help="write all measurements here")
    parser.add_argument("--child", choices=["embeddings", "similarity"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.path = args.child
        print(json.dumps(child(args)))
        return

    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, ", end="")
    print(f"{args.n_images} images x {args.n_texts} texts, reps {args.reps}")
    if importlib.util.find_spec("torchmetrics") is None:
        print("(d) torchmetrics RetrievalHitRate: skipped, torchmetrics is not installed")
    else:
        print("(d) torchmetrics is installed but this benchmark does not time it (it needs one index row per pair)")
    report = {"n_images": args.n_images, "n_texts": args.n_texts, "device": args.device, "rows": []}
    for dim in args.dims:
        emb = run_child(args, "embeddings", dim)
        sim = run_child(args, "similarity", dim)
        flops = 2 * args.n_images * args.n_texts * dim
        gemm = statistics.median(emb["gemm_times"])
        row = {
            "dim": dim,
            "embeddings_s": statistics.median(emb["times"]),
            "similarity_s": statistics.median(sim["times"]),
            "naive_s_extrapolated": statistics.median(sim["naive_times_extrapolated"]),
            "naive_over_similarity": statistics.median(sim["naive_over_similarity"]),
            "gemm_s": gemm,
            "gemm_gflops": flops / gemm / 1e9,
            "embeddings_over_floor": statistics.median(t / g for t, g in zip(emb["times"], emb["gemm_times"])),
            "embeddings_peak_extra_mib": emb["peak_extra_mib"],
            "similarity_peak_extra_mib": sim["peak_extra_mib"],
            "naive_peak_extra_mib": sim["naive_peak_extra_mib"],
            "full_matrix_mib": args.n_images * args.n_texts * 4 / 2**20,
            "recall": sim["recall"],
            "embeddings_equals_similarity": emb["recall"] == sim["recall"],
            "raw": {"embeddings": emb, "similarity": sim},
        }
        report["rows"].append(row)
        rate = f"{row['gemm_gflops']:.1f} GFLOP/s measured, {flops / 1e9:.0f} GFLOP"
        print(f"\nd = {dim}")
        print(f"  matmul floor      {gemm:8.2f} s  ({rate})")
        print(
            f"  (a) embeddings    {row['embeddings_s']:8.2f} s  = {row['embeddings_over_floor']:.2f}x floor, "
            f"peak extra {emb['peak_extra_mib']:.0f} MiB"
        )
        print(
            f"  (b) similarity    {row['similarity_s']:8.2f} s  peak extra {sim['peak_extra_mib']:.0f} MiB "
            f"(the matrix itself: {row['full_matrix_mib']:.0f} MiB)"
        )
        print(
            f"  (c) naive argsort {row['naive_s_extrapolated']:8.2f} s  extrapolated from {sim['image_queries']} "
            f"image + {sim['text_queries']} text queries; = {row['naive_over_similarity']:.1f}x (b), "
            f"peak extra {sim['naive_peak_extra_mib']:.0f} MiB (plus its transposed copy of the matrix)"
        )
        print(
            f"  (a) and (b) give identical dicts: {row['embeddings_equals_similarity']}; "
            f"i2t_R@1 {sim['recall']['i2t_R@1']:.2f} t2i_R@1 {sim['recall']['t2i_R@1']:.2f} "
            f"(naive on its subsample: {sim['subsample_i2t_R1']:.2f} / {sim['subsample_t2i_R1']:.2f})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
