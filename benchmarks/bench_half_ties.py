#!/usr/bin/env python
"""How much recall@K half-precision similarity scores lose to the ties their rounding creates.

Builds CLIP-like embeddings (a component shared by every embedding, as CLIP's have, so cosines sit around 0.7 and
differ in the second or third digit), computes the image-text scores in float32, float16 and bfloat16, and reports
`retrieval_recall` on each (ties count pessimistically). The numbers quoted in docs/metrics.md and docs/safety.md
come from the defaults.

Example:
    python benchmarks/bench_half_ties.py --num_images 1000 --texts_per_image 5 --dim 512 --seed 0
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F

from diffusers_edge.metrics import retrieval_recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--texts_per_image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shared", type=float, default=1.5, help="weight of the component every embedding shares")
    parser.add_argument("--signal", type=float, default=0.1, help="weight of a text's own image in its embedding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    n, per, d = args.num_images, args.texts_per_image, args.dim
    shared = F.normalize(torch.randn(d, generator=g), dim=0) * args.shared
    images = F.normalize(shared + F.normalize(torch.randn(n, d, generator=g), dim=1), dim=1)
    noise = torch.randn(n * per, d, generator=g) / d**0.5
    texts = F.normalize(shared + images.repeat_interleave(per, 0) * args.signal + noise, dim=1)
    text_to_image = torch.arange(n).repeat_interleave(per)
    print("| scores computed in | mean cosine | i2t_R@1 | t2i_R@1 | r_mean |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        scores = images.to(dtype) @ texts.to(dtype).T
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the half-precision warning is what this script measures
            r = retrieval_recall(scores, text_to_image, ks=(1, 5, 10))
        name, cosine = str(dtype).removeprefix("torch."), scores.float().mean()
        print(f"| {name} | {cosine:.3f} | {r['i2t_R@1']:.2f} | {r['t2i_R@1']:.2f} | {r['r_mean']:.2f} |")


if __name__ == "__main__":
    main()
