"""Coreset baselines on real image-text pairs, in the normalized form so that they are evaluated like distilled sets.

The literature defines these baselines for pairs inconsistently (docs/method.md, "Coreset baselines and prompt
selection"), so every choice is explicit:

* **budget**: `num_pairs` counts (image, caption) pairs, as for a distilled set. With `captions_per_image=1` (the
  default) that is `num_pairs` images with one caption each; with `captions_per_image=k` (or `None` = all captions)
  images are taken in the method's order until the budget is reached, the last one keeping only the captions
  that fit, so the result holds **exactly** `num_pairs` pairs.
* **which captions**: an image keeps `captions_per_image` of its captions drawn with the seed (all when `None`).
* **embedding space** (herding, k-center): `image` = the L2-normalised CLIP image embedding; `text` = the
  L2-normalised mean of the L2-normalised CLIP embeddings of the kept captions; `joint` = the concatenation of both
  (each L2-normalised, as in EDGE's diversity loss). The CLIP model is a `transformers.CLIPModel`
  (default `openai/clip-vit-base-patch32`, the model of EDGE's loss space).

Methods:

| method       | rule                                                                                          |
|--------------|-----------------------------------------------------------------------------------------------|
| `random`     | a seeded uniform permutation of the images                                                    |
| `herding`    | greedy: add the point **nearest** to the residual `(t+1)*mean - sum(chosen)` (Welling 2009)     |
| `kcenter`    | greedy farthest-first traversal from a seeded random point (Gonzalez 1985; Sener & Savarese 2018) |
| `forgetting` | most forgetting events first (Toneva et al. 2019), see `forgetting_scores`                     |
| `full`       | the whole set, every caption (the upper reference; no budget)                                 |

Example:
    >>> coreset = select_coreset(train, "herding", num_pairs=100, space="joint", clip_model=DEFAULT_CLIP_MODEL)
    >>> sum(len(c) for c in coreset["captions"])
    100
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from ..clip_features import DEFAULT_CLIP_MODEL, clip_features
from ..data.format import CAPTIONS_COLUMN, IMAGE_COLUMN, validate_normalized
from .algorithms import forgetting_scores, herding, kcenter_greedy
from .prompts import embed_captions

METHODS = ("random", "herding", "kcenter", "forgetting", "full")
SPACES = ("image", "text", "joint")


def _load_clip(clip_model: str | Path, device: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_model)).to(device).eval().requires_grad_(False)
    return model, CLIPProcessor.from_pretrained(str(clip_model))


@dataclass
class PoolEmbeddings:
    """CLIP embeddings of a pool, computed once and reused by every seed's selection.

    Attributes:
        image: `[rows, d]` L2-normalised image embeddings (`None` when not computed).
        captions: per row, `[captions, d]` L2-normalised embeddings of every caption of that row.
    """

    image: torch.Tensor | None
    captions: list[torch.Tensor]

    def text(self, kept: Sequence[Sequence[int]]) -> torch.Tensor:
        """Per row: the L2-normalised mean of the embeddings of the captions at positions `kept[row]`."""
        return F.normalize(torch.stack([self.captions[row][list(k)].mean(0) for row, k in enumerate(kept)]), dim=-1)


@torch.inference_mode()
def embed_pool(
    dataset: datasets.Dataset,
    clip_model: str | Path = DEFAULT_CLIP_MODEL,
    device: str | None = None,
    batch_size: int = 256,
    need_images: bool = True,
) -> PoolEmbeddings:
    """CLIP embeddings of every image and every caption of a normalized dataset (float32, CPU).

    Args:
        dataset: the pool.
        clip_model: a `CLIPModel` id or folder (with its `CLIPProcessor`).
        device: where CLIP runs (default: CUDA when available).
        batch_size: images or texts per forward pass.
        need_images: `False` skips the image side (for herding / k-center in the `text` space).

    Example:
        >>> embeddings = embed_pool(train, "openai/clip-vit-base-patch32")
        >>> embeddings.image.shape, embeddings.captions[0].shape
        (torch.Size([29000, 512]), torch.Size([5, 512]))
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = _load_clip(clip_model, device)
    captions = [list(c) for c in dataset[CAPTIONS_COLUMN]]
    flat = embed_captions([c for row in captions for c in row], model, processor, batch_size=batch_size)
    per_row = list(flat.split([len(row) for row in captions]))
    if not need_images:
        return PoolEmbeddings(None, per_row)
    images = dataset.select_columns([IMAGE_COLUMN])  # decoded a batch at a time
    chunks = [
        embed_images(images[start : start + batch_size][IMAGE_COLUMN], model, processor, batch_size)
        for start in range(0, dataset.num_rows, batch_size)
    ]
    return PoolEmbeddings(torch.cat(chunks), per_row)


