"""The selection algorithms on embeddings that prompt selection and the coreset baselines share.

* `select_random`: `num` distinct indices drawn uniformly with a seeded NumPy generator (EDGE's rule);
* `kcenter_greedy`: the greedy 2-approximation of k-center (Gonzalez 1985): start from a seeded random point,
  then repeatedly add the point farthest from everything chosen so far;
* `kmeans` / `kmeans_nearest`: k-means (k-means++ seeding, Lloyd iterations) and, per centroid, the nearest point;
* `herding`: greedily add the point that brings the chosen set's mean closest to the pool's mean (Welling 2009);
* `count_forgetting_events` / `forgetting_scores`: forgetting events of each pair over a short proxy training run
  (Toneva et al. 2019).

Pure math on embeddings: this module loads no model and reads no data. Every rule that measures distances takes the
pool as a `[pool, dim]` tensor or as an on-disk `EmbeddingStore` and reads it in chunks of `CHUNK_ROWS` rows, so its
memory is a few vectors of the pool's length plus one chunk, and a store gives exactly what the same rows in memory
give (the chunks are the same in both cases).

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

from .store import EmbeddingStore, gather_rows, iter_chunks

Points = torch.Tensor | EmbeddingStore
"""A pool of embeddings: in memory (`[pool, dim]`) or on disk."""

MAX_POINTS_PER_CENTROID = 256
"""k-means trains on at most this many points per centroid, a seeded uniform sample of larger pools: the default of
faiss's `Clustering` (`max_points_per_centroid`), past which more points barely move the centroids."""


def _check_num(num: int, pool_size: int) -> None:
    if num < 1:
        raise ValueError(f"Cannot select {num} items: the number to select must be at least 1.")
    if num > pool_size:
        raise ValueError(f"Cannot select {num} distinct items from a pool of {pool_size}.")


def select_random(pool_size: int, num: int, seed: int) -> list[int]:
    """`num` distinct indices of `range(pool_size)` drawn uniformly with a seeded NumPy generator (EDGE's rule).

    Needs only the pool's size, so a streamed pool is counted in one pass and the chosen rows read in another.

    Example:
        >>> select_random(10, 3, seed=0) == select_random(10, 3, seed=0)
        True
    """
    _check_num(num, pool_size)
    return np.random.default_rng(seed).choice(pool_size, size=num, replace=False).tolist()


