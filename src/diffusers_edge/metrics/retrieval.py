"""Image-text retrieval recall@K: exact, tie-pessimistic, chunked.

Semantics are the papers' hit@K (BLIP ``itm_eval``, used by MTT-VL, LoRS and EDGE; docs/method.md, "Recall@K"):

* image -> text (key prefix ``i2t``): the query is an image, the candidates are all texts. The image's rank is
  the best rank among its own texts, i.e. the number of *non-matching* texts ranked ahead of its best-scoring
  true text.
* text -> image (key prefix ``t2i``): the query is a text, the candidates are all images. The text's rank is the
  number of other images ranked ahead of its one true image.
* ``R@K`` = 100 * fraction of queries whose 0-based rank is < K.

Ties are pessimistic: a non-matching candidate whose score *equals* the true match's score counts as ranked
ahead of it. The rank is therefore ``#{non-matching candidates with score >= positive score}``, which is the
largest rank any tie-breaking order could give BLIP's ``argsort`` (other true texts of the same image are
never counted against it: any of them is itself a hit). Constant scores rank every query last among its
equals, so recall can only drop, never inflate. No truncation to a top 128 (or any top-k) takes place.

Key table (values in percent here; ``k`` in ``ks``):

======================  =======================  ===========================  ==============================
ours                    BLIP ``itm_eval``        open_clip ``get_clip_metrics`` CLIP_benchmark
======================  =======================  ===========================  ==============================
``i2t_R@{k}``           ``txt_r{k}``             ``image_to_text_R@{k}``      ``text_retrieval_recall@{k}``
``t2i_R@{k}``           ``img_r{k}``             ``text_to_image_R@{k}``      ``image_retrieval_recall@{k}``
``i2t_mean``            ``txt_r_mean``           --                           --
``t2i_mean``            ``img_r_mean``           --                           --
``r_mean``              ``r_mean``               --                           --
``i2t_median_rank``     --                       ``image_to_text_median_rank`` --
``t2i_median_rank``     --                       ``text_to_image_median_rank`` --
``i2t_mean_rank``       --                       ``image_to_text_mean_rank``  --
``t2i_mean_rank``       --                       ``text_to_image_mean_rank``  --
======================  =======================  ===========================  ==============================

open_clip and CLIP_benchmark report fractions in [0, 1], not percent; open_clip assumes one text per image.
The median rank is reported as the field does (VSE++ ``i2t``/``t2i`` ``medr``, open_clip ``*_median_rank``):
``floor(median of the 0-based ranks) + 1``, an integer even for an even number of queries.

With ``ir_recall=True`` the IR-style recall (the fraction of *all* relevant candidates found in the top K,
torchmetrics' ``RetrievalRecall``) is added under ``i2t_IRrecall@{k}`` and ``t2i_IRrecall@{k}``; with one image per
text the latter equals ``t2i_R@{k}``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# Scores per block (query rows x candidates) when chunk_size is None: bounds the temporary memory (32 MB in
# float32). Smaller blocks cost more per score: per-operation overhead, and matrix products with few rows run
# below the machine's GEMM rate.
_BLOCK_ELEMENTS = 1 << 23


def retrieval_recall(
    similarity: ArrayLike,
    text_to_image: ArrayLike | Sequence[int],
    ks: Iterable[int] = DEFAULT_KS,
    *,
    ir_recall: bool = False,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Exact image<->text recall@K (hit@K) from a similarity matrix, with pessimistic ties.

    Args:
        similarity: scores of shape ``(n_images, n_texts)``, the orientation of CLIP's ``logits_per_image``
            (a torch tensor on any device, or a numpy array). Integer matrices are compared as float64.
        text_to_image: ``text_to_image[j]`` is the index of the image that text ``j`` describes; any number of
            texts per image (COCO has 5 or 6), but every image needs at least one.
        ks: the cut-offs K (distinct integers >= 1; K above the candidate count gives 100).
        ir_recall: also return the IR-style recall (fraction of all relevant candidates in the top K) under
            ``i2t_IRrecall@{k}`` / ``t2i_IRrecall@{k}``.
        chunk_size: image rows per block; ``None`` picks about 8M scores per block. The temporary memory is
            one float32 buffer of one block (32 MB by default).

    Returns:
        ``i2t_R@{k}``, ``t2i_R@{k}`` for each k, ``i2t_mean``, ``t2i_mean``, ``r_mean`` (percent), and the
        1-based ``i2t_median_rank``, ``t2i_median_rank``, ``i2t_mean_rank``, ``t2i_mean_rank``. The key table is
        in the module docstring.

    Raises:
        ValueError: on a shape mismatch, an index out of range, an image with no text, a NaN or infinite
            score, an empty matrix or a K below 1.

    Warns:
        UserWarning: for a float16 / bfloat16 matrix. Half precision keeps about 3 (bfloat16: 2) significant
            digits, so scores that differ in float32 become equal; ties count pessimistically, so recall drops
            (measured on synthetic CLIP-like embeddings, 1000 images x 5 texts, mean cosine 0.70: r_mean 8.95
            from float32 scores, 8.66 from float16, 6.94 from bfloat16). The scores are compared in float32, which
            cannot undo the rounding: compute them in float32, or pass the embeddings to
            `retrieval_recall_from_embeddings`, which computes in float32.

    Example:
        >>> import torch
        >>> sim = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])  # 2 images, 3 texts
        >>> r = retrieval_recall(sim, [0, 1, 0], ks=(1,))
        >>> r["i2t_R@1"], r["t2i_R@1"]
        (100.0, 100.0)
    """
    sim = _as_scores(similarity, "similarity")
    if sim.dtype in (torch.float16, torch.bfloat16):
        warnings.warn(
            f"similarity is {str(sim.dtype).removeprefix('torch.')}: half precision turns close scores into ties, "
            "which count against recall. Compute the scores in float32 (or use retrieval_recall_from_embeddings, "
            "which does).",
            stacklevel=2,
        )
        sim = sim.float()
    n_images, n_texts = sim.shape
    t2i = _as_index(text_to_image, n_images, n_texts, sim.device)
    ks = _check_ks(ks)
    _check_chunk_size(chunk_size)
    groups = _TextGroups(t2i, n_images)
    positives = sim[t2i, torch.arange(n_texts, device=sim.device)]
    rows = min(n_images, chunk_size or max(1, _BLOCK_ELEMENTS // n_texts))
    counter = _Counter(rows, n_texts, sim.device)
    i2t_rank = torch.empty(n_images, dtype=torch.long, device=sim.device)
    t2i_ge = torch.zeros(n_texts, dtype=counter.dtype, device=sim.device)
    ir_pos = torch.empty(n_texts, dtype=torch.long, device=sim.device) if ir_recall else None
    for start in range(0, n_images, rows):
        block = sim[start : start + rows]
        _check_finite(block, start, "similarity")
        i2t_rank[start : start + rows] = _image_ranks(block, start, groups, counter, ir_pos)
        t2i_ge += counter.column_counts(block, positives)
    # the positive itself is >= itself: exclude it
    return _summarize(i2t_rank, t2i_ge.long() - 1, ks, groups, ir_pos)


def retrieval_recall_from_embeddings(
    image_embeds: ArrayLike,
    text_embeds: ArrayLike,
    text_to_image: ArrayLike | Sequence[int],
    ks: Iterable[int] = DEFAULT_KS,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    ir_recall: bool = False,
) -> dict[str, float]:
    """Recall@K as :func:`retrieval_recall` on ``image_embeds @ text_embeds.T``, never holding that matrix.

    Two passes over query chunks: image chunks score all texts (image -> text ranks), then text chunks score
    all images (text -> image ranks). Each query's positive score and every competitor it is compared with
    come from the same block of the same matrix product, so exact ties (duplicate or collapsed embeddings) are
    seen as ties and counted pessimistically. The cost is two matrix products instead of one; in exchange the
    temporary memory is one block of scores, ``chunk_size * max(n_images, n_texts)`` floats (the block is
    overwritten by its own comparison mask), independent of ``n_images * n_texts``; the default blocks hold
    about 8M scores (32 MB in float32). No copy of the embeddings is made, except that float16/bfloat16 inputs
    are computed in float32.

    Args:
        image_embeds: ``(n_images, d)`` image embeddings (torch tensor on any device, or numpy array).
        text_embeds: ``(n_texts, d)`` text embeddings.
        text_to_image: ``text_to_image[j]`` is the image index of text ``j``.
        ks: cut-offs K (distinct integers >= 1).
        normalize: score with cosine similarity: each candidate's dot product is multiplied by the inverse of
            the candidate's L2 norm (the query's own norm is a positive constant within a ranking and is left
            out, which cannot reorder anything). ``False`` ranks by the raw dot product.
        chunk_size: query rows per block; ``None`` picks about 8M scores per block.
        ir_recall: also return the IR-style recall keys (see :func:`retrieval_recall`).

    Returns:
        The same keys as :func:`retrieval_recall`.

    Raises:
        ValueError: on a dimension mismatch, empty input, NaN/inf values, a zero vector with ``normalize=True``,
            a score that overflows, or any error :func:`retrieval_recall` names.

    Example:
        >>> import torch
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> txt = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
        >>> retrieval_recall_from_embeddings(img, txt, [0, 1, 1], ks=(1,))["t2i_R@1"]
        100.0
    """
    img = _as_embeddings(image_embeds, "image_embeds")
    txt = _as_embeddings(text_embeds, "text_embeds")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_embeds has dimension {img.shape[1]} but text_embeds has {txt.shape[1]}")
    if img.device != txt.device:
        raise ValueError(f"image_embeds is on {img.device} but text_embeds is on {txt.device}")
    dtype = torch.promote_types(torch.promote_types(img.dtype, txt.dtype), torch.float32)
    img, txt = img.to(dtype), txt.to(dtype)
    n_images, n_texts = img.shape[0], txt.shape[0]
    t2i = _as_index(text_to_image, n_images, n_texts, img.device)
    ks = _check_ks(ks)
    _check_chunk_size(chunk_size)
    groups = _TextGroups(t2i, n_images)
    img_scale = _inverse_norms(img, "image_embeds") if normalize else None
    txt_scale = _inverse_norms(txt, "text_embeds") if normalize else None

    i2t_rank = torch.empty(n_images, dtype=torch.long, device=img.device)
    ir_pos = torch.empty(n_texts, dtype=torch.long, device=img.device) if ir_recall else None
    rows = min(n_images, chunk_size or max(1, _BLOCK_ELEMENTS // n_texts))
    counter = _Counter(rows, n_texts, img.device, in_place=True)
    for start in range(0, n_images, rows):
        block = _scores(img[start : start + rows], txt, txt_scale, start, "image")
        i2t_rank[start : start + rows] = _image_ranks(block, start, groups, counter, ir_pos)
        del block

    t2i_rank = torch.empty(n_texts, dtype=torch.long, device=img.device)
    rows = min(n_texts, chunk_size or max(1, _BLOCK_ELEMENTS // n_images))
    counter = _Counter(rows, n_images, img.device, in_place=True)
    for start in range(0, n_texts, rows):
        block = _scores(txt[start : start + rows], img, img_scale, start, "text")
        own = block.gather(1, t2i[start : start + rows, None])
        t2i_rank[start : start + rows] = counter.row_counts(block, own) - 1
        del block
    return _summarize(i2t_rank, t2i_rank, ks, groups, ir_pos)


class _Counter:
    """Counts ``block >= threshold`` per row or per column of a block.

    The comparison is written as 0/1 floats and summed by a matrix-vector product, several times faster on CPU
    than reducing a boolean tensor. Float32 sums of 0/1 are exact below 2**24 terms; float64 is used above.
    ``in_place`` overwrites the block itself with the mask (the embeddings path owns its blocks); otherwise a
    reusable buffer of one block is kept.
    """

    def __init__(self, rows: int, cols: int, device: torch.device, in_place: bool = False) -> None:
        self.dtype = torch.float32 if max(rows, cols) < 2**24 else torch.float64
        self.buffer = None if in_place else torch.empty(rows, cols, dtype=self.dtype, device=device)
        self.ones_rows = torch.ones(rows, dtype=self.dtype, device=device)
        self.ones_cols = torch.ones(cols, dtype=self.dtype, device=device)

    def _mask(self, block: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        if self.buffer is None and block.dtype == self.dtype:
            return torch.ge(block, threshold, out=block)
        out = self.buffer[: block.shape[0]] if self.buffer is not None else None
        return torch.ge(block, threshold, out=out).to(self.dtype)

    def row_counts(self, block: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """``(block >= threshold).sum(1)`` as int64; ``threshold`` has shape (rows, 1)."""
        return (self._mask(block, threshold) @ self.ones_cols[: block.shape[1]]).long()

    def column_counts(self, block: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """``(block >= threshold).sum(0)`` in the counter's float dtype; ``threshold`` has shape (cols,)."""
        return self.ones_rows[: block.shape[0]] @ self._mask(block, threshold)


class _TextGroups:
    """Texts grouped by image: ``order[offsets[i]:offsets[i + 1]]`` are the texts of image ``i``."""

    def __init__(self, t2i: torch.Tensor, n_images: int) -> None:
        self.t2i = t2i
        self.order = torch.argsort(t2i, stable=True)
        self.counts = torch.bincount(t2i, minlength=n_images)
        self.offsets = torch.zeros(n_images + 1, dtype=torch.long, device=t2i.device)
        self.offsets[1:] = torch.cumsum(self.counts, 0)
        self._offsets_cpu = self.offsets.tolist()

    def texts_of(self, start: int, stop: int) -> torch.Tensor:
        return self.order[self._offsets_cpu[start] : self._offsets_cpu[min(stop, len(self._offsets_cpu) - 1)]]


def _image_ranks(
    block: torch.Tensor, start: int, groups: _TextGroups, counter: _Counter, ir_pos: torch.Tensor | None
) -> torch.Tensor:
    """0-based pessimistic ranks of the images ``start .. start + len(block)`` (rows of ``block``).

    With an in-place counter, ``block`` is overwritten.
    """
    n_rows = block.shape[0]
    texts = groups.texts_of(start, start + n_rows)
    rows = groups.t2i[texts] - start
    values = block[rows, texts]
    if ir_pos is not None:
        ir_pos[texts] = _true_text_positions(block, rows, texts, values, groups, start)
    best = torch.full((n_rows,), -torch.inf, dtype=block.dtype, device=block.device)
    best.scatter_reduce_(0, rows, values, "amax")
    # true texts scoring exactly the best are counted by row_counts but are not competitors
    n_true_at_best = torch.zeros(n_rows, dtype=torch.long, device=block.device)
    n_true_at_best.scatter_add_(0, rows, (values == best[rows]).long())
    return counter.row_counts(block, best[:, None]) - n_true_at_best


def _true_text_positions(
    block: torch.Tensor,
    rows: torch.Tensor,
    texts: torch.Tensor,
    values: torch.Tensor,
    groups: _TextGroups,
    start: int,
) -> torch.Tensor:
    """Pessimistic 0-based position of every true text in its image's ranking (for the IR-style recall).

    A true text's position is the number of non-matching texts scoring >= it plus the number of the image's
    true texts placed before it (true texts sorted by score; the order among equal ones does not change how
    many fall within the top K).
    """
    masked = block.clone()
    masked[rows, texts] = -torch.inf
    nonmatching_ge = torch.empty_like(rows)
    step = max(1, block.shape[0])
    for i in range(0, len(rows), step):
        sub = slice(i, i + step)
        nonmatching_ge[sub] = (masked[rows[sub]] >= values[sub, None]).sum(1)
    by_value = torch.argsort(values, descending=True, stable=True)
    order = by_value[torch.argsort(rows[by_value], stable=True)]
    sorted_rows = rows[order]
    place = torch.arange(len(rows), device=rows.device) - (groups.offsets[sorted_rows + start] - groups.offsets[start])
    positions = torch.empty_like(rows)
    positions[order] = nonmatching_ge[order] + place
    return positions


def _scores(
    queries: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor | None, start: int, kind: str
) -> torch.Tensor:
    block = queries @ candidates.T
    if scale is not None:
        block.mul_(scale)
    if not torch.isfinite(block.sum()):
        bad = torch.nonzero(~torch.isfinite(block))
        if len(bad):
            row = start + int(bad[0, 0])
            raise ValueError(f"the score of {kind} {row} against candidate {int(bad[0, 1])} overflowed to inf/NaN")
    return block


def _summarize(
    i2t_rank: torch.Tensor,
    t2i_rank: torch.Tensor,
    ks: tuple[int, ...],
    groups: _TextGroups,
    ir_pos: torch.Tensor | None,
) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_R@{k}"] = _percent(i2t_rank < k)
    for k in ks:
        out[f"t2i_R@{k}"] = _percent(t2i_rank < k)
    out["i2t_mean"] = sum(out[f"i2t_R@{k}"] for k in ks) / len(ks)
    out["t2i_mean"] = sum(out[f"t2i_R@{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["i2t_mean"] + out["t2i_mean"]) / 2
    out["i2t_median_rank"] = _median_rank(i2t_rank)
    out["t2i_median_rank"] = _median_rank(t2i_rank)
    out["i2t_mean_rank"] = (i2t_rank + 1).double().mean().item()
    out["t2i_mean_rank"] = (t2i_rank + 1).double().mean().item()
    if ir_pos is not None:
        for k in ks:
            hits = torch.zeros(len(groups.counts), dtype=torch.float64, device=ir_pos.device)
            hits.scatter_add_(0, groups.t2i, (ir_pos < k).double())
            out[f"i2t_IRrecall@{k}"] = 100.0 * (hits / groups.counts).mean().item()
        for k in ks:
            out[f"t2i_IRrecall@{k}"] = out[f"t2i_R@{k}"]
    return out


def _percent(hit: torch.Tensor) -> float:
    return 100.0 * hit.double().mean().item()


def _median_rank(ranks: torch.Tensor) -> float:
    """The 1-based median rank as VSE++ (Faghri et al. 2018) and open_clip report it: floor(median of the 0-based
    ranks) + 1, the median being numpy's (the mean of the two middle values for an even count)."""
    ordered = torch.sort(ranks).values
    n = len(ordered)
    return float(math.floor((ordered[(n - 1) // 2].item() + ordered[n // 2].item()) / 2) + 1)


def _as_tensor(x: ArrayLike | Sequence, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a torch tensor, a numpy array or a sequence of numbers: {err}") from err


def _as_scores(similarity: ArrayLike, name: str) -> torch.Tensor:
    sim = _as_tensor(similarity, name)
    if sim.ndim != 2:
        raise ValueError(f"{name} must have shape (n_images, n_texts), got {tuple(sim.shape)}")
    if sim.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(sim.shape)}): need at least one image and one text")
    if sim.is_complex():
        raise ValueError(f"{name} must be real, got {sim.dtype}")
    if not sim.is_floating_point():
        sim = sim.to(torch.float64)
    return sim


def _as_embeddings(embeds: ArrayLike, name: str) -> torch.Tensor:
    x = _as_scores(embeds, name)
    _check_finite(x, 0, name)
    return x


def _check_finite(block: torch.Tensor, start: int, name: str) -> None:
    """Raise on the first NaN/inf in ``block`` (rows offset by ``start``); one cheap reduction when all is well."""
    # a finite half-precision block can sum past 65504: accumulate those in float32
    wide = torch.float32 if block.dtype in (torch.float16, torch.bfloat16) else None
    if torch.isfinite(block.sum(dtype=wide)):
        return
    bad = torch.nonzero(~torch.isfinite(block))
    if len(bad):
        i, j = int(bad[0, 0]), int(bad[0, 1])
        raise ValueError(f"{name}[{start + i}, {j}] is {block[i, j].item()}: scores must be finite")


def _as_index(
    text_to_image: ArrayLike | Sequence[int], n_images: int, n_texts: int, device: torch.device
) -> torch.Tensor:
    t2i = _as_tensor(text_to_image, "text_to_image")
    if t2i.dtype == torch.bool or t2i.is_floating_point() or t2i.is_complex():
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {t2i.dtype}")
    if t2i.ndim != 1 or len(t2i) != n_texts:
        raise ValueError(
            f"shape mismatch: text_to_image has shape {tuple(t2i.shape)} but there are {n_texts} texts "
            "(similarity is (n_images, n_texts); text_to_image needs one image index per text)"
        )
    t2i = t2i.to(device=device, dtype=torch.long)
    out_of_range = torch.nonzero((t2i < 0) | (t2i >= n_images))
    if len(out_of_range):
        j = int(out_of_range[0, 0])
        raise ValueError(f"text_to_image[{j}] = {int(t2i[j])} is out of range for {n_images} images")
    missing = torch.nonzero(torch.bincount(t2i, minlength=n_images) == 0)
    if len(missing):
        raise ValueError(
            f"image {int(missing[0, 0])} has no text ({len(missing)} image(s) without any): every image needs "
            "at least one true text, or its image->text rank is undefined"
        )
    return t2i


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one cut-off K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise ValueError(f"K must be an integer, got {k!r}")
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks has duplicates: {ks}")
    return tuple(int(k) for k in ks)


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")


def _inverse_norms(x: torch.Tensor, name: str) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = torch.nonzero(norms == 0)
    if len(zero):
        raise ValueError(f"{name}[{int(zero[0, 0])}] is a zero vector: cosine similarity is undefined")
    return 1.0 / norms
