"""EDGE end to end on the embedded captioned-shapes data with the tiny pretrained stack, offline, on a CPU.

`run_demo(DemoConfig(...))` is what `diffusers-edge demo` runs. Stages (each logged with its wall time):

1. **data**: the captioned-shapes splits the stack was trained on (`scenes` by default, or `one_object`; seed 0,
   5000 train / 1000 test);
2. **fine-tune**: per generation seed, LoRA on the tiny Stable Diffusion with the EDGE objective (denoising MSE +
   L_C + L_D), through `diffusers_edge.training.train` in-process (with `ablations`, also without L_C / L_D);
3. **distill**: per generation seed and budget, the generated sets with `EDGEPipeline.distill`: plain generation
   (untuned SD, the original captions, one caption per image), EDGE without caption synthesis (1 caption per
   image), EDGE (2 captions per image, the second from the tiny captioner) and EDGE with k-center prompt selection;
4. **judge**: each generated set scored by the stack's judge (`scenes`: the claim accuracy of every prompt, the
   variety of what prompts leave unsaid, the claim accuracy of synthesized captions; `one_object`: prompt
   following per attribute), plus CLIP alignment and diversity;
5. **evaluate**: the retrieval student trained on every set and on the real-pair baselines (random coreset,
   herding, k-center; the full train split as the upper reference), several seeds, one code path for all rows;
6. **report**: `report.md`, `results.json`, `samples.png` and the distilled sets under `sets/`.

Example:
    >>> from diffusers_edge.demo import DemoConfig, run_demo
    >>> results = run_demo(DemoConfig.quick_preset(output_dir="edge-demo-quick"))  # doctest: +SKIP
    >>> sorted(results["tables"])  # doctest: +SKIP
    ['20']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .evaluation.trainer import TABLE_COLUMNS, mean_std_cell

REAL_ROWS = ("random coreset", "herding", "k-center")
GENERATED_ROWS = ("plain generation", "EDGE w/o caption synthesis", "EDGE", "EDGE + k-center selection")
ABLATION_ROWS = ("EDGE w/o L_C", "EDGE w/o L_D")
SPLIT_ROW = "random coreset at EDGE's split"
FULL_ROW = "full train split"
ROW_NOTES = {
    "random coreset": "real train pairs drawn at random (1 caption per image; each student seed draws its own)",
    "herding": "real train pairs chosen by herding in the tiny CLIP's joint image+text space (1 caption per image)",
    "k-center": "real train pairs chosen by greedy k-center in the same space (1 caption per image; seeded start)",
    SPLIT_ROW: "real train pairs drawn at random, split like the EDGE rows: N / captions_per_image images with "
    "captions_per_image captions each (what EDGE's sets would score if its images were real ones)",
    "plain generation": "the untuned tiny SD, prompts = randomly chosen original captions, 1 caption per image",
    "EDGE w/o caption synthesis": "the EDGE-tuned SD (LoRA, L_C + L_D), same prompts and seeds, 1 caption per image",
    "EDGE": "the EDGE-tuned SD, N/2 images, each with its prompt + 1 caption by the tiny captioner",
    "EDGE + k-center selection": "as EDGE, prompts chosen by k-center over the tiny CLIP's caption embeddings",
    "EDGE w/o L_C": "as EDGE, from a fine-tune without the contrastive loss (its weight 0; same seed and steps)",
    "EDGE w/o L_D": "as EDGE, from a fine-tune without the diversity loss (its weight 0; same seed and steps)",
    FULL_ROW: "every train image with all its captions: the upper reference",
}

@dataclass
class DemoConfig:
    """Every setting of the demo (the defaults are the ~7-minute CPU run; `quick_preset` the smoke run).

    Attributes:
        output_dir: where `report.md`, `results.json`, `samples.png` and `sets/` go.
        shapes_config: the captioned-shapes world and its stack (`scenes`, the default, or `one_object`).
        cache_dir: datasets cache and cached pool embeddings / full-split reference (default `output_dir/cache`).
        pretrained_model_name_or_path: the Stable Diffusion folder both generators start from (default: the
            stack's `stable-diffusion/`); it must draw 32 px shapes with the stack's CLIP tokenizer.
        budgets: distilled-set sizes in (image, caption) pairs.
        seeds: one student run per seed and generated set (coresets draw their pairs with the student seed).
        generation_seeds: one fine-tune, prompt selection and set of generated images per seed; every generated
            row is measured over generation seeds x student seeds.
        ablations: also fine-tune without L_C and without L_D (rows `ABLATION_ROWS`, distilled as the EDGE row).
        train_steps: EDGE fine-tuning steps (LoRA).
        train_batch_size: images per fine-tuning step.
        learning_rate: LoRA learning rate.
        lora_rank: LoRA rank.
        lora_layers: comma-separated UNet modules LoRA adapts (`None`: the training default, every attention
            projection; `"attn2.to_k,attn2.to_v"`: cross-attention keys and values only).
        contrastive_weight, diversity_weight, denoise_weight: the EDGE objective's weights.
        loss_max_timestep: only timesteps <= this enter L_C / L_D (see docs/training.md).
        clip_loss_inputs: what L_C / L_D see: `"one_step"` (x0 of noisy train latents, the paper) or `"rollout"`
            (the generator's own 4-step DDIM samples at `guidance_scale`; docs/demo.md measures both).
        clip_batch_size: at most this many samples per batch enter L_C / L_D (`None`: all eligible).
        inference_steps: DDIM steps per generated image.
        guidance_scale: classifier-free guidance of every generator.
        captions_per_image: captions per EDGE image (the prompt + synthesized ones; EDGE's best: 2).
        student_epochs: student training epochs on every budget-size set.
        student_batch_size: student batch size.
        student_eval_every: evaluate the student every N epochs (the last epoch always).
        student_lr: SGD learning rate of the student.
        student_channels: stage widths of the student's timm `resnet10t` when it starts from random weights.
        student_pretrained: start the student's image encoder from the stack's pretrained one (its architecture and
            weights, `student-image-encoder/`); `None`: when the stack ships weights (`scenes` does).
        test_images: test images used for recall@K (the first N of the 1000-image test split).
        full_images: train images of the full-split reference (5000 = all of them).
        full_epochs: epochs of the full-split reference (an epoch there is 25000 pairs).
        num_threads: torch CPU threads (1 measured fastest on a loaded 2-core machine).
        device: `cpu` or `cuda` (default: CUDA when available).
        progress: show progress bars.
        quick: marks a smoke run in the report.
    """

    output_dir: str = "edge-demo"
    shapes_config: str = "scenes"
    cache_dir: str | None = None
    pretrained_model_name_or_path: str | None = None
    budgets: list[int] = field(default_factory=lambda: [100, 200])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    generation_seeds: list[int] = field(default_factory=lambda: [0])
    ablations: bool = False
    train_steps: int = 100
    train_batch_size: int = 32
    learning_rate: float = 5e-4
    lora_rank: int = 4
    lora_layers: str | None = None
    contrastive_weight: float = 1.0
    diversity_weight: float = 1.0
    denoise_weight: float = 1.0
    loss_max_timestep: int = 500
    clip_loss_inputs: str = "one_step"
    clip_batch_size: int | None = None
    inference_steps: int = 10
    guidance_scale: float = 3.0
    captions_per_image: int = 2
    student_epochs: int = 20
    student_batch_size: int = 32
    student_eval_every: int = 5
    student_lr: float = 0.1
    student_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    student_pretrained: bool | None = None
    test_images: int = 500
    full_images: int = 5000
    full_epochs: int = 1
    num_threads: int | None = 1
    device: str | None = None
    progress: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        positive = ["train_steps", "train_batch_size", "inference_steps", "student_epochs", "student_eval_every"]
        positive += ["test_images", "full_images", "full_epochs", "captions_per_image", "lora_rank"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.student_batch_size < 2:
            raise ValueError("DemoConfig.student_batch_size must be >= 2: InfoNCE needs negatives in the batch.")
        if not self.budgets or any(int(b) < 2 for b in self.budgets):
            raise ValueError(f"DemoConfig.budgets must be pair counts >= 2, got {self.budgets!r}.")
        if self.clip_batch_size is not None and self.clip_batch_size < 1:
            raise ValueError(f"DemoConfig.clip_batch_size must be >= 1 when given, got {self.clip_batch_size}.")
        if not self.seeds or not self.generation_seeds:
            raise ValueError("DemoConfig.seeds and DemoConfig.generation_seeds need at least one seed each.")
        from .data.stack import STACK_FOLDERS

        if self.shapes_config not in STACK_FOLDERS:
            raise ValueError(f"DemoConfig.shapes_config must be in {list(STACK_FOLDERS)}, got {self.shapes_config!r}.")
        if self.clip_loss_inputs not in ("one_step", "rollout"):
            raise ValueError(
                f"DemoConfig.clip_loss_inputs must be 'one_step' or 'rollout', got {self.clip_loss_inputs!r}."
            )
        if self.test_images > 1000 or self.full_images > 5000:
            raise ValueError(
                f"The shapes test split has 1000 images and the train split 5000; got test_images={self.test_images}"
                f", full_images={self.full_images}."
            )
        self.budgets = [int(b) for b in self.budgets]
        self.seeds = [int(s) for s in self.seeds]
        self.generation_seeds = [int(s) for s in self.generation_seeds]
        self.student_channels = [int(c) for c in self.student_channels]

    @classmethod
    def quick_preset(cls, **overrides: Any) -> DemoConfig:
        """The smoke run (under 3 minutes on a 2-core CPU): one budget of 20 pairs, 1 seed, few steps and epochs.

        Example:
            >>> DemoConfig.quick_preset(output_dir="x").budgets
            [20]
        """
        values: dict[str, Any] = {
            "budgets": [20],
            "seeds": [0],
            "train_steps": 4,
            "train_batch_size": 16,
            "inference_steps": 4,
            "student_epochs": 4,
            "student_eval_every": 2,
            "test_images": 200,
            "full_images": 300,
            "full_epochs": 1,
            "quick": True,
        }
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stable_diffusion(self) -> str:
        """The Stable Diffusion folder the generators start from (the stack's unless set)."""
        return self.pretrained_model_name_or_path or str(self.stack("stable-diffusion"))

    def stack(self, component: str) -> Path:
        """A component folder of the stack of `shapes_config`."""
        from .data.stack import shapes_stack_path

        return shapes_stack_path(component, config=self.shapes_config)

    def student_encoder(self) -> tuple[str, dict[str, Any], Path | None]:
        """The student's timm image encoder: model name, architecture arguments and the weights it starts from."""
        spec = json.loads((self.stack("student-image-encoder") / "config.json").read_text(encoding="utf-8"))
        pretrained = self.student_pretrained
        if pretrained is None:
            pretrained = bool(spec.get("checkpoint"))
        if not pretrained:
            return "resnet10t", {"channels": self.student_channels, "stem_width": 16}, None
        if not spec.get("checkpoint"):
            raise ValueError(f"The {self.shapes_config} stack ships no pretrained student image encoder; "
                             "set student_pretrained=False (--no_student_pretrained).")
        return spec["model_name"], spec["kwargs"], self.stack("student-image-encoder") / spec["checkpoint"]


# ----------------------------------------------------------------------------------------------------------------
# Stage bookkeeping
# ----------------------------------------------------------------------------------------------------------------


class _Stages:
    """Logs the start and wall time of every stage; keeps the times for the report."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log(f"[demo] stage {name} ...")
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        total = time.perf_counter() - self.started
        self.log(f"[demo] stage {name} done in {time.perf_counter() - started:.1f} s (total {total:.1f} s)")


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: one code path for every row
# ----------------------------------------------------------------------------------------------------------------


class StudentEvaluator:
    """Trains the protocol's retrieval student on any normalized set and scores it on a fixed test set.

    The test images and every caption's frozen text feature are prepared once and shared by all rows and seeds;
    each run uses `diffusers_edge.evaluation.trainer.train_student` / `evaluate_student`, the functions behind
    `evaluate_dataset`, so every row (coresets, generated sets, the full split) goes through the same code.

    Args:
        test: the test split (normalized form).
        config: the student protocol (`protocol_config`).
        image_encoder: timm model name; `image_encoder_kwargs` its architecture arguments.
        image_encoder_checkpoint: weights every student's image encoder starts from (`None`: random init).
        text_encoder: the frozen text encoder folder; `text_pooling` its pooling.
        device: where the student runs.
        progress: show per-run progress bars.

    Example:
        >>> evaluator = StudentEvaluator(test, protocol_config("lors", epochs=20, image_size=32), "resnet10t",
        ...                              {"channels": [16, 32, 64, 128]}, shapes_stack_path("text-encoder"))
        >>> evaluator.evaluate(lambda seed: coreset, seeds=[0, 1, 2])["summary"]["last"]["r_mean"]  # doctest: +SKIP
        {'mean': ..., 'std': ...}
    """

    def __init__(
        self,
        test: datasets.Dataset,
        config: Any,
        image_encoder: str,
        image_encoder_kwargs: dict[str, Any],
        text_encoder: str | Path,
        text_pooling: str = "cls",
        device: str = "cpu",
        progress: bool = True,
        image_encoder_checkpoint: str | Path | None = None,
    ) -> None:
        from .evaluation.student import FrozenTextEncoder
        from .evaluation.trainer import prepare_pairs

        self.config = config
        self.image_encoder = image_encoder
        self.image_encoder_kwargs = dict(image_encoder_kwargs)
        self.image_encoder_checkpoint = image_encoder_checkpoint
        self.device = device
        self.progress = progress
        self.texts = FrozenTextEncoder(str(text_encoder), config.max_text_length, device=device, pooling=text_pooling)
        self.test = prepare_pairs(test, config.image_size, name="the test set")
        self.test_features = self.encode(self.test.captions)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Frozen text features of `captions` (rows in order)."""
        return self.texts.encode(list(captions), batch_size=self.config.eval_batch_size)

    def evaluate(self, train: Callable[[int], datasets.Dataset], seeds: Sequence[int]) -> dict[str, Any]:
        """Per seed: a fresh student trained on `train(seed)`; returns runs and mean ± std of last and best."""
        from .evaluation.student import RetrievalStudent
        from .evaluation.trainer import evaluate_student, prepare_pairs, summarize, train_student

        runs = []
        for seed in seeds:
            started = time.perf_counter()
            pairs = prepare_pairs(train(seed), self.config.image_size, name=f"the training set of seed {seed}")
            features = self.encode(pairs.captions)
            torch.manual_seed(seed)
            student = RetrievalStudent.from_timm(
                self.image_encoder,
                text_dim=self.texts.hidden_size,
                pretrained=False,
                checkpoint=self.image_encoder_checkpoint,
                dropout=self.config.dropout,
                logit_scale=self.config.logit_scale,
                **self.image_encoder_kwargs,
            ).to(self.device)
            history = train_student(
                student,
                pairs.images,
                features,
                pairs.text_to_image,
                self.config,
                seed=seed,
                evaluate=lambda s: evaluate_student(
                    s, self.test.images, self.test_features, self.test.text_to_image, self.config
                ),
                progress=self.progress,
            )
            sizes = {"num_images": pairs.num_images, "num_pairs": pairs.num_pairs}
            runs.append({"seed": seed, "train": sizes, **history, "seconds": time.perf_counter() - started})
        return {
            "protocol": self.config.to_dict(),
            "seeds": list(seeds),
            "train": runs[0]["train"],
            "runs": runs,
            "summary": {
                "last": summarize([run["last"] for run in runs]),
                "best": summarize([run["best"] for run in runs]),
            },
        }


# ----------------------------------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------------------------------


def _load_data(config: DemoConfig, cache: Path) -> datasets.DatasetDict:
    from .data.shapes import load_captioned_shapes

    # the split sizes and seed the shipped stacks were trained on (docs/shapes-stack.md)
    return load_captioned_shapes(
        config.shapes_config, seed=0, num_train=5000, num_val=0, num_test=1000, cache_dir=cache
    )


def _finetune_argv(
    config: DemoConfig, output_dir: Path, seed: int | None = None, weights: dict[str, float] | None = None
) -> list[str]:
    """The `diffusers-edge train` flags of the demo's fine-tune (`seed`: the first generation seed unless given;
    `weights`: loss weights that replace the config's, e.g. `{"contrastive_weight": 0.0}` for an ablation)."""
    weights = {
        "contrastive_weight": config.contrastive_weight,
        "diversity_weight": config.diversity_weight,
        "denoise_weight": config.denoise_weight,
    } | (weights or {})
    return [
        "--pretrained_model_name_or_path", config.stable_diffusion(),
        "--clip_model_name_or_path", str(config.stack("clip")),
        "--output_dir", str(output_dir),
        "--resolution", "32",
        "--train_batch_size", str(config.train_batch_size),
        "--max_train_steps", str(config.train_steps),
        "--learning_rate", str(config.learning_rate),
        "--rank", str(config.lora_rank),
        *[item for name, value in weights.items() for item in (f"--{name}", str(value))],
        "--loss_max_timestep", str(config.loss_max_timestep),
        "--clip_loss_inputs", config.clip_loss_inputs,
        *(["--lora_layers", config.lora_layers] if config.lora_layers else []),
        *(["--clip_batch_size", str(config.clip_batch_size)] if config.clip_batch_size else []),
        "--rollout_guidance_scale", str(config.guidance_scale),
        "--seed", str(config.generation_seeds[0] if seed is None else seed),
        "--checkpointing_steps", str(10**9),
        "--report_to", "none",
    ]  # fmt: skip


def _finetune(
    config: DemoConfig,
    train_split: datasets.Dataset,
    output_dir: Path,
    seed: int | None = None,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    from .training import parse_args, train

    argv = _finetune_argv(config, output_dir, seed, weights)
    args = parse_args(argv)
    result = train(args, dataset=train_split)
    return {
        "command": ["diffusers-edge", "train", *argv],
        "weights": str(result.weights_path),
        "steps": result.global_step,
        "last_logs": result.last_logs,
    }


def _pipeline(config: DemoConfig, device: str, lora_dir: Path | None = None) -> Any:
    """The stack's Stable Diffusion as an `EDGEPipeline`: untuned, or with the LoRA weights in `lora_dir`."""
    from transformers import CLIPModel, CLIPProcessor

    from .pipeline_edge import EDGEPipeline

    if lora_dir is None:
        pipe = EDGEPipeline.from_pretrained(config.stable_diffusion())
    else:
        pipe = EDGEPipeline.from_pretrained(
            config.stable_diffusion(),
            clip_model=CLIPModel.from_pretrained(config.stack("clip")),
            clip_processor=CLIPProcessor.from_pretrained(config.stack("clip")),
        )
        pipe.load_lora_weights(str(lora_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _distill_sets(
    config: DemoConfig,
    budget: int,
    source: datasets.Dataset,
    pipes: dict[str, Any],
    captioner: Any,
    sets: Path,
    seed: int,
) -> dict[str, tuple[datasets.Dataset, Path]]:
    """The generated sets of one budget and generation seed, written under `sets/`.

    `pipes` maps `"plain"`, `"edge"` and, with ablations, `"edge w/o L_C"` / `"edge w/o L_D"` to pipelines.
    """
    common = {
        "seed": seed,
        "num_inference_steps": config.inference_steps,
        "guidance_scale": config.guidance_scale,
        "batch_size": 50,
        "resume": False,
        "progress": config.progress,
    }
    cpi = config.captions_per_image
    plans = {
        "plain generation": ("plain", "plain", 1, "random"),
        "EDGE w/o caption synthesis": ("edge", "edge-cpi1", 1, "random"),
        "EDGE": ("edge", f"edge-cpi{cpi}", cpi, "random"),
        "EDGE + k-center selection": ("edge", f"edge-cpi{cpi}-kcenter", cpi, "kcenter"),
    }
    if config.ablations:
        plans["EDGE w/o L_C"] = ("edge w/o L_C", f"edge-no-lc-cpi{cpi}", cpi, "random")
        plans["EDGE w/o L_D"] = ("edge w/o L_D", f"edge-no-ld-cpi{cpi}", cpi, "random")
    out = {}
    for label, (pipe, name, per_image, selection) in plans.items():
        folder = sets / f"{name}-{budget}-g{seed}"
        distilled = pipes[pipe].distill(
            source,
            num_pairs=budget,
            captions_per_image=per_image,
            selection=selection,
            output_dir=folder,
            captioner=captioner if per_image > 1 else None,
            **common,
        )
        out[label] = (distilled, folder)
    return out


def _pool_embeddings(config: DemoConfig, train_split: datasets.Dataset, cache: Path, device: str) -> Any:
    """The tiny CLIP's embeddings of every train image and caption, cached as safetensors."""
    from safetensors.torch import load_file, save_file

    from .selection.coreset import PoolEmbeddings, embed_pool

    # the data is fixed per world (seed 0, 5000 images); the key is the world and the CLIP weights that embed it
    digest = _file_digest(config.stack("clip") / "model.safetensors")
    path = cache / f"pool-embeddings-{config.shapes_config}-{train_split.num_rows}-{digest}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        counts = tensors["counts"].tolist()
        return PoolEmbeddings(tensors["image"], list(tensors["captions"].split(counts)))
    embeddings = embed_pool(train_split, config.stack("clip"), device=device)
    counts = torch.tensor([len(c) for c in embeddings.captions])
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"image": embeddings.image, "captions": torch.cat(embeddings.captions), "counts": counts}, str(path))
    return embeddings


def _generation_diagnostics(
    distilled: datasets.Dataset, judge: Any, clip: tuple[Any, Any], source: datasets.Dataset
) -> dict[str, Any]:
    """How well a generated set follows its prompts (judged), how varied it is, and CLIP alignment and similarity.

    `one_object`: the attribute judge against `parse_caption(prompt)`, and shape+colour of synthesized captions
    against what the judge sees. `scenes`: the scene judge's claim accuracy of each prompt on its image, the variety
    of what prompts leave unsaid (next to the prompts' real source images), and the claim accuracy of synthesized
    captions against the judged scene of their image (does the captioner read what was drawn?).
    """
    from .selection import embed_captions

    images = list(distilled["image"])
    prompts = list(distilled["prompt"])
    if "background" in source.features:  # the scenes world
        diagnostics = _scene_diagnostics(distilled, judge, source)
    else:
        diagnostics = _attribute_diagnostics(distilled, judge)
    model, processor = clip
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        features = model.get_image_features(pixel_values=pixels)
        features = features if isinstance(features, torch.Tensor) else features.pooler_output
        image_embeds = torch.nn.functional.normalize(features.float(), dim=-1)
        text_embeds = embed_captions(prompts, model, processor)
    n = len(images)
    similarity = image_embeds @ image_embeds.T
    off_diagonal = (similarity.sum() - similarity.diagonal().sum()) / max(n * (n - 1), 1)
    diagnostics |= {
        "images": n,
        "clip_alignment": float((image_embeds * text_embeds).sum(-1).mean()),
        "clip_image_similarity": float(off_diagonal),
    }
    return diagnostics


def _attribute_diagnostics(distilled: datasets.Dataset, judge: Any) -> dict[str, Any]:
    from .data.shapes import parse_caption
    from .judge import judge_images, score_prompt_following

    images = list(distilled["image"])
    scores = score_prompt_following(images, [parse_caption(p) for p in distilled["prompt"]], judge)
    judged = judge_images(images, judge)
    scenes = {tuple(judged[k][i] for k in sorted(judged)) for i in range(len(images))}
    diagnostics = {"prompt_following": scores, "distinct_judged_scenes": len(scenes)}
    if any(len(caps) > 1 for caps in distilled["captions"]):
        diagnostics["synthesized_captions"] = _caption_agreement(distilled, judged)
    return diagnostics


def _scene_diagnostics(distilled: datasets.Dataset, judge: Any, source: datasets.Dataset) -> dict[str, Any]:
    from .data.scenes import SCENE_LABELS, claim_accuracy, scene_from_columns, unsaid_variety
    from .judge import read_scenes, score_claims

    images, prompts = list(distilled["image"]), list(distilled["prompt"])
    judged, _ = read_scenes(images, judge)
    row = {image_id: i for i, image_id in enumerate(source["image_id"])}
    columns = source.select([row[i] for i in distilled["source_image_id"]]).select_columns(list(SCENE_LABELS))
    real = [scene_from_columns({k: columns.features[k].int2str(v) for k, v in r.items()}) for r in columns]
    diagnostics = {
        "prompt_following": score_claims(images, prompts, judge),
        "distinct_judged_scenes": len(set(judged)),
        "unsaid": unsaid_variety(prompts, judged, real),
    }
    synthesized = [(c, judged[i]) for i, caps in enumerate(distilled["captions"]) for c in caps[1:]]
    if synthesized:
        captions, scenes = zip(*synthesized)
        diagnostics["synthesized_captions"] = claim_accuracy(captions, scenes) | {"captions": len(captions)}
    return diagnostics


def pixel_change(before: datasets.Dataset, after: datasets.Dataset) -> float:
    """Mean absolute pixel difference (0-255 scale) between two generated sets made from the same prompts and seeds.

    It measures how much the fine-tune changed the generator's output (0 = not at all).

    Example:
        >>> pixel_change(plain_set, edge_set)  # doctest: +SKIP
        0.84
    """
    if before["prompt"] != after["prompt"] or before["seed"] != after["seed"]:
        raise ValueError("pixel_change compares sets generated from the same prompts and item seeds.")
    first = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in before["image"]])
    second = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in after["image"]])
    return float(np.abs(first - second).mean())


def _caption_agreement(distilled: datasets.Dataset, judged: dict[str, list[str]]) -> dict[str, float]:
    """Percent of synthesized captions that parse and whose shape/colour agree with what the judge sees."""
    from .data.shapes import parse_caption

    total, parsed, agree = 0, 0, 0
    for i, captions in enumerate(distilled["captions"]):
        for caption in captions[1:]:
            total += 1
            try:
                attributes = parse_caption(caption)
            except ValueError:
                continue
            parsed += 1
            agree += all(attributes[k] == judged[k][i] for k in ("shape", "color"))
    return {"captions": total, "parsed": 100.0 * parsed / total, "shape+color_as_judged": 100.0 * agree / total}


def _student_config(config: DemoConfig, epochs: int) -> Any:
    from .evaluation.trainer import protocol_config

    # LoRS schedule (x0.1 after epochs // 2 + 1), no augmentation; batch, epochs and image size sized for the CPU
    return protocol_config(
        "lors",
        epochs=epochs,
        batch_size=config.student_batch_size,
        lr=config.student_lr,
        eval_every=min(config.student_eval_every, epochs),
        lr_milestones=[epochs // 2 + 1],
        image_size=32,
    )


def _full_reference(
    config: DemoConfig, train_split: datasets.Dataset, test: datasets.Dataset, cache: Path, device: str
) -> dict[str, Any]:
    """The full-split row, cached under `cache/` by its settings (it costs more than all other rows together)."""
    student = _student_config(config, config.full_epochs)
    name, kwargs, checkpoint = config.student_encoder()
    key = {
        "protocol": student.to_dict(),
        "world": config.shapes_config,
        "image_encoder": [name, kwargs, None if checkpoint is None else _file_digest(checkpoint)],
        "full_images": config.full_images,
        "test_images": config.test_images,
        "seeds": config.seeds,
        "text_encoder_weights": _file_digest(config.stack("text-encoder") / "model.safetensors"),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"full-reference-{digest}.json"
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "cached": str(path)}
    evaluator = _evaluator(config, student, test, device)
    pool = train_split.select(range(config.full_images))
    results = evaluator.evaluate(lambda seed: pool, config.seeds)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results) + "\n", encoding="utf-8")
    return {**results, "cached": None}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _evaluator(config: DemoConfig, student: Any, test: datasets.Dataset, device: str) -> StudentEvaluator:
    name, kwargs, checkpoint = config.student_encoder()
    return StudentEvaluator(
        test,
        student,
        name,
        kwargs,
        config.stack("text-encoder"),
        text_pooling="cls",
        device=device,
        progress=config.progress,
        image_encoder_checkpoint=checkpoint,
    )


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def run_demo(config: DemoConfig | None = None, log: Callable[[str], None] = _print) -> dict[str, Any]:
    """Runs the whole demo and writes its folder; returns the `results.json` content.

    Args:
        config: the settings (default: `DemoConfig()`, the ~7-minute CPU run).
        log: receives one line per stage start and end.

    Example:
        >>> results = run_demo(DemoConfig.quick_preset(output_dir="edge-demo-quick"))  # doctest: +SKIP
        >>> results["comparison"]["20"]["EDGE minus plain (r_mean, last)"]  # doctest: +SKIP
    """
    from transformers import CLIPModel, CLIPProcessor

    from .captioning import Captioner
    from .judge import load_judge
    from .selection.coreset import select_coreset

    config = config or DemoConfig()
    started = time.perf_counter()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = Path(config.output_dir)
    cache = Path(config.cache_dir) if config.cache_dir else output_dir / "cache"
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = _Stages(log)
    log(f"[demo] {config.shapes_config} world, writing to {output_dir} on {device}; budgets {config.budgets}, "
        f"student seeds {config.seeds}, generation seeds {config.generation_seeds}")

    with stage("data"):
        shapes = _load_data(config, cache)
        train_split = shapes["train"]
        test = shapes["test"].select(range(config.test_images))
    # fine-tune variant -> (loss weights replacing the config's, LoRA folder name)
    variants = {"edge": (None, "edge-lora")}
    if config.ablations:
        variants["edge w/o L_C"] = ({"contrastive_weight": 0.0}, "edge-no-lc-lora")
        variants["edge w/o L_D"] = ({"diversity_weight": 0.0}, "edge-no-ld-lora")
    finetunes: dict[str, dict[str, Any]] = {}
    # generated[budget][label]: one (set, folder) per generation seed
    generated: dict[int, dict[str, list[tuple[datasets.Dataset, Path]]]] = {b: {} for b in config.budgets}
    with stage("load models"):
        captioner = Captioner.from_pretrained(config.stack("captioner"), device=device)
        plain = _pipeline(config, device)
    for seed in config.generation_seeds:
        pipes = {"plain": plain}
        for variant, (weights, name) in variants.items():
            folder = output_dir / f"{name}-g{seed}"
            with stage("fine-tune"):
                finetune = _finetune(config, train_split, folder, seed, weights)
            finetunes[f"{variant} (generation seed {seed})"] = finetune
            pipes[variant] = _pipeline(config, device, folder)
        with stage("distill"):
            for budget in config.budgets:
                sets = _distill_sets(config, budget, train_split, pipes, captioner, output_dir / "sets", seed)
                for label, item in sets.items():
                    generated[budget].setdefault(label, []).append(item)
    with stage("judge"):
        judge = load_judge(config.stack("judge"), device=device)
        clip_path = config.stack("clip")
        clip = (CLIPModel.from_pretrained(clip_path), CLIPProcessor.from_pretrained(clip_path))
        diagnostics = {
            str(budget): {
                label: _mean_over_seeds(
                    [_generation_diagnostics(ds, judge, clip, train_split) for ds, _ in per_seed]
                )
                for label, per_seed in sets.items()
            }
            for budget, sets in generated.items()
        }
        for budget, sets in generated.items():
            pairs = zip(sets["plain generation"], sets["EDGE w/o caption synthesis"])
            change = float(np.mean([pixel_change(plain_set, edge_set) for (plain_set, _), (edge_set, _) in pairs]))
            diagnostics[str(budget)]["EDGE w/o caption synthesis"]["pixel_change_vs_plain"] = change
    with stage("coreset embeddings"):
        embeddings = _pool_embeddings(config, train_split, cache, device)
    student = _student_config(config, config.student_epochs)
    rows: dict[str, dict[str, Any]] = {}
    with stage("evaluate"):
        evaluator = _evaluator(config, student, test, device)
        # (coreset method, row, captions per image): one caption each, then random real pairs split like EDGE's
        methods = zip(("random", "herding", "kcenter"), REAL_ROWS, strict=True)
        real_rows = [(method, label, 1) for method, label in methods]
        if config.captions_per_image > 1:
            real_rows.append(("random", SPLIT_ROW, config.captions_per_image))
        for budget in config.budgets:
            rows[str(budget)] = {}
            for method, label, per_image in real_rows:
                log(f"[demo] student: {label}, {budget} pairs, seeds {config.seeds}")
                rows[str(budget)][label] = evaluator.evaluate(
                    lambda seed, m=method, b=budget, k=per_image: select_coreset(
                        train_split, m, b, space="joint", captions_per_image=k, seed=seed, embeddings=embeddings
                    ),
                    config.seeds,
                )
            for label, per_seed in generated[budget].items():
                log(f"[demo] student: {label}, {budget} pairs, seeds {config.seeds} x generation seeds "
                    f"{config.generation_seeds}")
                evaluations = [evaluator.evaluate(lambda seed, d=ds: d, config.seeds) for ds, _ in per_seed]
                rows[str(budget)][label] = _pool_generation_seeds(evaluations, config.generation_seeds)
    with stage("full-split reference"):
        full = _full_reference(config, train_split, test, cache, device)
    with stage("report"):
        results = _results(config, finetunes, generated, diagnostics, rows, full, stage.seconds, device)
        results["seconds"] = {**stage.seconds, "total": time.perf_counter() - started}
        first = {label: per_seed[0] for label, per_seed in generated[config.budgets[0]].items()}
        write_samples_grid(train_split, first, output_dir / "samples.png")
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (output_dir / "report.md").write_text(render_report(results), encoding="utf-8")
    results["seconds"]["total"] = time.perf_counter() - started
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (output_dir / "report.md").write_text(render_report(results), encoding="utf-8")
    log(f"[demo] done in {results['seconds']['total']:.1f} s: {output_dir / 'report.md'}")
    return results


