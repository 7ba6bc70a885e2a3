"""The training data of an EDGE fine-tune: the split and its columns, seeded items, per-process batches, collation.

Example:
    >>> sampler = EpochBatchSampler(num_rows=5, batch_size=2, seed=0)
    >>> len(sampler), [len(batch) for batch in sampler]
    (3, [2, 2, 2])
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import PIL.Image
import torch
import torchvision.transforms.functional as TF

from ..data.format import caption_list
from ..losses import caption_group_ids
from .config import data_files_builder

if TYPE_CHECKING:
    from .config import TrainingConfig

# Searched in this order when --caption_column is not given.
CAPTION_COLUMN_CANDIDATES = ("captions", "text", "caption")


def load_train_dataset(
    config: TrainingConfig, dataset: datasets.Dataset | None = None
) -> tuple[datasets.Dataset, str]:
    """The training split from `dataset`, `--dataset_name`, `--train_data_dir` or `--train_data_files` (map-style),
    with its columns checked, and its caption column: `--caption_column`, or the first of `CAPTION_COLUMN_CANDIDATES`
    the data has (`config` is not changed; `train` runs on a copy of it with that column). `--streaming` reads the
    data with `streaming.load_train_stream` instead.

    Raises `ValueError` if no source is given, if the data is a stream (`datasets.IterableDataset`), if the image or
    caption column is missing, or if an image has no caption or an empty one (naming the row). Images are not
    decoded here.

    Example:
        >>> dataset, caption_column = load_train_dataset(config)  # doctest: +SKIP
    """
    if isinstance(dataset, datasets.IterableDataset):
        raise ValueError("the training data is a stream (an IterableDataset): train it with --streaming.")
    dataset = train_split(load_train_source(config) if dataset is None else dataset)
    check_image_column(config.image_column, dataset.column_names, "training data")
    caption_column = resolve_caption_column(config.caption_column, dataset.column_names)
    if config.max_train_samples is not None:
        dataset = dataset.select(range(min(config.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the training data holds no rows.")
    for row, value in enumerate(dataset[caption_column]):
        caption_list(value, f"training row {row} (column {caption_column!r})")
    return dataset, caption_column


def train_split(
    dataset: datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict,
) -> datasets.Dataset | datasets.IterableDataset:
    """The `train` split of a dataset dict (loaded or streamed), or a single dataset as it is.

    Example:
        >>> one = datasets.Dataset.from_dict({"caption": ["a red circle"]})
        >>> train_split(datasets.DatasetDict(train=one)) is one
        True
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if "train" not in dataset:
            raise ValueError(f"the dataset has no 'train' split (splits: {list(dataset)}).")
        return dataset["train"]
    return dataset


def check_image_column(column: str, columns: list[str], what: str) -> None:
    """`ValueError` naming `--image_column` and the data's columns when `column` is not one of them.

    Example:
        >>> check_image_column("jpg", ["jpg", "txt"], "training stream")
    """
    if column not in columns:
        raise ValueError(f"--image_column {column!r} is not a column of the {what}; its columns are {columns}.")


def load_train_source(config: TrainingConfig, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """The `train` split that `--train_data_files`, `--dataset_name` or `--train_data_dir` names, as
    `datasets.load_dataset` gives it (a stream when `streaming`), columns not checked yet.

    `--train_data_files` images stored as bytes (e.g. a Parquet binary column) are read as `datasets.Image`.

    Example:
        >>> stream = load_train_source(config, streaming=True)  # doctest: +SKIP
    """
    common = {"cache_dir": config.cache_dir, "streaming": streaming}
    if config.train_data_files is not None:
        builder = data_files_builder(config.train_data_files)
        dataset = datasets.load_dataset(builder, data_files=config.train_data_files, split="train", **common)
        return as_image_column(dataset, config.image_column)
    if config.dataset_name is not None:
        return datasets.load_dataset(config.dataset_name, config.dataset_config_name, split="train", **common)
    if config.train_data_dir is not None:
        if not Path(config.train_data_dir).is_dir():
            raise ValueError(f"--train_data_dir {config.train_data_dir!r} is not a folder.")
        return datasets.load_dataset("imagefolder", data_dir=config.train_data_dir, **common)["train"]
    raise ValueError(
        "no training data: give --dataset_name, --train_data_dir or --train_data_files (or pass a Dataset)."
    )


def as_image_column(
    dataset: datasets.Dataset | datasets.IterableDataset, column: str, decode: bool = True
) -> datasets.Dataset | datasets.IterableDataset:
    """`dataset` with `column` read as `datasets.Image(decode=decode)` when its features are known and the column
    exists (image bytes, `{"bytes", "path"}` structs or images); otherwise `dataset` itself.

    Example:
        >>> ds = datasets.Dataset.from_dict({"jpg": [b"not read until accessed"]})
        >>> as_image_column(ds, "jpg").features["jpg"]
        Image(mode=None, decode=True)
    """
    if dataset.features is None or column not in dataset.features:
        return dataset
    if dataset.features[column] == datasets.Image(decode=decode):
        return dataset
    return dataset.cast_column(column, datasets.Image(decode=decode))


def resolve_caption_column(name: str | None, columns: list[str]) -> str:
    """`--caption_column` checked against the data's `columns`, or the first of `CAPTION_COLUMN_CANDIDATES` they
    hold; `ValueError` listing the columns otherwise.

    Example:
        >>> resolve_caption_column(None, ["jpg", "text"])
        'text'
    """
    if name is not None:
        if name not in columns:
            raise ValueError(
                f"--caption_column {name!r} is not a column of the training data; its columns are {columns}."
            )
        return name
    for candidate in CAPTION_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise ValueError(
        f"the training data has none of the caption columns {list(CAPTION_COLUMN_CANDIDATES)} (columns: {columns}); "
        "name yours with --caption_column."
    )


def seeded_random(*keys: int) -> random.Random:
    """A private random stream for one (seed, epoch, index, ...) key: the same key always draws the same values.

    Example:
        >>> seeded_random(0, 1, 2).random() == seeded_random(0, 1, 2).random()
        True
    """
    return random.Random(int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0]))


