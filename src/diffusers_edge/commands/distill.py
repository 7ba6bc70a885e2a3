"""`diffusers-edge distill`: generate a distilled image-text set with `EDGEPipeline.distill` from the command line.

Runs on one process, or on several under `accelerate launch` / `torchrun` (the shards are split across processes
and the main process writes the card). Every flag is described in docs/distill.md.

Example:
    $ accelerate launch --multi_gpu --num_processes 4 examples/distill.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 --lora edge-lora \\
        --source annotations/flickr30k_train.json --image_root data/flickr30k \\
        --num_pairs 500 --captions_per_image 2 --captioner HuggingFaceTB/SmolVLM-256M-Instruct \\
        --output_dir flickr-edge-500 --push_to_hub --hub_dataset_id me/flickr30k-edge-500
    $ diffusers-edge distill --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --source "cc3m/*.tar" --streaming --image_column jpg --caption_column txt --selection kcenter \\
        --num_pairs 1000 --captions_per_image 1 --output_dir cc3m-edge-1000
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import datasets
import torch

from ..clip_features import DEFAULT_CLIP_MODEL
from ..shapes.dataset import SOURCE_NAME, load_shapes_split

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The distill flags (`argv=None` reads the command line).

    Example:
        >>> parse_args(["--pretrained_model_name_or_path", "sd", "--source", "shapes", "--num_pairs", "10",
        ...             "--output_dir", "out"]).captions_per_image
        2
    """
    parser = argparse.ArgumentParser(prog="diffusers-edge distill", description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="a Stable Diffusion folder or repo")
    parser.add_argument("--lora", default=None, help="LoRA weights to load (folder or repo), e.g. from train_edge.py")
    parser.add_argument("--source", required=True, help="training set: `shapes`, a Karpathy/BLIP JSON, a Hub id, ...")
    parser.add_argument("--source_split", default="train", help="split of --source")
    parser.add_argument("--image_root", default=None, help="image folder of a JSON --source")
    parser.add_argument("--streaming", action="store_true",
                        help="stream --source (Parquet / WebDataset shards, a Hub id) instead of loading it whole")
    parser.add_argument("--image_column", default=None, help="image column of --source (e.g. jpg)")
    parser.add_argument("--caption_column", default=None, help="caption column of --source (e.g. txt)")
    parser.add_argument("--image_id_column", default=None, help="image id column of --source (e.g. __key__)")
    parser.add_argument("--embedding_cache_dir", default=None,
                        help="where a streamed source's caption embeddings are kept for kcenter/kmeans")
    parser.add_argument("--num_pairs", type=int, required=True, help="budget in (image, caption) pairs")
    parser.add_argument("--captions_per_image", type=int, default=2, help="prompt + synthesized captions per image")
    parser.add_argument("--selection", default="random", choices=["random", "kcenter", "kmeans"])
    parser.add_argument(
        "--clip_model_name_or_path",
        "--clip_model",  # the name this command used before it took training's name
        default=DEFAULT_CLIP_MODEL,
        help="CLIP for --selection kcenter/kmeans (alias: --clip_model)",
    )
    parser.add_argument("--captioner", default=None, help="captioning model (BLIP, SmolVLM, LLaVA, a causal LM)")
    parser.add_argument("--captioner_mode", default=None, choices=["image-to-text", "vlm", "paraphrase"])
    parser.add_argument("--captioner_prompt", default=None, help="instruction for a VLM / paraphrase captioner")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--shard_size", type=int, default=64, help="images per Parquet shard (unit of resumption)")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=7.5)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--negative_prompt", default=None)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights dtype (fp16 on GPUs)")
    parser.add_argument("--disable_safety_checker", action="store_true", help="load without the safety checker")
    parser.add_argument("--no_resume", action="store_true", help="discard what output_dir holds and start over")
    parser.add_argument("--push_to_hub", action="store_true", help="push the finished set to --hub_dataset_id")
    parser.add_argument("--hub_dataset_id", default=None, help="user/name of the Hub dataset repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--license", default="other", help="the dataset card's license (a Hub license id)")
    parser.add_argument("--shapes_num_train", type=int, default=5000, help="size of the embedded shapes train split")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_dataset_id:
        parser.error("--push_to_hub needs --hub_dataset_id user/name")
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raises naming the flag for values that cannot work, before any data or model is loaded.

    Example:
        >>> check_args(parse_args(["--pretrained_model_name_or_path", "sd", "--source", "shapes",
        ...                        "--num_pairs", "10", "--output_dir", "out"]))
    """
    from ..paths import check_model_reference

    for name in ("num_pairs", "captions_per_image", "batch_size", "shard_size", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    if not math.isfinite(args.guidance_scale):
        raise ValueError(f"--guidance_scale must be a finite number, got {args.guidance_scale}.")
    models = {
        "--pretrained_model_name_or_path": args.pretrained_model_name_or_path,
        "--lora": args.lora,
        "--captioner": args.captioner,
        "--clip_model_name_or_path": args.clip_model_name_or_path if args.selection != "random" else None,
    }
    for flag, value in models.items():
        if value is not None:
            check_model_reference(value, flag)


def load_training_source(args: argparse.Namespace) -> datasets.Dataset | datasets.IterableDataset:
    """`shapes` -> the embedded captioned-shapes train split; anything else -> `data.sources.load_source` (streamed
    with `--streaming`)."""
    if args.source == SOURCE_NAME:
        return load_shapes_split(args.source_split, num_train=args.shapes_num_train, num_test=0)
    from ..data.sources import load_source

    columns = {"image_column": args.image_column, "caption_column": args.caption_column,
               "image_id_column": args.image_id_column}  # fmt: skip
    columns = {name: value for name, value in columns.items() if value is not None}
    extra = {"streaming": True} if args.streaming else {}
    return load_source(args.source, split=args.source_split, image_root=args.image_root, **extra, **columns)


def build_pipeline(args: argparse.Namespace, device: torch.device):
    """The `EDGEPipeline` the flags describe, on `device`, with the LoRA and (for k-center/k-means) CLIP loaded."""
    from ..pipeline_edge import EDGEPipeline

    extra = {}
    if args.disable_safety_checker:
        extra.update(safety_checker=None, requires_safety_checker=False)
    if args.selection != "random":
        from transformers import CLIPModel, CLIPProcessor

        extra.update(
            clip_model=CLIPModel.from_pretrained(args.clip_model_name_or_path),
            clip_processor=CLIPProcessor.from_pretrained(args.clip_model_name_or_path),
        )
    pipe = EDGEPipeline.from_pretrained(args.pretrained_model_name_or_path, dtype=DTYPES[args.dtype], **extra)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    return pipe.to(device)


def build_captioner(args: argparse.Namespace, device: torch.device):
    """A `Captioner` for `--captioner`, or None."""
    if args.captioner is None:
        return None
    from ..captioning import DEFAULT_PROMPT, Captioner

    return Captioner.from_pretrained(
        args.captioner,
        mode=args.captioner_mode,
        prompt=args.captioner_prompt or DEFAULT_PROMPT,
        device=device,
        dtype=None if args.dtype == "float32" else DTYPES[args.dtype],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs distill for the parsed flags; the main process pushes the set when asked. Returns 0.

    Example:
        >>> main(["--pretrained_model_name_or_path", "sd", "--source", "shapes", "--num_pairs", "10",
        ...       "--captions_per_image", "1", "--output_dir", "out"])
        0
    """
    from ..distillation import process_state
    from ..process_logging import set_library_verbosity

    args = parse_args(argv)
    state = process_state()
    set_library_verbosity(state.is_local_main_process)
    source = load_training_source(args)
    pipe = build_pipeline(args, state.device)
    distilled = pipe.distill(
        source,
        num_pairs=args.num_pairs,
        captions_per_image=args.captions_per_image,
        selection=args.selection,
        seed=args.seed,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
        negative_prompt=args.negative_prompt,
        captioner=build_captioner(args, state.device),
        resume=not args.no_resume,
        shard_size=args.shard_size,
        license=args.license,
        cache_dir=args.embedding_cache_dir,
    )
    if state.is_main_process:
        print(f"{distilled.num_rows} images, {sum(map(len, distilled['captions']))} pairs in {args.output_dir}")
        if args.push_to_hub:
            from ..data.distilled import push_distilled

            print(push_distilled(args.output_dir, args.hub_dataset_id, private=args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