def _mean_over_seeds(values: list[Any]) -> Any:
    """The element-wise mean of JSON-like values of one shape (numbers averaged, everything else from the first)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean_over_seeds([v[k] for v in values]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return float(np.mean(values))
    return first


def _pool_generation_seeds(evaluations: list[dict[str, Any]], generation_seeds: Sequence[int]) -> dict[str, Any]:
    """One row from the evaluations of the sets of several generation seeds: every run kept (tagged with its
    generation seed) and mean ± std over all of them (generation seeds x student seeds)."""
    from .evaluation.trainer import summarize

    runs = [run | {"generation_seed": g} for g, ev in zip(generation_seeds, evaluations) for run in ev["runs"]]
    pooled = dict(evaluations[0])
    pooled["runs"] = runs
    pooled["generation_seeds"] = list(generation_seeds)
    pooled["summary"] = {which: summarize([run[which] for run in runs]) for which in ("last", "best")}
    return pooled


def _results(
    config: DemoConfig,
    finetunes: dict[str, dict[str, Any]],
    generated: dict[int, dict[str, list[tuple[datasets.Dataset, Path]]]],
    diagnostics: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    full: dict[str, Any],
    seconds: dict[str, float],
    device: str,
) -> dict[str, Any]:
    comparison = {}
    for budget, table in rows.items():
        edge = table["EDGE"]["summary"]["last"]["r_mean"]
        plain = table["plain generation"]["summary"]["last"]["r_mean"]
        kcenter = table["EDGE + k-center selection"]["summary"]["last"]["r_mean"]
        random = table["random coreset"]["summary"]["last"]["r_mean"]
        comparison[budget] = {
            "EDGE r_mean (last)": edge,
            "plain generation r_mean (last)": plain,
            "EDGE minus plain (r_mean, last)": edge["mean"] - plain["mean"],
            "EDGE beats plain": edge["mean"] > plain["mean"],
            # beyond the spread: mean - std of EDGE above mean + std of plain generation
            "EDGE beats plain beyond the spread": edge["mean"] - edge["std"] > plain["mean"] + plain["std"],
            "EDGE + k-center minus random coreset (r_mean, last)": kcenter["mean"] - random["mean"],
        }
        if SPLIT_ROW in table:
            comparison[budget][f"{SPLIT_ROW} r_mean (last)"] = table[SPLIT_ROW]["summary"]["last"]["r_mean"]
    name, kwargs, checkpoint = config.student_encoder()
    return {
        "settings": config.to_dict(),
        "student_protocol": _student_config(config, config.student_epochs).to_dict(),
        "student": {"image_encoder": name, **kwargs, "pretrained": None if checkpoint is None else str(checkpoint),
                    "text_encoder": f"{config.shapes_config} stack text-encoder (frozen BERT)", "pooling": "cls"},
        "finetune": next(iter(finetunes.values())),
        "finetunes": finetunes,
        "distilled_sets": {  # the first generation seed's sets; every seed's in distilled_sets_per_generation_seed
            str(b): {label: str(per_seed[0][1]) for label, per_seed in sets.items()} for b, sets in generated.items()
        },
        "distilled_sets_per_generation_seed": {
            str(b): {label: [str(folder) for _, folder in per_seed] for label, per_seed in sets.items()}
            for b, sets in generated.items()
        },
        "generation": diagnostics,
        "tables": rows,
        "full_reference": full,
        "comparison": comparison,
        "row_notes": ROW_NOTES,
        "environment": {
            "device": device,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "seconds": dict(seconds),
    }


# ----------------------------------------------------------------------------------------------------------------
# Report and grid
# ----------------------------------------------------------------------------------------------------------------


def results_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per set a `last` and a `best` line, mean ± std over seeds, with the epochs they come from.

    Example:
        >>> print(results_markdown({"EDGE": results}).splitlines()[0])  # doctest: +SKIP
        | set | pairs (images) | epoch | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | r_mean |
    """
    header = "| set | pairs (images) | epoch | " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 3)]
    for label, results in rows.items():
        runs = results["runs"]
        size = f"{results['train']['num_pairs']} ({results['train']['num_images']})"
        last = f"last ({runs[0]['evaluations'][-1]['epoch']})"
        best = "best (" + ", ".join(str(run["best_epoch"]) for run in runs) + ")"
        for which, epoch in (("last", last), ("best", best)):
            stats = results["summary"][which]
            cells = " | ".join(mean_std_cell(stats[key]) for _, key in TABLE_COLUMNS)
            lines.append(f"| {label} | {size} | {epoch} | {cells} |")
    return "\n".join(lines)


