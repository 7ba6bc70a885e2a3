"""The demo's outputs: the `results.json` content, `report.md` and the `samples.png` grid.

Example:
    >>> list(finite_numbers({"a": [1, {"b": 2.5}], "c": "x"}))
    [1.0, 2.5]
"""

from __future__ import annotations

import json
import math
import platform
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image, ImageDraw, ImageFont

from ...evaluation.report import mean_std_cell, results_table
from .config import FULL_ROW, ROW_NOTES, SPLIT_ROW, DemoConfig


def collect_results(
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
        "student_protocol": config.student_protocol(config.student_epochs).to_dict(),
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
        out += [f"## {budget} pairs", "", results_table({**rows, **full}, with_epochs=True), ""]
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
