"""Training from a streamed source (CC3M-size Parquet or WebDataset shards): the stream, its split across processes,
seeded items, and the stream position that checkpoints record.

A streamed run has no epochs: each process reads its part of the stream, shuffled through a buffer, and starts a new
pass (`set_epoch(pass)`, so another order) when it runs out, until `--max_train_steps`. Item `position` of pass `p`
on process `r` draws its crop, flip, caption and caption dropout from a stream seeded by `(seed, p, r, position)`.
A checkpoint records every process's `(pass, position)`; a resumed run re-reads its pass from the start, skips
`position` examples without decoding them, and so sees exactly the batches an uninterrupted run would.
See docs/training.md, "Training from a streamed source (CC3M-size data)".

Example:
    >>> stream, caption_column = load_train_stream(config)  # doctest: +SKIP
    >>> items = StreamItems(split_stream(stream, process_index=0, num_processes=1), config)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from .data import (
    as_image_column,
    check_image_column,
    load_train_source,
    resolve_caption_column,
    seeded_random,
    train_item,
    train_split,
)

if TYPE_CHECKING:
    from .config import TrainingConfig

logger = logging.getLogger(__name__)


def load_train_stream(
    config: TrainingConfig, dataset: datasets.Dataset | datasets.IterableDataset | None = None
) -> tuple[datasets.IterableDataset, str]:
    """The training stream from `dataset`, `--train_data_files`, `--dataset_name` or `--train_data_dir`
    (`load_dataset(..., streaming=True)`), and its caption column.

    The columns are checked against the stream's `column_names` when the stream knows them (otherwise
    `--caption_column` must be given and each example is checked as it is read). A `datasets.Dataset` is streamed
    with `to_iterable_dataset()`. Images are left undecoded until an item is made (`datasets.Image(decode=False)`),
    so skipping examples on resume reads but does not decode them.

    Example:
        >>> stream, caption_column = load_train_stream(config)  # doctest: +SKIP
    """
    dataset = train_split(load_train_source(config, streaming=True) if dataset is None else dataset)
    if isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    columns = dataset.column_names
    if columns is None:
        if config.caption_column is None:
            raise ValueError("the stream does not list its columns: name the caption column with --caption_column.")
        return dataset, config.caption_column
    check_image_column(config.image_column, columns, "training stream")
    caption_column = resolve_caption_column(config.caption_column, columns)
    return as_image_column(dataset, config.image_column, decode=False), caption_column


def split_stream(
    stream: datasets.IterableDataset, process_index: int, num_processes: int
) -> datasets.IterableDataset:
    """This process's part of `stream` (`datasets.distributed.split_dataset_by_node`).

    With `n_shards % num_processes == 0` each process reads whole shards (files) of its own; otherwise every process
    reads every shard and keeps every `num_processes`-th example. Process 0 logs which happens (a warning for the
    second, which reads `num_processes` times the data).

    Example:
        >>> stream = datasets.Dataset.from_dict({"a": list(range(6))}).to_iterable_dataset(num_shards=2)
        >>> [row["a"] for row in split_stream(stream, process_index=1, num_processes=2)]
        [3, 4, 5]
    """
    if num_processes == 1:
        return stream
    shards = stream.num_shards
    if process_index == 0:
        if shards % num_processes == 0:
            logger.info("streaming: %d shards, %d whole shards per process", shards, shards // num_processes)
        else:
            logger.warning(
                "streaming: %d shards do not divide among %d processes, so every process reads every shard and "
                "keeps 1/%d of the examples; give a multiple of %d shards to read each shard once.",
                shards, num_processes, num_processes, num_processes,
            )  # fmt: skip
    return split_dataset_by_node(stream, rank=process_index, world_size=num_processes)


@dataclasses.dataclass
class StreamPosition:
    """Where a process is in its stream: the pass over it and the number of its examples read in that pass."""

    pass_index: int = 0
    position: int = 0


class StreamItems(torch.utils.data.IterableDataset):
    """This process's training items from its part of the stream, without end: pass after pass, each shuffled
    (`shuffle(seed, shuffle_buffer_size)` with `set_epoch(pass)`).

    Item `position` of pass `p` on process `r` is made as `EDGETrainItems` makes a row (`train_item`), its draws
    seeded by `(seed, p, r, position)`. `state_dict` / `load_state_dict` carry every process's `StreamPosition`
    (gathered from all processes) through accelerate checkpoints (`accelerator.register_for_checkpointing`).
    Read it with `num_workers=0`: the position is counted in this process.

    Example:
        >>> items = StreamItems(split_stream(stream, 0, 1), config)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(items, batch_size=16, collate_fn=collator)  # doctest: +SKIP
    """

    def __init__(
        self, stream: datasets.IterableDataset, config: TrainingConfig, process_index: int = 0, num_processes: int = 1
    ) -> None:
        self.stream = stream.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer_size)
        self.config = config
        self.process_index, self.num_processes = process_index, num_processes
        self.state = StreamPosition()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        state = self.state
        while True:
            self.stream.set_epoch(state.pass_index)
            for record in itertools.islice(self.stream, state.position, None):
                item = self._item(record, state.pass_index, state.position)
                state.position += 1
                yield item
            if state.position == 0:
                raise ValueError(
                    f"process {self.process_index} of {self.num_processes} got no examples from the training stream "
                    f"(pass {state.pass_index}); give more data or fewer processes."
                )
            state.pass_index, state.position = state.pass_index + 1, 0

    def _item(self, record: dict[str, Any], pass_index: int, position: int) -> dict[str, Any]:
        config = self.config
        name = f"stream position {position} (pass {pass_index}, process {self.process_index})"
        missing = [c for c in (config.image_column, config.caption_column) if c not in record]
        if missing:
            raise ValueError(f"{name}: no column(s) {missing}; the example has {sorted(record)}.")
        image = record[config.image_column]
        if isinstance(image, dict):
            image = datasets.Image().decode_example(image)
        rng = seeded_random(config.seed, pass_index, self.process_index, position)
        return train_item(image, record[config.caption_column], config, rng, name)

    def state_dict(self) -> dict[str, Any]:
        """Every process's position (a collective call: every process must make it, as `save_state` does)."""
        from accelerate.utils import gather_object

        positions = gather_object([dataclasses.astuple(self.state)])
        config = self.config
        return {"positions": positions, "seed": config.seed, "shuffle_buffer_size": config.shuffle_buffer_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes this process's position; `ValueError` if the run had another process count, seed or buffer."""
        saved = (len(state["positions"]), state["seed"], state["shuffle_buffer_size"])
        now = (self.num_processes, self.config.seed, self.config.shuffle_buffer_size)
        if saved != now:
            raise ValueError(
                f"the checkpoint's stream was read by {saved[0]} process(es) with --seed {saved[1]} and "
                f"--shuffle_buffer_size {saved[2]}; this run has {now[0]}, {now[1]} and {now[2]}: resume with the "
                "same, or the stream position would not be the same."
            )
        self.state = StreamPosition(*state["positions"][self.process_index])


def stream_batches(
    dataloader: torch.utils.data.DataLoader, seed: int, process_index: int, first_index: int
) -> Iterator[tuple[int, list[int], dict[str, torch.Tensor]]]:
    """`(epoch, noise keys, batch)` for the training loop, without end: epoch 0 throughout, micro-batch `index`
    (counted from the run's start, `first_index` on resume) keyed `(seed, index, process_index)`.

    Example:
        >>> epoch, keys, batch = next(stream_batches(loader, seed=0, process_index=0, first_index=0))  # doctest: +SKIP
    """
    for index, batch in enumerate(dataloader, start=first_index):
        yield 0, [seed, index, process_index], batch