class EDGETrainItems(torch.utils.data.Dataset):
    """Training items keyed by `(row, epoch)`: image crop, flip, caption choice and caption dropout are drawn from a
    stream seeded by `(seed, epoch, row)`, so a resumed run sees exactly what an uninterrupted one would.
    `config.caption_column` names the caption column (`load_train_dataset` resolves it when the flag is not given).
    """

    def __init__(self, dataset: datasets.Dataset, config: TrainingConfig) -> None:
        self.dataset = dataset
        self.config = config

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        row, epoch = key
        record = self.dataset[row]
        rng = seeded_random(self.config.seed, epoch, row)
        image, captions = record[self.config.image_column], record[self.config.caption_column]
        return train_item(image, captions, self.config, rng, f"training row {row}")


def train_item(
    image: Any, caption_cell: Any, config: TrainingConfig, rng: random.Random, record: str
) -> dict[str, Any]:
    """One training item: a caption drawn from the cell, caption dropout, the image resized, cropped and flipped, all
    drawn from `rng` in that order. `record` names the example in errors (not an image, no or an empty caption).

    Example:
        >>> item = train_item(image, ["a red circle"], config, seeded_random(0, 0, 3), "training row 3")
        ... # doctest: +SKIP
        >>> item["pixel_values"].shape, item["caption"]  # doctest: +SKIP
        (torch.Size([3, 512, 512]), 'a red circle')
    """
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"{record}: column {config.image_column!r} holds {type(image).__name__}, not an image.")
    captions = caption_list(caption_cell, f"{record} (column {config.caption_column!r})")
    caption = captions[rng.randrange(len(captions))]
    keep = rng.random() >= config.caption_dropout
    return {
        "pixel_values": _pixels(image.convert("RGB"), config, rng),
        "caption": caption,
        "unet_caption": caption if keep else "",
        "keep": keep,
    }


def _pixels(image: PIL.Image.Image, config: TrainingConfig, rng: random.Random) -> torch.Tensor:
    size = config.resolution
    mode = TF.InterpolationMode[config.image_interpolation_mode.upper()]
    image = TF.resize(image, size, interpolation=mode)
    if config.center_crop:
        image = TF.center_crop(image, [size, size])
    else:
        top = rng.randint(0, image.height - size)
        left = rng.randint(0, image.width - size)
        image = TF.crop(image, top, left, size, size)
    if config.random_flip and rng.random() < 0.5:
        image = TF.hflip(image)
    return TF.to_tensor(image) * 2 - 1


class EpochBatchSampler(torch.utils.data.Sampler):
    """This process's batches of `(row, epoch)` keys: one seeded permutation per epoch, split across processes.

    Every process gets full batches: the permutation is extended cyclically to a multiple of
    `batch_size * num_processes` (as accelerate's `even_batches` does). `skip` drops the first batches of the next
    iteration (resuming inside an epoch).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_rows / (self.batch_size * self.num_processes))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        span = self.batch_size * self.num_processes
        order = (order * math.ceil(len(self) * span / self.num_rows))[: len(self) * span]
        skip, self.skip = self.skip, 0
        for batch in range(skip, len(self)):
            start = batch * span + self.process_index * self.batch_size
            yield [(row, self.epoch) for row in order[start : start + self.batch_size]]


class EDGECollator:
    """Stacks items and tokenises captions for the SD text encoder and for CLIP."""

    def __init__(self, tokenizer: Any, clip_tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.clip_tokenizer = clip_tokenizer

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [item["caption"] for item in items]
        input_ids = self.tokenizer(
            [item["unet_caption"] for item in items],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        clip_tokens = self.clip_tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.clip_tokenizer.model_max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "input_ids": input_ids,
            "clip_input_ids": clip_tokens.input_ids,
            "clip_attention_mask": clip_tokens.attention_mask,
            "clip_keep": torch.tensor([item["keep"] for item in items]),
            "caption_groups": caption_group_ids(captions),
        }