def _sq_distances(points: torch.Tensor, centers: torch.Tensor, points_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances `[len(points), len(centers)]` of rows held in memory, as |x|^2 + |c|^2 - 2 x.c."""
    points_sq = (points * points).sum(dim=1) if points_sq is None else points_sq
    centers_sq = (centers * centers).sum(dim=1)
    dist = torch.addmm(centers_sq.unsqueeze(0), points, centers.T, alpha=-2.0)
    return dist.add_(points_sq.unsqueeze(1)).clamp_min_(0.0)


def _row_norms(points: Points, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`[pool]` squared norms, a chunk at a time.

    Every per-chunk result goes into one preallocated vector: kept as separate small tensors, they are placed in the
    freed blocks of the chunk-sized temporaries, which then cannot be reused, and the process grew by the whole
    pool's size (488 MiB at 1M x 128).
    """
    out = torch.empty(len(points), dtype=dtype)
    for start, chunk in iter_chunks(points):
        chunk = chunk.to(dtype)
        torch.sum(chunk * chunk, dim=1, out=out[start : start + len(chunk)])
    return out


def _distances_to(points: Points, center: torch.Tensor, points_sq: torch.Tensor) -> torch.Tensor:
    """`[pool]` squared distances of every point to one `[1, dim]` center, a chunk at a time (into one vector, as
    `_row_norms`)."""
    out = torch.empty(len(points))
    for start, chunk in iter_chunks(points):
        out[start : start + len(chunk)] = _sq_distances(chunk, center, points_sq[start : start + len(chunk)])[:, 0]
    return out


def kcenter_greedy(embeddings: Points, num: int, seed: int = 0) -> list[int]:
    """Greedy k-center: a seeded random first point, then always the point farthest from the chosen set.

    Farthest-point traversal is the classic 2-approximation of the k-center objective (Gonzalez, 1985): it
    minimises the largest distance from any point to its nearest chosen point, i.e. it maximises coverage.
    Ties break to the lowest index. Runs in `num` passes over the pool, each one distance per point; holds the
    pool's nearest-chosen distances (4 bytes a point) and one chunk.

    Args:
        embeddings: `[pool, dim]` float tensor (e.g. L2-normalised CLIP text embeddings) or an `EmbeddingStore`.
        num: how many points to choose.
        seed: picks the first point.

    Returns:
        `num` distinct indices in the order chosen.

    Example:
        >>> sorted(kcenter_greedy(torch.tensor([[0.0], [1.0], [10.0]]), 2, seed=0))
        [0, 2]
    """
    _check_num(num, len(embeddings))
    points_sq = _row_norms(embeddings)
    first = int(np.random.default_rng(seed).integers(len(embeddings)))
    chosen = [first]
    nearest = _distances_to(embeddings, gather_rows(embeddings, [first]), points_sq)
    for _ in range(num - 1):
        nearest[chosen] = -1.0  # a duplicate of a chosen point is never picked again
        index = int(torch.argmax(nearest))
        chosen.append(index)
        nearest = torch.minimum(nearest, _distances_to(embeddings, gather_rows(embeddings, [index]), points_sq))
    return chosen


def _kmeans_pp(points: torch.Tensor, points_sq: torch.Tensor, num: int, rng: np.random.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new center drawn with probability ∝ D(x)^2."""
    centers = [int(rng.integers(len(points)))]
    nearest = _distances_to(points, points[centers[0] : centers[0] + 1], points_sq).double()
    for _ in range(num - 1):
        total = float(nearest.sum())
        if total <= 0:  # fewer distinct points than clusters: take unused points in order
            index = next(i for i in range(len(points)) if i not in centers)
        else:
            index = int(rng.choice(len(points), p=(nearest / total).numpy()))
        centers.append(index)
        nearest = torch.minimum(nearest, _distances_to(points, points[index : index + 1], points_sq).double())
    return points[centers].clone()


def _training_points(embeddings: Points, num: int, seed: int, max_points_per_centroid: int) -> torch.Tensor:
    """The points k-means is fitted on: the whole pool, or a seeded sample of `num * max_points_per_centroid`."""
    limit = num * max_points_per_centroid
    if len(embeddings) <= limit:
        return embeddings.float() if isinstance(embeddings, torch.Tensor) else embeddings.load()
    sample = np.random.default_rng(np.random.SeedSequence([seed, limit])).choice(len(embeddings), limit, replace=False)
    return gather_rows(embeddings, np.sort(sample).tolist())


def kmeans(
    embeddings: Points,
    num: int,
    seed: int = 0,
    iterations: int = 50,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns the `[num, dim]` centroids.

    Pools larger than `num * max_points_per_centroid` are fitted on a seeded uniform sample of that many points
    (as faiss does), so memory and time of the fit depend on `num`, not on the pool. An empty cluster keeps its
    previous centroid. Stops early when the assignment no longer changes.

    Example:
        >>> kmeans(torch.tensor([[0.0], [0.2], [10.0], [10.2]]), 2, seed=0).sort(dim=0).values.squeeze(1)
        tensor([ 0.1000, 10.1000])
    """
    _check_num(num, len(embeddings))
    points = _training_points(embeddings, num, seed, max_points_per_centroid)
    points_sq = _row_norms(points)
    centers = _kmeans_pp(points, points_sq, num, np.random.default_rng(seed))
    assignment = None
    for _ in range(iterations):
        new_assignment = torch.empty(len(points), dtype=torch.long)  # one vector: see `_row_norms`
        for start, chunk in iter_chunks(points):
            distances = _sq_distances(chunk, centers, points_sq[start : start + len(chunk)])
            new_assignment[start : start + len(chunk)] = distances.argmin(dim=1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = torch.zeros_like(centers).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return centers


_KEY_ROWS = 1024  # rows turned into int64 keys at once: 8 MB at 1000 centroids, where a whole chunk took 66 MB


def _nearest_points(points: Points, centers: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per center, its `keep` nearest points, nearest first, ties to the lower index, in one pass over the pool:
    `[keep, centers]` squared distances and indices.

    A squared distance (a non-negative float32) keeps its order when its bits are read as an integer, so
    `bits << 32 | index` orders candidates by distance, then index, in one int64 `topk`.
    """
    keys = torch.empty(keep + _KEY_ROWS, len(centers), dtype=torch.int64)  # the candidates, then one piece's keys
    kept = 0
    for start, chunk in iter_chunks(points):
        distances = _sq_distances(chunk, centers)
        for offset in range(0, len(chunk), _KEY_ROWS):  # keys are unique, so the pieces do not change the result
            piece = distances[offset : offset + _KEY_ROWS]
            rows = torch.arange(start + offset, start + offset + len(piece)).unsqueeze(1)
            fresh = keys[kept : kept + len(piece)]
            fresh.copy_(piece.view(torch.int32)).bitwise_left_shift_(32).bitwise_or_(rows)
            best = torch.topk(keys[: kept + len(piece)], min(keep, kept + len(piece)), dim=0, largest=False).values
            kept = len(best)
            keys[:kept] = best  # the buffers are reused: no small tensor outlives a chunk (see `_row_norms`)
    best = keys[:kept]
    return best.bitwise_right_shift(32).to(torch.int32).view(torch.float32), best.bitwise_and(0xFFFFFFFF)


def kmeans_nearest(
    embeddings: Points,
    num: int,
    seed: int = 0,
    iterations: int = 50,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
) -> list[int]:
    """For each k-means centroid, the index of the nearest point not already taken by another centroid.

    Centroids are served in order of how close their nearest point is (ties: the lower centroid), so every centroid
    gets a distinct point; ties between points break to the lower index. One pass over the pool keeps each
    centroid's 8 nearest points; a centroid whose 8 are all taken (rare: only
    near-duplicate points share them) gets its nearest free point from one more pass.

    Example:
        >>> sorted(kmeans_nearest(torch.tensor([[0.0], [0.2], [10.0], [10.2]]), 2, seed=0)) in ([0, 2], [0, 3],
        ...                                                                                   [1, 2], [1, 3])
        True
    """
    centers = kmeans(embeddings, num, seed, iterations, max_points_per_centroid)
    nearest, candidates = _nearest_points(embeddings, centers, keep=8)
    taken: set[int] = set()
    chosen = []
    for c in torch.argsort(nearest[0], stable=True).tolist():
        free = [i for i in candidates[:, c].tolist() if i not in taken]
        if not free:
            _, column = _nearest_points(embeddings, centers[c : c + 1], keep=len(taken) + 1)
            free = [i for i in column[:, 0].tolist() if i not in taken]
        taken.add(free[0])
        chosen.append(free[0])
    return chosen


def herding(embeddings: Points, num: int) -> list[int]:
    """Greedy herding: each step adds the unchosen point nearest to the residual of the running mean.

    At step t (0-based), with S the sum of the t chosen points and m the mean of all points, the point x minimising
    `||(t + 1) * m - S - x||` is added, i.e. the one that brings the mean of the chosen set closest to m (Welling,
    ICML 2009; iCaRL's exemplar rule). Ties break to the lowest index. Computed in float64, one pass over the pool
    per step.

    Args:
        embeddings: `[pool, dim]` points, or an `EmbeddingStore`.
        num: how many to choose (1..pool).

    Returns:
        `num` distinct indices in the order chosen.

    Example:
        >>> herding(torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [10.0, 1.0]]), 3)
        [1, 2, 3]
    """
    if not 1 <= num <= len(embeddings):
        raise ValueError(f"Cannot choose {num} points by herding from a pool of {len(embeddings)}.")
    total = sum(chunk.double().sum(0) for _, chunk in iter_chunks(embeddings))
    target, points_sq = total / len(embeddings), _row_norms(embeddings, torch.float64)
    chosen_sum = torch.zeros_like(target)
    taken = torch.zeros(len(embeddings), dtype=torch.bool)
    chosen = []
    for step in range(num):
        residual = (step + 1) * target - chosen_sum
        best, index = math.inf, -1
        for start, chunk in iter_chunks(embeddings):
            stop = start + len(chunk)
            distance = points_sq[start:stop] - 2 * chunk.double() @ residual
            distance[taken[start:stop]] = math.inf
            position = int(torch.argmin(distance))
            if distance[position] < best:  # strict: an equal value in a later chunk loses to the lower index
                best, index = float(distance[position]), start + position
        chosen.append(index)
        taken[index] = True
        chosen_sum += gather_rows(embeddings, [index])[0].double()
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
