"""The selection algorithms on embeddings that prompt selection and the coreset baselines share.

* `select_random`: `num` distinct indices drawn uniformly with a seeded NumPy generator (EDGE's rule);
* `kcenter_greedy`: the greedy 2-approximation of k-center (Gonzalez 1985): start from a seeded random point,
  then repeatedly add the point farthest from everything chosen so far;
* `kmeans` / `kmeans_nearest`: k-means (k-means++ seeding, Lloyd iterations) and, per centroid, the nearest point;
* `herding`: greedily add the point that brings the chosen set's mean closest to the pool's mean (Welling 2009);
* `count_forgetting_events` / `forgetting_scores`: forgetting events of each pair over a short proxy training run
  (Toneva et al. 2019).

Pure math on tensors: this module loads no model and reads no data. Squared distances are computed in row chunks
(`_sq_distances`), so memory stays bounded on CC3M-size pools.

Example:
    >>> import torch
    >>> points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]])
    >>> sorted(i // 2 for i in kcenter_greedy(points, 2, seed=0))  # one point from each clump
    [0, 1]
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

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


def herding(embeddings: torch.Tensor, num: int) -> list[int]:
    """Greedy herding: each step adds the unchosen point nearest to the residual of the running mean.

    At step t (0-based), with S the sum of the t chosen points and m the mean of all points, the point x minimising
    `||(t + 1) * m - S - x||` is added, i.e. the one that brings the mean of the chosen set closest to m (Welling,
    ICML 2009; iCaRL's exemplar rule). Ties break to the lowest index.

    Args:
        embeddings: `[pool, dim]` points.
        num: how many to choose (1..pool).

    Returns:
        `num` distinct indices in the order chosen.

    Example:
        >>> herding(torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [10.0, 1.0]]), 3)
        [1, 2, 3]
    """
    points = embeddings.double()
    if not 1 <= num <= len(points):
        raise ValueError(f"Cannot choose {num} points by herding from a pool of {len(points)}.")
    target = points.mean(0)
    chosen_sum = torch.zeros_like(target)
    points_sq = (points * points).sum(1)
    taken = torch.zeros(len(points), dtype=torch.bool)
    chosen = []
    for step in range(num):
        residual = (step + 1) * target - chosen_sum
        distance = points_sq - 2 * points @ residual
        distance[taken] = math.inf
        index = int(torch.argmin(distance))
        chosen.append(index)
        taken[index] = True
        chosen_sum += points[index]
    return chosen


def count_forgetting_events(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events per example from a `[epochs, pool]` boolean history of "classified correctly".

    An event is a transition from correct (at one epoch) to incorrect (at the next). Examples never correct are
    given `inf`: Toneva et al. (ICLR 2019) rank never-learned examples as the most forgettable.

    Example:
        >>> count_forgetting_events(torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool))
        tensor([1., inf, 1.], dtype=torch.float64)
    """
    correct = correct.bool()
    events = (correct[:-1] & ~correct[1:]).sum(0).double()
    events[~correct.any(0)] = math.inf
    return events


def forgetting_scores(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> torch.Tensor:
    """Forgetting events of each pair over a short contrastive training run on frozen CLIP embeddings.

    A proxy retrieval model (one linear map per modality, randomly initialised with the seed, cosine logits at
    temperature 0.07, symmetric InfoNCE, Adam) is trained on the pairs in shuffled batches. Before each update a
    pair counts as correct when its image retrieves its own text *and* its text retrieves its own image within the
    batch (argmax of the row and of the column). Events are counted with `count_forgetting_events`.

    Args:
        image_embeds: `[pool, d_img]` image embeddings.
        text_embeds: `[pool, d_txt]` text embeddings of the same pairs.
        epochs: passes over the pool.
        batch_size: pairs per batch.
        lr: Adam learning rate.
        seed: seeds the initialisation and the batch order.

    Returns:
        `[pool]` float64 counts (`inf` for pairs never retrieved correctly).

    Example:
        >>> scores = forgetting_scores(torch.randn(50, 8), torch.randn(50, 8), epochs=3, seed=0)
        >>> scores.shape
        torch.Size([50])
    """
    generator = torch.Generator().manual_seed(seed)
    dim = max(image_embeds.shape[1], text_embeds.shape[1])
    image_map = torch.nn.Linear(image_embeds.shape[1], dim)
    text_map = torch.nn.Linear(text_embeds.shape[1], dim)
    for layer in (image_map, text_map):
        torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5, generator=generator)
        torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam([*image_map.parameters(), *text_map.parameters()], lr=lr)
    pool = len(image_embeds)
    correct = torch.zeros(epochs, pool, dtype=torch.bool)
    for epoch in range(epochs):
        for batch in torch.randperm(pool, generator=generator).split(batch_size):
            logits = F.normalize(image_map(image_embeds[batch].float()), dim=-1)
            logits = logits @ F.normalize(text_map(text_embeds[batch].float()), dim=-1).T / 0.07
            targets = torch.arange(len(batch))
            correct[epoch, batch] = (logits.argmax(1) == targets) & (logits.argmax(0) == targets)
            loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return count_forgetting_events(correct)