@torch.inference_mode()
def embed_images(images: Sequence[Any], clip_model: Any, clip_processor: Any, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised CLIP image embeddings of PIL images, in order (float32, on the CPU); the image side of
    `embed_captions`.

    Example:
        >>> embed_images(distilled["image"], model, processor).shape  # doctest: +SKIP
        torch.Size([100, 512])
    """
    device = next(clip_model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        pixels = clip_processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        features = clip_features(clip_model.get_image_features(pixel_values=pixels.to(device)))
        out.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out)


def iter_kept_positions(counts: Sequence[int], captions_per_image: int | None, seed: int) -> Iterator[list[int]]:
    """Per row, the positions of the captions kept: all, or `captions_per_image` drawn with the seed (in order); one
    row at a time, so a streamed pool draws the same captions without holding a list per row.

    Example:
        >>> list(iter_kept_positions([3, 1, 2], None, seed=0))
        [[0, 1, 2], [0], [0, 1]]
    """
    rng = np.random.default_rng(seed)
    for n in np.asarray(counts).tolist():
        if captions_per_image is None or n <= captions_per_image:
            yield list(range(n))
        else:
            yield sorted(rng.choice(n, size=captions_per_image, replace=False).tolist())


def images_for_budget(kept_counts: Sequence[int], num_pairs: int | None, captions_per_image: int | None) -> int:
    """How many images a coreset of `num_pairs` pairs may need (the rule orders at least that many), given how many
    captions each image keeps; `ValueError` for a budget below 1 or above the pool's pairs.

    Example:
        >>> images_for_budget([2, 2, 1], 3, captions_per_image=2)
        3
    """
    if num_pairs is None or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive number of (image, caption) pairs, got {num_pairs!r}.")
    total = int(np.sum(kept_counts))
    if num_pairs > total:
        raise ValueError(
            f"The budget of {num_pairs} pairs exceeds the pool: {len(kept_counts)} images with "
            f"captions_per_image={captions_per_image} give {total} pairs."
        )
    return min(len(kept_counts), math.ceil(num_pairs / int(np.min(kept_counts))))


def fill_budget(order: Sequence[int], kept_counts: Sequence[int], num_pairs: int) -> list[tuple[int, int]]:
    """The rows of `order` until `num_pairs` pairs are reached, each with how many of its kept captions it gives
    (all, or for the last row those that fit).

    Example:
        >>> fill_budget([2, 0, 1], [2, 2, 2], 3)
        [(2, 2), (0, 1)]
    """
    chosen, remaining = [], num_pairs
    for row in order:
        take = min(int(kept_counts[row]), remaining)
        chosen.append((row, take))
        remaining -= take
        if remaining == 0:
            break
    return chosen


def _order(
    method: str,
    num_rows: int,
    kept: list[list[int]],
    num_images: int,
    space: str,
    embeddings: PoolEmbeddings | None,
    seed: int,
    forgetting_epochs: int,
) -> list[int]:
    """The first `num_images` (at least) rows in the order `method` picks them."""
    if method == "random":
        return np.random.default_rng(seed).permutation(num_rows).tolist()
    image, text = embeddings.image, embeddings.text(kept)
    if image is None and (method == "forgetting" or space != "text"):
        raise ValueError(f"{method} in the {space!r} space needs image embeddings; embed_pool(need_images=True).")
    if method == "forgetting":
        scores = forgetting_scores(image, text, epochs=forgetting_epochs, seed=seed)
        tie_break = np.random.default_rng(seed).permutation(num_rows)
        return sorted(tie_break.tolist(), key=lambda row: -scores[row])  # stable: ties keep the seeded order
    points = {"image": image, "text": text}.get(space)
    if points is None:
        points = torch.cat([image, text], dim=1)
    if method == "herding":
        return herding(points, num_images)
    return kcenter_greedy(points, num_images, seed=seed)


def select_coreset(
    dataset: datasets.Dataset | datasets.IterableDataset,
    method: str,
    num_pairs: int | None = None,
    *,
    space: str = "joint",
    captions_per_image: int | None = 1,
    clip_model: str | Path = DEFAULT_CLIP_MODEL,
    seed: int = 0,
    device: str | None = None,
    forgetting_epochs: int = 20,
    embeddings: PoolEmbeddings | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """A coreset of real pairs with exactly `num_pairs` (image, caption) pairs, in the normalized form.

    Args:
        dataset: the pool (a normalized dataset, e.g. the training split); extra columns are kept. A streamed
            `IterableDataset` (CC3M-size shards) is read in passes and never held: see
            `diffusers_edge.selection.coreset_stream` (random, herding and k-center only).
        method: `random`, `herding`, `kcenter`, `forgetting` or `full` (the whole pool; `num_pairs` is ignored).
        num_pairs: the budget in (image, caption) pairs.
        space: the embedding space of herding and k-center: `image`, `text` or `joint`. Forgetting always uses
            both modalities (it trains a pair model) and accepts only `joint`.
        captions_per_image: captions kept per image (drawn with the seed); `None` keeps all.
        clip_model: the `CLIPModel` id or folder whose embeddings define the space (unused by `random`).
        seed: seeds caption choice, the random order, k-center's first point and the forgetting run.
        device: where CLIP runs.
        forgetting_epochs: length of the forgetting proxy run.
        embeddings: the pool's `embed_pool` result, to reuse across seeds (default: computed here with
            `clip_model`; never computed for `random`).
        cache_dir: where a streamed pool's embeddings are stored (default `$HF_HOME/diffusers_edge/embeddings`).

    Returns:
        The selected rows in the method's order, their `captions` replaced by the kept captions.

    Raises:
        ValueError: unknown method or space, a budget below 1 or above the pairs available, forgetting with a
            space other than `joint`, or a pool not in the normalized form.

    Example:
        >>> coreset = select_coreset(train, "kcenter", num_pairs=100, space="image", seed=0)
        >>> coreset.num_rows
        100
    """
    if method not in METHODS:
        raise ValueError(f"Unknown coreset method {method!r}; choose one of {METHODS}.")
    if space not in SPACES:
        raise ValueError(f"Unknown embedding space {space!r}; choose one of {SPACES}.")
    if method == "forgetting" and space != "joint":
        raise ValueError("The forgetting baseline trains on image and text together: use space='joint'.")
    if captions_per_image is not None and captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1 or None (all), got {captions_per_image}.")
    if isinstance(dataset, datasets.IterableDataset):
        from .coreset_stream import select_coreset_streamed

        return select_coreset_streamed(
            dataset, method, num_pairs, space=space, captions_per_image=captions_per_image, clip_model=clip_model,
            seed=seed, device=device, cache_dir=cache_dir,
        )  # fmt: skip
    validate_normalized(dataset, name="the coreset pool")
    if method == "full":
        return dataset
    captions = [list(c) for c in dataset[CAPTIONS_COLUMN]]
    positions = list(iter_kept_positions([len(c) for c in captions], captions_per_image, seed))
    num_images = images_for_budget([len(p) for p in positions], num_pairs, captions_per_image)
    if method != "random" and embeddings is None:
        need_images = method == "forgetting" or space != "text"
        embeddings = embed_pool(dataset, clip_model, device=device, need_images=need_images)
    order = _order(method, dataset.num_rows, positions, num_images, space, embeddings, seed, forgetting_epochs)
    chosen = fill_budget(order, [len(p) for p in positions], num_pairs)
    rows = [row for row, _ in chosen]
    kept = [[captions[row][p] for p in positions[row][:n]] for row, n in chosen]
    subset = dataset.select(rows).remove_columns([CAPTIONS_COLUMN])
    return subset.add_column(CAPTIONS_COLUMN, kept, feature=dataset.features[CAPTIONS_COLUMN])
