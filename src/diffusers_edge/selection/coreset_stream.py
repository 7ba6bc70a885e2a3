"""Coreset baselines over a streamed pool (CC3M-size shards): `select_coreset` on an `IterableDataset`.

The rules are those of `diffusers_edge.selection.coreset` (the same budget, caption draw and embedding spaces), run
in passes over the stream and on `EmbeddingStore`s instead of on tensors in memory:

1. one pass over the caption columns counts each row's captions and fingerprints them (`stream_caption_counts`);
2. for herding and k-center, the captions are embedded into the store `distill` uses for the same model and source,
   the images (decoded a batch at a time) into a second store, and the points of the chosen space (per row the
   normalised mean of its kept captions, the image, or both side by side) are written to a third, keyed also by the
   seed and `captions_per_image`;
3. the rule runs on that store (`herding`, `kcenter_greedy`), or for `random` on the row count alone;
4. a last pass keeps the chosen rows, images as stored (not re-encoded).

Memory is a few numbers per row (caption counts, the rule's distances) plus a chunk, whatever the pool's size. On
the same rows, every step computes what the in-memory path computes, so both choose the same coreset. `forgetting`
trains a model on every pair at once and `full` is the whole pool: both are refused for a stream.

Example:
    >>> stream = load_source("cc3m/*.tar", streaming=True, image_column="jpg", caption_column="txt")
    >>> coreset = select_coreset(stream, "kcenter", num_pairs=1000, space="text", cache_dir="stores")
    >>> coreset.num_rows  # a datasets.Dataset, evaluated like any distilled set
    1000
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from ..caption_pool import CaptionPool, model_key, stream_caption_counts
from ..data.format import CAPTIONS_COLUMN, IMAGE_COLUMN
from .algorithms import herding, kcenter_greedy
from .coreset import _load_clip, embed_images, fill_budget, images_for_budget, iter_kept_positions
from .store import CHUNK_ROWS, EmbeddingStore

STREAM_METHODS = ("random", "herding", "kcenter")


def _image_store(stream, counts, fingerprint, clip_model, processor, cache_dir, batch_size) -> EmbeddingStore:
    """Every row's L2-normalised CLIP image embedding, images decoded `batch_size` at a time (resumable)."""
    info = {"model": model_key(clip_model), "source": fingerprint, "what": "image embeddings"}
    store = EmbeddingStore.open_or_create(cache_dir, len(counts), clip_model.config.projection_dim, info)
    images = stream.select_columns([IMAGE_COLUMN]).skip(store.rows_done)
    for batch in images.iter(batch_size=batch_size):
        store.append(embed_images(batch[IMAGE_COLUMN], clip_model, processor, batch_size))
    return store


def _points_store(captions, images, counts, space, captions_per_image, seed, cache_dir) -> EmbeddingStore:
    """The points of `space` per row, written a block of rows at a time (reused when already complete)."""
    if space == "image":
        return images
    dim = captions.dim + (images.dim if space == "joint" else 0)
    info = {**captions.info, "what": f"{space} coreset points", "seed": seed, "captions_per_image": captions_per_image}
    store = EmbeddingStore.open_or_create(cache_dir, len(counts), dim, info)
    if store.complete:
        return store
    store = EmbeddingStore.create(store.folder, len(counts), dim, info)  # a partial one is rewritten from the start
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    kept = iter_kept_positions(counts, captions_per_image, seed)
    for start in range(0, len(counts), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(counts))
        block = captions.read(int(offsets[start]), int(offsets[stop]))
        first = offsets[start:stop] - offsets[start]
        means = [block[int(first[row - start]) + torch.tensor(next(kept))].mean(0) for row in range(start, stop)]
        points = F.normalize(torch.stack(means), dim=-1)
        if space == "joint":
            points = torch.cat([images.read(start, stop), points], dim=1)
        store.append(points)
    return store


def select_coreset_streamed(
    stream: datasets.IterableDataset,
    method: str,
    num_pairs: int,
    *,
    space: str,
    captions_per_image: int | None,
    clip_model: str | Path,
    seed: int,
    device: str | None,
    cache_dir: str | os.PathLike | None,
    batch_size: int = 256,
) -> datasets.Dataset:
    """`select_coreset` for a streamed pool in the normalized form; see the module docstring and `select_coreset`.

    Example:
        >>> select_coreset_streamed(stream, "random", 100, space="joint", captions_per_image=1,
        ...                         clip_model=DEFAULT_CLIP_MODEL, seed=0, device=None, cache_dir=None).num_rows
        100
    """
    if method not in STREAM_METHODS:
        raise ValueError(f"The {method!r} baseline needs the whole pool in memory; a streamed pool supports "
                         f"{STREAM_METHODS}. Load the source without streaming=True.")  # fmt: skip
    counts, fingerprint = stream_caption_counts(stream)
    kept_counts = counts if captions_per_image is None else np.minimum(counts, captions_per_image)
    num_images = images_for_budget(kept_counts, num_pairs, captions_per_image)
    if method == "random":
        order = np.random.default_rng(seed).permutation(len(counts)).tolist()
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = _load_clip(clip_model, device)
        captions = images = None
        if space != "image":
            pool = CaptionPool(int(counts.sum()), fingerprint, stream=stream)
            captions = pool.embeddings(model, processor, cache_dir=cache_dir, batch_size=batch_size)
        if space != "text":
            images = _image_store(stream, counts, fingerprint, model, processor, cache_dir, batch_size)
        points = _points_store(captions, images, counts, space, captions_per_image, seed, cache_dir)
        order = herding(points, num_images) if method == "herding" else kcenter_greedy(points, num_images, seed=seed)
    return _collect(stream, fill_budget(order, kept_counts, num_pairs), counts, captions_per_image, seed)


def _collect(stream, chosen, counts, captions_per_image, seed) -> datasets.Dataset:
    """The `(row, captions taken)` of `fill_budget`, each row with its first kept captions, read in one pass; images
    are kept as stored, not decoded and re-encoded."""
    take = dict(chosen)
    kept = enumerate(iter_kept_positions(counts, captions_per_image, seed))
    positions = {row: row_kept[: take[row]] for row, row_kept in kept if row in take}
    found = {}
    for index, record in enumerate(stream.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))):
        if index in take:
            record[CAPTIONS_COLUMN] = [record[CAPTIONS_COLUMN][p] for p in positions[index]]
            found[index] = record
            if len(found) == len(take):
                break
    return datasets.Dataset.from_list([found[row] for row, _ in chosen], features=stream.features)
