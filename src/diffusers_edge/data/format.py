"""The one normalized form for image-text data that every part of diffusers-edge reads and writes.

A normalized dataset is a `datasets.Dataset` with three columns:

| column     | feature                       | meaning                                        |
|------------|-------------------------------|------------------------------------------------|
| `image`    | `datasets.Image()`            | the picture (decoded to `PIL.Image` on access) |
| `captions` | `datasets.List(Value("string"))` | 1..n non-empty captions of that picture      |
| `image_id` | `Value("string")`             | an id unique within the dataset                |

Other columns may ride along (a distilled set adds `prompt`, `seed`, `source_image_id`); readers ignore them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import datasets

IMAGE_COLUMN = "image"
CAPTIONS_COLUMN = "captions"
IMAGE_ID_COLUMN = "image_id"

NORMALIZED_FEATURES = datasets.Features(
    {
        IMAGE_COLUMN: datasets.Image(),
        CAPTIONS_COLUMN: datasets.List(datasets.Value("string")),
        IMAGE_ID_COLUMN: datasets.Value("string"),
    }
)


def check_captions(captions: Iterable[str] | None, record: str) -> list[str]:
    """Returns `captions` as a list, raising `ValueError` naming `record` if it is empty or holds an empty caption.

    Example:
        >>> check_captions(["a red circle"], record="image_id=7")
        ['a red circle']
    """
    captions = list(captions or [])
    if not captions:
        raise ValueError(f"{record} has no captions; every image needs at least one caption.")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{record} has an empty caption at position {i}: {caption!r}.")
    return captions


def caption_list(value: Any, record: str) -> list[str]:
    """A caption cell (one string or a list of strings) as a checked list, raising `ValueError` naming `record`.

    `None` (a missing cell) counts as no captions; any other type than a string, list or tuple is refused.

    Example:
        >>> caption_list("a red circle", record="row 0")
        ['a red circle']
    """
    if isinstance(value, str):
        value = [value]
    elif value is not None and not isinstance(value, (list, tuple)):
        raise ValueError(f"{record}: captions must be a string or a list of strings, got {type(value).__name__}.")
    return check_captions(value, record=record)


def validate_normalized(dataset: datasets.Dataset, name: str = "dataset") -> datasets.Dataset:
    """Checks that `dataset` is in the normalized form and returns it.

    Raises `ValueError` naming the problem: a missing column, an image with no (or an empty) caption, or an
    `image_id` that appears twice. Images are not decoded here (that is the reader's job).

    Example:
        >>> ds = datasets.Dataset.from_dict(
        ...     {"image": [None], "captions": [["a red circle"]], "image_id": ["0"]}
        ... )
        >>> validate_normalized(ds, name="toy") is ds
        True
    """
    missing = [c for c in (IMAGE_COLUMN, CAPTIONS_COLUMN, IMAGE_ID_COLUMN) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{name} is missing column(s) {missing}; the normalized form needs "
            f"{[IMAGE_COLUMN, CAPTIONS_COLUMN, IMAGE_ID_COLUMN]} (found {dataset.column_names})."
        )
    seen: dict[str, int] = {}
    for row, (image_id, captions) in enumerate(zip(dataset[IMAGE_ID_COLUMN], dataset[CAPTIONS_COLUMN])):
        check_captions(captions, record=f"{name} row {row} (image_id={image_id!r})")
        if image_id in seen:
            raise ValueError(f"{name}: image_id {image_id!r} appears twice (rows {seen[image_id]} and {row}).")
        seen[image_id] = row
    return dataset


# MTT-VL, LoRS and EDGE build their Flickr30K / COCO datasets with max_words=30 (BLIP's own default is 50).
BLIP_MAX_WORDS = 30

# The punctuation BLIP's `pre_caption` turns into spaces (salesforce/BLIP, data/utils.py). Commas, apostrophes,
# hyphens and slashes are kept: BLIP does not touch them (ALBEF's older `pre_caption` did).
_BLIP_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = BLIP_MAX_WORDS) -> str:
    """BLIP's caption preprocessing, as used by the MTT-VL / LoRS / EDGE evaluation.

    Follows `pre_caption` in salesforce/BLIP `data/utils.py` (copied unchanged into the MTT-VL and EDGE
    repositories): lower-case; each of `. ! " ( ) * # : ; ~` becomes a space; every run of two or more
    whitespace characters becomes one space; a trailing newline and surrounding spaces are stripped; the caption
    is cut to its first `max_words` space-separated words. Commas, apostrophes, hyphens and slashes are kept.

    Args:
        caption: the raw caption.
        max_words: the number of words kept (30 in MTT-VL, LoRS and EDGE).

    Returns:
        The preprocessed caption (may be empty if the caption held only punctuation).

    Example:
        >>> pre_caption("A dog (brown) runs!  Fast.")
        'a dog brown runs fast'
        >>> pre_caption("Two men, one in a T-shirt.", max_words=4)
        'two men, one in'
    """
    caption = _BLIP_PUNCTUATION.sub(" ", caption.lower())
    caption = _WHITESPACE_RUN.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def prepared_captions(value: Any, record: str, preprocess: bool, max_words: int) -> list[str]:
    """A caption cell as checked captions, with BLIP's `pre_caption` applied when `preprocess`."""
    captions = caption_list(value, record)
    if preprocess:
        captions = check_captions(
            [pre_caption(c, max_words) for c in captions], record=f"{record} (after BLIP pre_caption)"
        )
    return captions
