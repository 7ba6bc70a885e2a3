"""A normalized dataset flattened for the student: decoded images and one entry per (image, caption) pair.

Example:
    >>> pairs = prepare_pairs(test_split, image_size=224, name="test")
    >>> pairs.num_images, pairs.num_pairs
    (1000, 5000)
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch

from ..data.format import CAPTIONS_COLUMN, IMAGE_COLUMN, validate_normalized
from .student import images_to_uint8


@dataclass
class PairSet:
    """A normalized dataset flattened for training/evaluation: decoded images and one entry per (image, caption).

    Attributes:
        images: uint8 (num_images, 3, S, S).
        captions: every caption, image by image, in dataset order.
        text_to_image: for each caption, the row of its image.
    """

    images: torch.Tensor
    captions: list[str]
    text_to_image: torch.Tensor

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_pairs(self) -> int:
        return len(self.captions)


def prepare_pairs(dataset: datasets.Dataset, image_size: int, name: str = "dataset", batch_size: int = 256) -> PairSet:
    """Validates a normalized dataset, decodes and resizes its images, and lists every (image, caption) pair.

    Raises:
        ValueError: the dataset has no rows, or is not in the normalized form (a row without captions, a missing
            column, a repeated image id); the row is named.

    Example:
        >>> pairs = prepare_pairs(test_split, image_size=224, name="test")
        >>> pairs.num_images, pairs.num_pairs
        (1000, 5000)
    """
    if dataset.num_rows == 0:
        raise ValueError(f"{name} is empty: it has no image-caption rows.")
    validate_normalized(dataset, name=name)
    captions = [list(c) for c in dataset[CAPTIONS_COLUMN]]
    images = dataset.select_columns([IMAGE_COLUMN])
    chunks = []
    for start in range(0, dataset.num_rows, batch_size):
        rows = images[start : start + batch_size][IMAGE_COLUMN]
        for offset, image in enumerate(rows):
            if image is None:
                raise ValueError(f"{name} row {start + offset} has no image.")
        chunks.append(images_to_uint8(rows, image_size))
    text_to_image = torch.tensor([row for row, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    return PairSet(torch.cat(chunks), [c for caps in captions for c in caps], text_to_image)
