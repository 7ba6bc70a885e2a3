"""Which captions a distilled set is generated from: random (EDGE), greedy k-center, or k-means prototypes.

EDGE's released code draws the prompts uniformly at random from the training captions (docs/method.md, "Coreset
baselines and prompt selection"). Choosing prompts that *cover* the caption distribution is the lever
training-free methods pull (D4M, PDS: k-means prototypes; docs/method.md, "Coreset baselines and prompt
selection"), so two coverage rules of `diffusers_edge.selection.algorithms` are offered on L2-normalised CLIP text
embeddings:

* `"kcenter"` (`kcenter_greedy`): the greedy 2-approximation of k-center (Gonzalez 1985): start from a seeded random
  point, then repeatedly add the point farthest from everything chosen so far;
* `"kmeans"` (`kmeans_nearest`): k-means (k-means++ seeding, Lloyd iterations) and, per centroid, the nearest
  caption.

This module is the selection rules plus `embed_captions` (a CLIP text tower); it imports no pipeline.

Example:
    >>> select_captions(["a red circle", "a blue square", "a green star"], 2, "random", seed=0)
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..clip_features import clip_features
from .algorithms import _check_num, kcenter_greedy, kmeans_nearest, select_random
from .store import EmbeddingStore

SelectionFn = Callable[[list[str], int, int], Sequence[int]]
"""A custom rule: `fn(captions, num, seed) -> num distinct indices into captions`."""

SELECTION_METHODS = ("random", "kcenter", "kmeans")
EMBEDDING_METHODS = ("kcenter", "kmeans")


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
        features = clip_features(clip_model.get_text_features(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
        ))
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out)


def select_captions(
    captions: Sequence[str],
    num: int,
    method: str | SelectionFn = "random",
    seed: int = 0,
    embeddings: torch.Tensor | EmbeddingStore | None = None,
) -> list[int]:
    """Picks `num` distinct captions by `method`; returns their indices into `captions`.

    Args:
        captions: the pool (e.g. every training caption).
        num: how many to pick.
        method: `"random"`, `"kcenter"`, `"kmeans"`, or a callable `fn(captions, num, seed) -> indices`.
        seed: the selection seed.
        embeddings: `[len(captions), dim]` embeddings, or an `EmbeddingStore` of them; required by `"kcenter"`
            and `"kmeans"` (see `embed_captions`).

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
    return select_indices(len(captions), num, method, seed=seed, embeddings=embeddings)


def select_indices(
    pool_size: int, num: int, method: str, seed: int = 0, embeddings: torch.Tensor | EmbeddingStore | None = None
) -> list[int]:
    """`select_captions` for the named rules, which need only the pool's size (`"random"`) or its embeddings: how a
    streamed pool is selected from without holding its captions.

    Example:
        >>> select_indices(3, 2, "random", seed=0) == select_captions(["a", "b", "c"], 2, "random", seed=0)
        True
    """
    _check_num(num, pool_size)
    if method == "random":
        return select_random(pool_size, num, seed)
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"Unknown selection {method!r}; use one of {SELECTION_METHODS} or a callable.")
    if embeddings is None or len(embeddings) != pool_size:
        raise ValueError(f"selection={method!r} needs one embedding per caption ({pool_size}).")
    if method == "kcenter":
        return kcenter_greedy(embeddings, num, seed=seed)
    return kmeans_nearest(embeddings, num, seed=seed)
