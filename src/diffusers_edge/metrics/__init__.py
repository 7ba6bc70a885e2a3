"""Evaluation metrics: exact image-text recall@K (hit@K, pessimistic ties) and its `evaluate` module.

`import diffusers_edge.metrics` needs only torch and numpy; the `evaluate` wrapper (`ImageTextRecall`) is imported
on first use, so the optional `evaluate` package is required only by whoever asks for it.

Example:
    >>> import evaluate  # doctest: +SKIP
    >>> from diffusers_edge.metrics import image_text_recall_path
    >>> recall = evaluate.load(image_text_recall_path())  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .retrieval import DEFAULT_KS, retrieval_recall, retrieval_recall_from_embeddings

__all__ = [
    "DEFAULT_KS",
    "ImageTextRecall",
    "image_text_recall_path",
    "retrieval_recall",
    "retrieval_recall_from_embeddings",
]

_METRIC_FOLDER = Path(__file__).resolve().parent / "image_text_recall"


def image_text_recall_path() -> str:
    """The folder of the `evaluate` image-text recall module, ready for `evaluate.load`.

    Returns:
        The absolute path of ``diffusers_edge/metrics/image_text_recall`` in the installed package.

    Example:
        >>> import evaluate  # doctest: +SKIP
        >>> recall = evaluate.load(image_text_recall_path())  # doctest: +SKIP
        >>> recall.compute(predictions=similarity.T, references=text_to_image, ks=[1, 5, 10])  # doctest: +SKIP
    """
    return str(_METRIC_FOLDER)


def __getattr__(name: str) -> Any:
    if name == "ImageTextRecall":
        module = importlib.import_module("diffusers_edge.metrics.image_text_recall.image_text_recall")
        return module.ImageTextRecall
    raise AttributeError(f"module 'diffusers_edge.metrics' has no attribute {name!r}")


if TYPE_CHECKING:
    from .image_text_recall.image_text_recall import ImageTextRecall
