"""`diffusers-edge evaluate`: train the protocol's retrieval student on a distilled set (or a baseline) and report
recall@K on a test set, with every setting and number written to `results.json` and a Markdown table.

Examples:
    $ diffusers-edge evaluate --distilled me/flickr30k-edge-500 \\
        --train_source nlphuji/flickr30k --test_source nlphuji/flickr30k --protocol lors --seeds 0 1 2 3 4
    $ diffusers-edge evaluate --baseline random --num_pairs 100 --train_source shapes --test_source shapes \\
        --image_encoder resnet10t --no_pretrained --text_encoder ./tiny-bert --image_size 32 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from ..shapes.dataset import SOURCE_NAME, load_shapes_split


def build_parser() -> argparse.ArgumentParser:
    """The flags of `diffusers-edge evaluate` (and of `examples/evaluate_distilled.py`)."""
    from ..clip_features import DEFAULT_CLIP_MODEL
    from ..evaluation.protocol import PROTOCOLS
    from ..evaluation.student import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, TEXT_POOLINGS
    from ..selection.coreset import METHODS, SPACES

    parser = argparse.ArgumentParser(
        prog="diffusers-edge evaluate",
        description="Train the MTT-VL/LoRS/EDGE retrieval student on a distilled set or a baseline of real pairs "
        "and report IR/TR recall@K (last epoch and best epoch, mean ± std over seeds).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--distilled", help="a distilled set: Hub id, Parquet/Hub-layout folder or save_to_disk folder")
    what.add_argument("--baseline", choices=METHODS, help="a coreset of real training pairs (or `full`)")
    parser.add_argument("--distilled_split", default=None, help="split of --distilled (default: its only split)")
    parser.add_argument("--num_pairs", type=int, help="the baseline's budget in (image, caption) pairs")
    parser.add_argument("--space", choices=SPACES, default="joint", help="embedding space of herding / k-center")
    parser.add_argument(
        "--captions_per_image", default="1", help="captions kept per baseline image: a number or `all` (default 1)"
    )
    parser.add_argument("--clip_model_name_or_path", "--clip_model", default=DEFAULT_CLIP_MODEL,
                        help="CLIP model defining the coreset space (training's and distill's flag name)")
    parser.add_argument(
        "--coreset_seed", type=int, default=None,
        help="seed of the coreset selection (default: each run draws its coreset with its own training seed)",
    )
    parser.add_argument("--forgetting_epochs", type=int, default=20, help="length of the forgetting proxy run")
    parser.add_argument("--train_source", default=SOURCE_NAME, help="real pairs for baselines (`shapes` = embedded)")
    parser.add_argument("--train_split", default="train", help='split of --train_source ("" for a single Dataset)')
    parser.add_argument("--train_streaming", action="store_true",
                        help="stream --train_source (CC3M-size Parquet / WebDataset shards) for --baseline "
                        "random / herding / kcenter, never holding it")
    parser.add_argument("--train_image_column", default=None, help="image column of --train_source (e.g. jpg)")
    parser.add_argument("--train_caption_column", default=None, help="caption column of --train_source (e.g. txt)")
    parser.add_argument("--embedding_cache_dir", default=None,
                        help="where a streamed --train_source's CLIP embeddings are kept (default under HF_HOME)")
    parser.add_argument("--test_source", default=SOURCE_NAME, help="test pairs (`shapes` = the embedded test split)")
    parser.add_argument("--test_split", default="test", help='split of --test_source ("" for a single Dataset)')
    parser.add_argument(
        "--split_column",
        default=None,
        help="for sources keeping every split in one table (e.g. nlphuji/flickr30k): the column whose value must "
        "equal --train_split / --test_split",
    )
    parser.add_argument("--shapes_config", choices=["one_object", "two_objects", "scenes"], default="one_object",
                        help="captioned-shapes configuration")
    parser.add_argument("--shapes_seed", type=int, default=0, help="seed of the captioned-shapes data")
    parser.add_argument("--shapes_num_train", type=int, default=5000)
    parser.add_argument("--shapes_num_test", type=int, default=1000)
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="lors", help="training protocol preset")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--batch_size", type=int, help="override the preset's batch size")
    parser.add_argument("--lr", type=float, help="override the image encoder learning rate")
    parser.add_argument("--text_lr", type=float, help="override the projection head learning rate")
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--weight_decay", type=float)
    parser.add_argument("--lr_milestones", type=int, nargs="*", help="epochs after which lr is multiplied by gamma")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--eval_every", type=int, help="evaluate every N epochs (the last epoch always)")
    parser.add_argument("--image_size", type=int, help="override the 224 px input side")
    parser.add_argument("--image_encoder", default=DEFAULT_IMAGE_ENCODER, help="a timm model name")
    parser.add_argument(
        "--image_encoder_kwargs", type=json.loads, default=None, help="timm architecture arguments as JSON"
    )
    parser.add_argument("--image_encoder_checkpoint", default=None, help="local weights file for the image encoder")
    parser.add_argument("--no_pretrained", action="store_true", help="random-init image encoder (no ImageNet weights)")
    parser.add_argument("--text_encoder", default=DEFAULT_TEXT_ENCODER, help="a transformers model id or folder")
    parser.add_argument("--text_pooling", choices=TEXT_POOLINGS, default="cls", help="cls (protocol) or mean")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per seed")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--label", default=None, help="row label in the table")
    parser.add_argument("--output_dir", default="evaluation", help="where results.json and results.md go")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return parser


def _captions_per_image(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--captions_per_image must be a positive number or `all`, got {value!r}.")
    return int(value)


def load_split(source: str, split: str, args: argparse.Namespace) -> datasets.Dataset:
    """`shapes` -> the embedded captioned-shapes split; anything else -> `diffusers_edge.data.sources.load_source`."""
    if source == SOURCE_NAME:
        return load_shapes_split(
            split, args.shapes_config, args.shapes_seed, args.shapes_num_train, args.shapes_num_test, args.cache_dir
        )
    from ..data.sources import load_source

    if args.split_column is not None:
        return load_source(source, split_column=args.split_column, split_value=split)
    return load_source(source, split=split or None)  # "" = a source with one split (e.g. a saved Dataset)


def load_streamed_training_pool(args: argparse.Namespace) -> datasets.IterableDataset:
    """`--train_source` as a stream in the normalized form (`load_source(..., streaming=True)`)."""
    from ..data.sources import load_source

    if args.train_source == SOURCE_NAME:
        raise ValueError("--train_streaming streams shards or a Hub dataset; the embedded `shapes` data is built in "
                         "memory (drop --train_streaming).")  # fmt: skip
    columns = {"image_column": args.train_image_column, "caption_column": args.train_caption_column}
    columns = {name: value for name, value in columns.items() if value is not None}
    return load_source(args.train_source, split=args.train_split or None, streaming=True, **columns)


def check_distilled_folder(spec: str) -> None:
    """Refuses an unfinished or mixed distilled-set folder, as `load_distilled` does (card, whole shard series,
    and for a folder `distill` wrote, only the files its run recorded, unchanged). Other specs pass through."""
    from ..data.distilled import DATA_DIR, MANIFEST_NAME, SPLIT, check_complete

    path = Path(spec)
    if not path.is_dir() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return
    if (path / MANIFEST_NAME).is_file() or any((path / DATA_DIR).glob(f"{SPLIT}-*.parquet")):
        try:
            check_complete(path)
        except ValueError as error:
            raise ValueError(f"--distilled {spec!r} is not a finished distilled set: {error}") from error


def check_model_flags(args: argparse.Namespace) -> None:
    """Names a model flag that points at nothing before any data or model is loaded."""
    from ..paths import check_model_reference

    check_model_reference(args.text_encoder, "--text_encoder")
    if args.image_encoder_checkpoint is not None and not Path(args.image_encoder_checkpoint).is_file():
        raise FileNotFoundError(f"--image_encoder_checkpoint {args.image_encoder_checkpoint!r} is not a file.")
    if args.baseline not in (None, "random", "full"):
        check_model_reference(args.clip_model_name_or_path, "--clip_model_name_or_path")


def training_set(args: argparse.Namespace) -> tuple[str, datasets.Dataset | Callable[[int], datasets.Dataset]]:
    """(table label, the training set or a function of the seed returning it) for the parsed flags."""
    if args.distilled is not None:
        from ..data.sources import load_source

        check_distilled_folder(args.distilled)
        distilled = load_source(args.distilled, split=args.distilled_split)
        return args.label or str(args.distilled), distilled
    from ..selection.coreset import embed_pool, select_coreset

    if args.baseline != "full" and args.num_pairs is None:
        raise ValueError(f"--baseline {args.baseline} needs --num_pairs (the budget in image-caption pairs).")
    pool = load_streamed_training_pool(args) if args.train_streaming else load_split(
        args.train_source, args.train_split, args
    )
    keep = _captions_per_image(args.captions_per_image)
    if args.baseline == "full":
        return args.label or "full train split", select_coreset(pool, "full")
    label = args.label or f"{args.baseline} {args.num_pairs}"
    embeddings = None
    if args.baseline != "random" and not args.train_streaming:  # computed once, shared by every seed's draw
        need_images = args.baseline == "forgetting" or args.space != "text"
        embeddings = embed_pool(pool, args.clip_model_name_or_path, device=args.device, need_images=need_images)

    def draw(seed: int) -> datasets.Dataset:
        return select_coreset(
            pool,
            args.baseline,
            args.num_pairs,
            space=args.space,
            captions_per_image=keep,
            clip_model=args.clip_model_name_or_path,
            seed=seed if args.coreset_seed is None else args.coreset_seed,
            device=args.device,
            forgetting_epochs=args.forgetting_epochs,
            embeddings=embeddings,
            cache_dir=args.embedding_cache_dir,  # a streamed pool's stores: embedded once, shared by every seed
        )

    if args.coreset_seed is not None:
        return label, draw(args.coreset_seed)
    return label, draw


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the evaluation the flags describe; writes and returns the `results.json` content."""
    import torch

    from ..evaluation.evaluator import evaluate_dataset
    from ..evaluation.protocol import protocol_config
    from ..evaluation.report import results_table
    from ..serialization import write_json_atomic

    check_model_flags(args)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    started = time.perf_counter()
    config = protocol_config(
        args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        text_lr=args.text_lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_milestones=args.lr_milestones,
        augment=args.augment,
        eval_every=args.eval_every,
        image_size=args.image_size,
    )
    label, train = training_set(args)
    test = load_split(args.test_source, args.test_split, args)
    results = evaluate_dataset(
        train,
        test,
        config,
        image_encoder=args.image_encoder,
        text_encoder=args.text_encoder,
        text_pooling=args.text_pooling,
        pretrained=not args.no_pretrained,
        image_encoder_checkpoint=args.image_encoder_checkpoint,
        image_encoder_kwargs=args.image_encoder_kwargs,
        seeds=args.seeds,
        device=args.device,
        progress=not args.no_progress,
    )
    table = results_table([(label, results)])
    record = {
        "label": label,
        "command": ["diffusers-edge", "evaluate", *(argv or [])],
        "args": vars(args),
        "results": results,
        "table": table,
        "seconds": time.perf_counter() - started,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "results.json", record, indent=2, sort_keys=False)
    (output_dir / "results.md").write_text(_markdown(record), encoding="utf-8")
    return record


def _markdown(record: dict[str, Any]) -> str:
    protocol = record["results"]["protocol"]
    student = record["results"]["student"]
    return (
        f"# Retrieval evaluation: {record['label']}\n\n{record['table']}\n\n"
        f"Protocol `{protocol['name']}`: {protocol['epochs']} epochs, batch {protocol['batch_size']}, "
        f"lr {protocol['lr']}, momentum {protocol['momentum']}, weight decay {protocol['weight_decay']}, "
        f"augment {protocol['augment']}, {protocol['image_size']} px. Student: {student['image_encoder']} + "
        f"{student['text_encoder']} ({student['text_pooling']}). Seeds {record['results']['seeds']}.\n\n"
        f"{record['results']['note']}\n\nCommand: `{' '.join(record['command'])}`\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `diffusers-edge evaluate`; prints the table and returns 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    record = run(args, argv)
    print(record["table"])
    print(f"\n{record['results']['note']}\nWrote {Path(args.output_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
