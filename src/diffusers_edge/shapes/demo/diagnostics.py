"""How the demo judges a generated set: does each image follow its prompt, what do prompts leave unsaid, do
synthesized captions say what was drawn, and how aligned and how alike the images are in the tiny CLIP's space.

Example:
    >>> mean_over_seeds([{"all": 40.0, "images": 100}, {"all": 50.0, "images": 100}])
    {'all': 45.0, 'images': 100.0}
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from ...selection import embed_captions
from ...selection.coreset import embed_images
from ..judge import judge_images, read_scenes, score_claims, score_prompt_following
from ..objects import parse_caption
from ..scenes import SCENE_LABELS, claim_accuracy, scene_from_columns, unsaid_variety


def generation_diagnostics(
    distilled: datasets.Dataset, judge: Any, clip: tuple[Any, Any], source: datasets.Dataset
) -> dict[str, Any]:
    """How well a generated set follows its prompts (judged), how varied it is, and CLIP alignment and similarity.

    `one_object`: the attribute judge against `parse_caption(prompt)`, and shape+colour of synthesized captions
    against what the judge sees. `scenes`: the scene judge's claim accuracy of each prompt on its image, the variety
    of what prompts leave unsaid (next to the prompts' real source images), and the claim accuracy of synthesized
    captions against the judged scene of their image (does the captioner read what was drawn?).
    """
    images = list(distilled["image"])
    prompts = list(distilled["prompt"])
    if "background" in source.features:  # the scenes world
        diagnostics = _scene_diagnostics(distilled, judge, source)
    else:
        diagnostics = _attribute_diagnostics(distilled, judge)
    model, processor = clip
    image_embeds = embed_images(images, model, processor, batch_size=len(images))  # one batch, as before
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

    images = list(distilled["image"])
    scores = score_prompt_following(images, [parse_caption(p) for p in distilled["prompt"]], judge)
    judged = judge_images(images, judge)
    scenes = {tuple(judged[k][i] for k in sorted(judged)) for i in range(len(images))}
    diagnostics = {"prompt_following": scores, "distinct_judged_scenes": len(scenes)}
    if any(len(caps) > 1 for caps in distilled["captions"]):
        diagnostics["synthesized_captions"] = _caption_agreement(distilled, judged)
    return diagnostics


def _scene_diagnostics(distilled: datasets.Dataset, judge: Any, source: datasets.Dataset) -> dict[str, Any]:

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


def mean_over_seeds(values: list[Any]) -> Any:
    """The element-wise mean of JSON-like values of one shape (numbers averaged, everything else from the first)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: mean_over_seeds([v[k] for v in values]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return float(np.mean(values))
    return first
