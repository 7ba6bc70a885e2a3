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
    >>> from diffusers_edge import DemoConfig, run_demo
    >>> results = run_demo(DemoConfig.quick_preset(output_dir="edge-demo-quick"))  # doctest: +SKIP
    >>> sorted(results["tables"])  # doctest: +SKIP
    ['20']
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPProcessor

from ...captioning import Captioner
from ...data.distilled_layout import file_sha256
from ...evaluation.evaluator import RetrievalEvaluator
from ...evaluation.report import summarize_runs
from ...pipeline_edge import EDGEPipeline
from ...selection.coreset import PoolEmbeddings, embed_pool, select_coreset
from ...training import train
from ..dataset import load_captioned_shapes
from ..judge import load_judge
from .config import REAL_ROWS, SPLIT_ROW, DemoConfig
from .diagnostics import generation_diagnostics, mean_over_seeds, pixel_change
from .report import collect_results, render_report, write_samples_grid


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



class StudentEvaluator(RetrievalEvaluator):
    """Trains the protocol's retrieval student on any normalized set and scores it on a fixed test set.

    The demo's `diffusers_edge.evaluation.RetrievalEvaluator`, whose image encoder never loads timm's pretrained
    weights (`pretrained=False`): it starts from `image_encoder_checkpoint` or at random. The test images and every
    caption's frozen text feature are prepared once and shared by all rows and seeds, and `evaluate` runs the
    per-seed loop behind `evaluate_dataset`, so every row (coresets, generated sets, the full split) goes through
    the same code.

    Args:
        test: the test split (normalized form).
        config: the student protocol (`protocol_config`).
        image_encoder: timm model name; `image_encoder_kwargs` its architecture arguments.
        text_encoder: the frozen text encoder folder; `text_pooling` its pooling.
        device: where the student runs (default: CUDA when available).
        progress: show per-run progress bars.
        image_encoder_checkpoint: weights every student's image encoder starts from (`None`: random init).

    Example:
        >>> evaluator = StudentEvaluator(test, protocol_config("lors", epochs=20, image_size=32), "resnet10t",
        ...                              {"channels": [16, 32, 64, 128]}, shapes_stack_path("text-encoder"))
        >>> evaluator.evaluate(lambda seed: coreset, seeds=[0, 1, 2])["summary"]["last"]["r_mean"]  # doctest: +SKIP
        {'mean': ..., 'std': ...}
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, pretrained=False)



def _load_data(config: DemoConfig, cache: Path) -> datasets.DatasetDict:
    # the split sizes and seed the shipped stacks were trained on (docs/shapes-stack.md)
    return load_captioned_shapes(
        config.shapes_config, seed=0, num_train=5000, num_val=0, num_test=1000, cache_dir=cache
    )


def _finetune(
    config: DemoConfig,
    train_split: datasets.Dataset,
    output_dir: Path,
    seed: int | None = None,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    training_config = config.training_config(output_dir, seed, weights)
    result = train(training_config, dataset=train_split)  # train checks its settings first
    return {
        "command": ["diffusers-edge", "train", *training_config.to_argv()],
        "weights": str(result.weights_path),
        "steps": result.global_step,
        "last_logs": result.last_logs,
    }


def _pipeline(config: DemoConfig, device: str, lora_dir: Path | None = None) -> Any:
    """The stack's Stable Diffusion as an `EDGEPipeline`: untuned, or with the LoRA weights in `lora_dir`."""
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
        "num_inference_steps": config.num_inference_steps,
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
    # the data is fixed per world (seed 0, 5000 images); the key is the world and the CLIP weights that embed it
    digest = file_sha256(config.stack("clip") / "model.safetensors")[:16]
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



def _full_reference(
    config: DemoConfig, train_split: datasets.Dataset, test: datasets.Dataset, cache: Path, device: str
) -> dict[str, Any]:
    """The full-split row, cached under `cache/` by its settings (it costs more than all other rows together)."""
    student = config.student_protocol(config.full_epochs)
    name, kwargs, checkpoint = config.student_encoder()
    key = {
        "protocol": student.to_dict(),
        "world": config.shapes_config,
        "image_encoder": [name, kwargs, None if checkpoint is None else file_sha256(checkpoint)[:16]],
        "full_images": config.full_images,
        "test_images": config.test_images,
        "seeds": config.seeds,
        "text_encoder_weights": file_sha256(config.stack("text-encoder") / "model.safetensors")[:16],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"full-reference-{digest}.json"
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "cached": str(path)}
    evaluator = _evaluator(config, student, test, device)
    pool = train_split.select(range(config.full_images))
    results = evaluator.evaluate(pool, config.seeds)  # one fixed set: prepared once for every seed
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results) + "\n", encoding="utf-8")
    return {**results, "cached": None}


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



def run_demo(config: DemoConfig | None = None, log: Callable[[str], None] = _print) -> dict[str, Any]:
    """Runs the whole demo and writes its folder; returns the `results.json` content.

    Args:
        config: the settings (default: `DemoConfig()`, the ~7-minute CPU run).
        log: receives one line per stage start and end.

    Example:
        >>> results = run_demo(DemoConfig.quick_preset(output_dir="edge-demo-quick"))  # doctest: +SKIP
        >>> results["comparison"]["20"]["EDGE minus plain (r_mean, last)"]  # doctest: +SKIP
    """
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
                label: mean_over_seeds(
                    [generation_diagnostics(ds, judge, clip, train_split) for ds, _ in per_seed]
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
    student = config.student_protocol(config.student_epochs)
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
                evaluations = [evaluator.evaluate(ds, config.seeds) for ds, _ in per_seed]
                rows[str(budget)][label] = _pool_generation_seeds(evaluations, config.generation_seeds)
    with stage("full-split reference"):
        full = _full_reference(config, train_split, test, cache, device)
    with stage("report"):
        results = collect_results(config, finetunes, generated, diagnostics, rows, full, stage.seconds, device)
        first = {label: per_seed[0] for label, per_seed in generated[config.budgets[0]].items()}
        write_samples_grid(train_split, first, output_dir / "samples.png")
    results["seconds"]["total"] = time.perf_counter() - started
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (output_dir / "report.md").write_text(render_report(results), encoding="utf-8")
    log(f"[demo] done in {results['seconds']['total']:.1f} s: {output_dir / 'report.md'}")
    return results


def _pool_generation_seeds(evaluations: list[dict[str, Any]], generation_seeds: Sequence[int]) -> dict[str, Any]:
    """One row from the evaluations of the sets of several generation seeds: every run kept (tagged with its
    generation seed) and mean ± std over all of them (generation seeds x student seeds)."""
    runs = [run | {"generation_seed": g} for g, ev in zip(generation_seeds, evaluations) for run in ev["runs"]]
    pooled = dict(evaluations[0])
    pooled["runs"] = runs
    pooled["generation_seeds"] = list(generation_seeds)
    pooled["summary"] = summarize_runs(runs)
    return pooled
