"""Which captions a distilled set is generated from: random (EDGE), greedy k-center, or k-means prototypes.

EDGE's released code draws the prompts with `random.sample(train_captions, N)` (REFERENCE.md section 1). Choosing
prompts that *cover* the caption distribution is the lever training-free methods pull (D4M, PDS: k-means
prototypes; REFERENCE.md section 3), so two coverage rules are offered on L2-normalised CLIP text embeddings:

* `kcenter_greedy`: the greedy 2-approximation of k-center (Gonzalez 1985): start from a seeded random point,
  then repeatedly add the point farthest from everything chosen so far;
* `kmeans_nearest`: k-means (k-means++ seeding, Lloyd iterations) and, per centroid, the nearest caption.

This module is pure math on embeddings plus `embed_captions` (a CLIP text tower); it imports no pipeline.

Example:
    >>> import torch
    >>> points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]])
    >>> sorted(i // 2 for i in kcenter_greedy(points, 2, seed=0))  # one point from each clump
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

SelectionFn = Callable[[list[str], int, int], Sequence[int]]
"""A custom rule: `fn(captions, num, seed) -> num distinct indices into captions`."""

SELECTION_METHODS = ("random", "kcenter", "kmeans")
EMBEDDING_METHODS = ("kcenter", "kmeans")
_CHUNK = 8192  # rows of the distance matrix computed at once: bounded memory on CC3M-size pools


def _check_num(num: int, pool_size: int) -> None:
    if num < 1:
        raise ValueError(f"Cannot select {num} items: the number to select must be at least 1.")
    if num > pool_size:
        raise ValueError(f"Cannot select {num} distinct items from a pool of {pool_size}.")


def select_random(pool_size: int, num: int, seed: int) -> list[int]:
    """`num` distinct indices of `range(pool_size)` drawn uniformly with a seeded NumPy generator (EDGE's rule).

    Example:
        >>> select_random(10, 3, seed=0) == select_random(10, 3, seed=0)
        True
    """
    _check_num(num, pool_size)
    return np.random.default_rng(seed).choice(pool_size, size=num, replace=False).tolist()


def _sq_distances(points: torch.Tensor, centers: torch.Tensor, points_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances `[len(points), len(centers)]` as |x|^2 + |c|^2 - 2 x.c, in row chunks.

    `points_sq` (the rows' squared norms) can be passed in when the same points are measured many times.
    """
    points_sq = (points * points).sum(dim=1) if points_sq is None else points_sq
    centers_sq = (centers * centers).sum(dim=1)
    out = []
    for start in range(0, len(points), _CHUNK):
        dist = torch.addmm(centers_sq.unsqueeze(0), points[start : start + _CHUNK], centers.T, alpha=-2.0)
        out.append(dist.add_(points_sq[start : start + _CHUNK].unsqueeze(1)).clamp_min_(0.0))
    return torch.cat(out)


def kcenter_greedy(embeddings: torch.Tensor, num: int, seed: int = 0) -> list[int]:
    """Greedy k-center: a seeded random first point, then always the point farthest from the chosen set.

    Farthest-point traversal is the classic 2-approximation of the k-center objective (Gonzalez, 1985): it
    minimises the largest distance from any point to its nearest chosen point, i.e. it maximises coverage.
    Ties break to the lowest index. Runs in O(num * len(embeddings)) distance evaluations.

    Args:
        embeddings: `[pool, dim]` float tensor (e.g. L2-normalised CLIP text embeddings).
        num: how many points to choose.
        seed: picks the first point.

    Returns:
        `num` distinct indices in the order chosen.

    Example:
        >>> sorted(kcenter_greedy(torch.tensor([[0.0], [1.0], [10.0]]), 2, seed=0))
        [0, 2]
    """
    _check_num(num, len(embeddings))
    points = embeddings.float()
    points_sq = (points * points).sum(dim=1)
    first = int(np.random.default_rng(seed).integers(len(points)))
    chosen = [first]
    nearest = _sq_distances(points, points[first : first + 1], points_sq).squeeze(1)
    for _ in range(num - 1):
        nearest[chosen] = -1.0  # a duplicate of a chosen point is never picked again
        index = int(torch.argmax(nearest))
        chosen.append(index)
        nearest = torch.minimum(nearest, _sq_distances(points, points[index : index + 1], points_sq).squeeze(1))
    return chosen


def _kmeans_pp(points: torch.Tensor, num: int, rng: np.random.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new center drawn with probability ∝ D(x)^2."""
    points_sq = (points * points).sum(dim=1)
    centers = [int(rng.integers(len(points)))]
    nearest = _sq_distances(points, points[centers[0] : centers[0] + 1], points_sq).squeeze(1).double()
    for _ in range(num - 1):
        total = float(nearest.sum())
        if total <= 0:  # fewer distinct points than clusters: take unused points in order
            index = next(i for i in range(len(points)) if i not in centers)
        else:
            index = int(rng.choice(len(points), p=(nearest / total).numpy()))
        centers.append(index)
        distances = _sq_distances(points, points[index : index + 1], points_sq).squeeze(1).double()
        nearest = torch.minimum(nearest, distances)
    return points[centers].clone()


def kmeans(embeddings: torch.Tensor, num: int, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns the `[num, dim]` centroids.

    An empty cluster keeps its previous centroid. Stops early when the assignment no longer changes.

    Example:
        >>> kmeans(torch.tensor([[0.0], [0.2], [10.0], [10.2]]), 2, seed=0).sort(dim=0).values.squeeze(1)
        tensor([ 0.1000, 10.1000])
    """
    _check_num(num, len(embeddings))
    points = embeddings.float()
    points_sq = (points * points).sum(dim=1)
    centers = _kmeans_pp(points, num, np.random.default_rng(seed))
    assignment = None
    for _ in range(iterations):
        new_assignment = _sq_distances(points, centers, points_sq).argmin(dim=1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = torch.zeros_like(centers).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


def kmeans_nearest(embeddings: torch.Tensor, num: int, seed: int = 0, iterations: int = 50) -> list[int]:
    """For each k-means centroid, the index of the nearest point not already taken by another centroid.

    Centroids are served in order of how close their nearest point is, so every centroid gets a distinct point.

    Example:
        >>> sorted(kmeans_nearest(torch.tensor([[0.0], [0.2], [10.0], [10.2]]), 2, seed=0)) in ([0, 2], [0, 3],
        ...                                                                                   [1, 2], [1, 3])
        True
    """
    centers = kmeans(embeddings, num, seed=seed, iterations=iterations)
    distances = _sq_distances(embeddings.float(), centers)  # [pool, num]
    order = torch.argsort(distances.min(dim=0).values).tolist()
    taken: set[int] = set()
    chosen = []
    for c in order:
        for index in torch.argsort(distances[:, c]).tolist():
            if index not in taken:
                taken.add(index)
                chosen.append(index)
                break
    return chosen


@torch.no_grad()
def embed_captions(
    captions: Sequence[str],
    clip_model: torch.nn.Module,
    clip_processor,
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised CLIP text embeddings of `captions`, `[len(captions), projection_dim]` float32 on the CPU.

    Args:
        captions: the texts.
        clip_model: a `transformers.CLIPModel` (anything with `get_text_features`).
        clip_processor: its `CLIPProcessor` or tokenizer (called with `text=`, padding and truncation).
        batch_size: texts encoded at once.

    Example:
        >>> from transformers import CLIPModel, CLIPProcessor
        >>> model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")
        >>> processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")
        >>> embed_captions(["a red circle", "a blue square"], model, processor).shape
        torch.Size([2, 512])
    """
    device = next(clip_model.parameters()).device
    out = []
    for start in range(0, len(captions), batch_size):
        inputs = clip_processor(
            text=list(captions[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        )
        features = clip_model.get_text_features(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
        )
        if not isinstance(features, torch.Tensor):  # some versions return a model output
            features = features.pooler_output
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out)


def select_captions(
    captions: Sequence[str],
    num: int,
    method: str | SelectionFn = "random",
    seed: int = 0,
    embeddings: torch.Tensor | None = None,
) -> list[int]:
    """Picks `num` distinct captions by `method`; returns their indices into `captions`.

    Args:
        captions: the pool (e.g. every training caption).
        num: how many to pick.
        method: `"random"`, `"kcenter"`, `"kmeans"`, or a callable `fn(captions, num, seed) -> indices`.
        seed: the selection seed.
        embeddings: `[len(captions), dim]` embeddings; required by `"kcenter"` and `"kmeans"`
            (see `embed_captions`).

    Example:
        >>> select_captions(["a", "b", "c"], 2, "random", seed=0)
        [1, 2]
    """
    _check_num(num, len(captions))
    if callable(method):
        chosen = [int(i) for i in method(list(captions), num, seed)]
        if len(chosen) != num or len(set(chosen)) != num or not all(0 <= i < len(captions) for i in chosen):
            raise ValueError(
                f"Selection callable {getattr(method, '__name__', method)!r} must return {num} distinct indices "
                f"in [0, {len(captions)}), got {chosen[:20]}."
            )
        return chosen
    if method == "random":
        return select_random(len(captions), num, seed)
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"Unknown selection {method!r}; use one of {SELECTION_METHODS} or a callable.")
    if embeddings is None or len(embeddings) != len(captions):
        raise ValueError(f"selection={method!r} needs one embedding per caption ({len(captions)}).")
    if method == "kcenter":
        return kcenter_greedy(embeddings, num, seed=seed)
    return kmeans_nearest(embeddings, num, seed=seed)
