"""Time one training epoch and one full evaluation of the retrieval student at Flickr30K test size.

The test side is the Flickr30K Karpathy test split's shape: 1000 images and 5000 captions (random pixels and random
frozen text features of BERT's width: the cost does not depend on the content). The training side is a distilled set
of `--train_pairs` pairs. Frozen text features are computed once per run (timed separately with the tiny BERT; with
`bert-base-uncased` the one-off cost is larger but is paid once, not per epoch).

Reports medians over `--reps` repetitions and throughput (pairs/s for training, images/s for evaluation).

    python benchmarks/bench_eval.py --image_encoder resnet10t --image_size 224 --reps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from diffusers_edge.evaluation import (
    FrozenTextEncoder,
    RetrievalStudent,
    evaluate_student,
    protocol_config,
    train_student,
)
from diffusers_edge.evaluation.trainer import embed_pairs
from diffusers_edge.metrics.retrieval import retrieval_recall_from_embeddings
from diffusers_edge.testing import save_tiny_bert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_encoder", default="resnet10t")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--train_pairs", type=int, default=500)
    parser.add_argument("--test_images", type=int, default=1000)
    parser.add_argument("--texts_per_image", type=int, default=5)
    parser.add_argument("--text_dim", type=int, default=768, help="frozen text feature width (BERT-base: 768)")
    parser.add_argument("--protocol", default="lors")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    return parser.parse_args(argv)


def _median_seconds(fn, reps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    size = args.image_size
    config = protocol_config(args.protocol, epochs=1, eval_every=1, image_size=size)
    train_images = torch.randint(0, 256, (args.train_pairs, 3, size, size), dtype=torch.uint8, generator=generator)
    train_features = torch.randn(args.train_pairs, args.text_dim, generator=generator)
    test_images = torch.randint(0, 256, (args.test_images, 3, size, size), dtype=torch.uint8, generator=generator)
    num_texts = args.test_images * args.texts_per_image
    test_features = torch.randn(num_texts, args.text_dim, generator=generator)
    text_to_image = torch.arange(args.test_images).repeat_interleave(args.texts_per_image)
    student = RetrievalStudent.from_timm(args.image_encoder, text_dim=args.text_dim)

    def epoch():
        train_student(student, train_images, train_features, torch.arange(args.train_pairs), config, progress=False)

    def evaluation():
        evaluate_student(student, test_images, test_features, text_to_image, config)

    epoch_s, epoch_all = _median_seconds(epoch, args.reps)
    eval_s, eval_all = _median_seconds(evaluation, args.reps)
    image_embeds, text_embeds = embed_pairs(student, test_images, test_features, config)
    recall_s, _ = _median_seconds(
        lambda: retrieval_recall_from_embeddings(image_embeds, text_embeds, text_to_image, normalize=False), args.reps
    )
    with tempfile.TemporaryDirectory() as folder:
        texts = FrozenTextEncoder(save_tiny_bert(folder))
        captions = [f"a {c} {s} at the {p}" for c in ("red", "blue") for s in ("circle", "square")
                    for p in ("top", "left")] * (num_texts // 8 + 1)  # fmt: skip
        text_s, _ = _median_seconds(lambda: texts.encode(captions[:num_texts]), 1)
    numbers = {
        "image_encoder": args.image_encoder,
        "image_size": size,
        "image_features": int(student.image_encoder.num_features),
        "threads": torch.get_num_threads(),
        "train_pairs": args.train_pairs,
        "batch_size": config.batch_size,
        "epoch_seconds_median": epoch_s,
        "epoch_seconds_all": epoch_all,
        "train_pairs_per_second": args.train_pairs / epoch_s,
        "test_images": args.test_images,
        "test_texts": num_texts,
        "evaluation_seconds_median": eval_s,
        "evaluation_seconds_all": eval_all,
        "evaluation_images_per_second": args.test_images / eval_s,
        "recall_only_seconds_median": recall_s,
        "tiny_bert_encode_seconds": text_s,
    }
    print(json.dumps(numbers, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(numbers, handle, indent=2)
    return numbers


if __name__ == "__main__":
    main()