def _scene_generation_table(diagnostics: dict[str, dict[str, Any]]) -> str:
    kinds = ("object", "relation", "count", "colors", "background")
    lines = [
        "| generated set | images | prompt claims right: all | " + " | ".join(kinds) + " | judged with confidence "
        ">= 0.9 | distinct judged scenes | background entropy, unsaid: generated / real (bits) | colours per "
        "scene, unsaid: generated / real | CLIP image-prompt cosine | CLIP image-image cosine | synthesized "
        "captions: claims right as judged |",
        "|" + "---|" * 14,
    ]
    for label, d in diagnostics.items():
        s, unsaid = d["prompt_following"], d["unsaid"]
        caps = d.get("synthesized_captions")
        per_kind = " | ".join(f"{s[k]:.1f}" if k in s else "–" for k in kinds)
        synth = f"{caps['all']:.1f}" if caps else "–"
        lines.append(
            f"| {label} | {d['images']:.0f} | {s['all']:.1f} | {per_kind} | {s['confident']:.1f} | "
            f"{d['distinct_judged_scenes']:.0f} | {unsaid['background_entropy_generated']:.2f} / "
            f"{unsaid['background_entropy_real']:.2f} | {unsaid['colors_per_scene_generated']:.2f} / "
            f"{unsaid['colors_per_scene_real']:.2f} | {d['clip_alignment']:.3f} | "
            f"{d['clip_image_similarity']:.3f} | {synth} |"
        )
    return "\n".join(lines)


