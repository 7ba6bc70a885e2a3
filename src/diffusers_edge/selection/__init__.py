"""Selection: which captions a distilled set is generated from, and which real pairs a coreset baseline keeps.

* `diffusers_edge.selection.algorithms`: the shared rules on embeddings (random, greedy k-center, k-means, herding,
  forgetting scores);
* `diffusers_edge.selection.prompts`: prompt selection for `EDGEPipeline.distill` (`select_captions`,
  `embed_captions`);
* `diffusers_edge.selection.store`: `EmbeddingStore`, embeddings on disk for pools too large to hold (CC3M);
* `diffusers_edge.selection.coreset`: coresets of real image-text pairs (`select_coreset`, `embed_pool`).

This package exports the prompt-selection names and the shared rules; the coreset names live in
`diffusers_edge.selection.coreset` (and as `diffusers_edge.select_coreset` / `diffusers_edge.embed_pool`).

Example:
    >>> import torch
    >>> points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]])
    >>> sorted(i // 2 for i in kcenter_greedy(points, 2, seed=0))  # one point from each clump
    [0, 1]
"""

from .algorithms import kcenter_greedy, kmeans, kmeans_nearest, select_random
from .prompts import EMBEDDING_METHODS, SELECTION_METHODS, SelectionFn, embed_captions, select_captions, select_indices
from .store import EmbeddingStore

__all__ = [
    "EMBEDDING_METHODS",
    "EmbeddingStore",
    "SELECTION_METHODS",
    "SelectionFn",
    "embed_captions",
    "kcenter_greedy",
    "kmeans",
    "kmeans_nearest",
    "select_captions",
    "select_indices",
    "select_random",
]