def _generation_table(diagnostics: dict[str, dict[str, Any]]) -> str:
    if "unsaid" in next(iter(diagnostics.values())):
        return _scene_generation_table(diagnostics)
    lines = [
        "| generated set | images | shape | colour | size | position | shape+colour | all | distinct judged scenes "
        "| CLIP image-prompt cosine | CLIP image-image cosine | synthesized captions parsed / shape+colour right |",
        "|" + "---|" * 12,
    ]
    for label, d in diagnostics.items():
        s = d["prompt_following"]
        caps = d.get("synthesized_captions")
        synth = f"{caps['parsed']:.1f} / {caps['shape+color_as_judged']:.1f}" if caps else "–"
        lines.append(
            f"| {label} | {d['images']} | {s['shape']:.1f} | {s['color']:.1f} | {s['size']:.1f} | "
            f"{s['position']:.1f} | {s['shape+color']:.1f} | {s['all']:.1f} | {d['distinct_judged_scenes']} | "
            f"{d['clip_alignment']:.3f} | {d['clip_image_similarity']:.3f} | {synth} |"
        )
    return "\n".join(lines)


def render_report(results: dict[str, Any]) -> str:
    """`report.md`: settings, stage times, the tables per budget, the generators' scores and the comparison.

    Example:
        >>> text = render_report(json.loads(Path("edge-demo/results.json").read_text()))  # doctest: +SKIP
    """
    settings = results["settings"]
    protocol = results["student_protocol"]
    out = [
        f"# EDGE demo on captioned shapes (`{settings['shapes_config']}`)"
        + (" (quick smoke run)" if settings["quick"] else ""),
        "",
        "Everything below was measured by this run (`diffusers-edge demo`), offline, with the tiny stack of the "
        f"`{settings['shapes_config']}` world (docs/shapes-stack.md). Rows are explained in docs/demo.md. Generated "
        f"rows pool generation seeds {settings['generation_seeds']} x student seeds {settings['seeds']}.",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in results["seconds"].items()],
        "",
    ]
    for budget, rows in results["tables"].items():
        full = {FULL_ROW: results["full_reference"]}
        out += [f"## {budget} pairs", "", results_markdown({**rows, **full}), ""]
        c = results["comparison"][budget]
        verdict = "beats" if c["EDGE beats plain"] else "does NOT beat"
        spread = "beyond" if c["EDGE beats plain beyond the spread"] else "not beyond"
        out += [
            f"EDGE {verdict} plain generation at {budget} pairs: r_mean (last epoch) "
            f"{mean_std_cell(c['EDGE r_mean (last)'])} vs {mean_std_cell(c['plain generation r_mean (last)'])} "
            f"(difference {c['EDGE minus plain (r_mean, last)']:+.1f}, {spread} the spread of mean ± std). EDGE + "
            "k-center selection minus random real pairs: "
            f"{c['EDGE + k-center minus random coreset (r_mean, last)']:+.1f}.",
            "",
        ]
        if f"{SPLIT_ROW} r_mean (last)" in c:
            out += [
                f"Real pairs split the way EDGE splits the budget ({SPLIT_ROW}) score "
                f"{mean_std_cell(c[f'{SPLIT_ROW} r_mean (last)'])}: where the EDGE row would be if its images (from "
                "randomly drawn prompts) were real ones.",
                "",
            ]
        out += [
            "Generators, judged (`scenes`: percent of the prompt's claims that hold for the image as the scene judge "
            "reads it; `one_object`: percent of images whose attribute matches the prompt; means over generation "
            "seeds):",
            "",
            _generation_table(results["generation"][budget]),
            "",
            "How much the EDGE fine-tune changed the images (same prompts and item seeds as plain generation): mean "
            "absolute pixel difference "
            f"{results['generation'][budget]['EDGE w/o caption synthesis']['pixel_change_vs_plain']:.2f} / 255.",
            "",
        ]
    out += [
        "## Settings",
        "",
        f"Student: timm `{results['student']['image_encoder']}` (channels {results['student']['channels']}, stem "
        f"{results['student']['stem_width']}, "
        + ("random init" if results["student"]["pretrained"] is None else "starting from the stack's pretrained "
           "student image encoder")
        + f"), frozen {settings['shapes_config']}-stack BERT (CLS), protocol `{protocol['name']}`: SGD lr "
        f"{protocol['lr']}, momentum "
        f"{protocol['momentum']}, weight decay {protocol['weight_decay']}, batch {protocol['batch_size']}, "
        f"{protocol['epochs']} epochs (x{protocol['lr_gamma']} after epoch {protocol['lr_milestones']}), evaluated "
        f"every {protocol['eval_every']} epochs, {protocol['image_size']} px, test = first {settings['test_images']} "
        f"test images with their 5 captions each. Full-split reference: the first {settings['full_images']} train "
        f"images, all captions, {settings['full_epochs']} epoch(s). Seeds {settings['seeds']}: one fresh student "
        "per seed; coresets draw with the student seed, generated sets come from generation seeds "
        f"{settings['generation_seeds']} (each its own fine-tune, prompts and images). Last = final epoch; best = "
        "highest r_mean among the evaluations, selected "
        "on the test split (optimistic, as LoRS does).",
        "",
        "Fine-tune command (run in-process): `" + " ".join(results["finetune"]["command"]) + "`",
        "",
        "Every setting:",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
        "Distilled sets (load with `datasets.load_dataset(folder, split=\"train\")`):",
        "",
        *[
            f"- {budget} pairs, {label}: `{folder}`"
            for budget, sets in results["distilled_sets"].items()
            for label, folder in sets.items()
        ],
        "",
    ]
    return "\n".join(out)


_ZOOM = 4
_TILE = 176
_LINE = 12


def write_samples_grid(
    train_split: datasets.Dataset, sets: dict[str, tuple[datasets.Dataset, Path]], path: Path, columns: int = 8
) -> Path:
    """`samples.png`: rows of real images (the prompts' source images), plain-SD, EDGE w/o synthesis and EDGE
    generations, each with its captions written under it.

    Example:
        >>> write_samples_grid(shapes["train"], generated_sets, Path("samples.png"))  # doctest: +SKIP
    """
    plain = sets["plain generation"][0]
    edge_one = sets["EDGE w/o caption synthesis"][0]
    edge = sets["EDGE"][0]
    columns = min(columns, plain.num_rows, edge.num_rows)
    index = {image_id: i for i, image_id in enumerate(train_split["image_id"])}
    real_rows = [index[plain[i]["source_image_id"]] for i in range(columns)]
    real = train_split.select(real_rows)
    bands = [
        ("real (source of the prompt)", [(r["image"], r["captions"][:2]) for r in real]),
        ("plain SD (untuned)", [(r["image"], r["captions"]) for r in plain.select(range(columns))]),
        ("EDGE w/o caption synthesis", [(r["image"], r["captions"]) for r in edge_one.select(range(columns))]),
        ("EDGE (prompt + synthesized)", [(r["image"], r["captions"]) for r in edge.select(range(columns))]),
    ]
    font = ImageFont.load_default()
    wrap = 28
    text_lines = 2 + 2 * math.ceil(60 / wrap)
    tile_h = 32 * _ZOOM + 6 + text_lines * _LINE
    title_h = 18
    grid = Image.new("RGB", (columns * _TILE, len(bands) * (tile_h + title_h)), "white")
    draw = ImageDraw.Draw(grid)
    for b, (title, cells) in enumerate(bands):
        top = b * (tile_h + title_h)
        draw.text((4, top + 3), title, fill="black", font=font)
        for c, (image, captions) in enumerate(cells):
            left = c * _TILE
            grid.paste(image.convert("RGB").resize((32 * _ZOOM,) * 2, Image.NEAREST), (left + 4, top + title_h))
            y = top + title_h + 32 * _ZOOM + 4
            for k, caption in enumerate(captions):
                for line in textwrap.wrap(f"{k + 1}. {caption}", wrap)[: text_lines // 2]:
                    draw.text((left + 4, y), line, fill="black" if k == 0 else "navy", font=font)
                    y += _LINE
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def finite_numbers(value: Any) -> Iterator[float]:
    """Every number inside a JSON-like value (for checks such as `all(0 <= x <= 100 ...)`).

    Example:
        >>> list(finite_numbers({"a": [1, {"b": 2.5}], "c": "x"}))
        [1.0, 2.5]
    """
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from finite_numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from finite_numbers(item)


__all__ = ["DemoConfig", "StudentEvaluator", "run_demo", "render_report", "results_markdown", "write_samples_grid"]
