"""Training from a streamed source: the flags, Parquet and WebDataset shards, the split across processes, items
named by their stream position, a streamed run's weights, and a resume that sees the batches an uninterrupted run
sees."""

import dataclasses
import io
import logging
import tarfile

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from diffusers_edge.training import (
    StreamItems,
    TrainingConfig,
    check_args,
    load_train_dataset,
    load_train_stream,
    parse_args,
    split_stream,
    train,
)
from diffusers_edge.training import loop as training_loop


def _image_bytes(index, fmt="PNG"):
    pixels = np.random.default_rng(index).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _parquet_shards(folder, sizes, captions=None):
    """Parquet files of `sizes` rows: `jpg` PNG bytes and `txt` captions ("caption i", or `captions[i]`)."""
    paths, start = [], 0
    for shard, size in enumerate(sizes):
        rows = range(start, start + size)
        text = [f"caption {i}" if captions is None else captions[i] for i in rows]
        path = folder / f"train-{shard:05d}.parquet"
        pq.write_table(pa.table({"jpg": [_image_bytes(i) for i in rows], "txt": text}), path)
        paths.append(str(path))
        start += size
    return paths


def _webdataset_shards(folder, sizes):
    """WebDataset .tar files of `sizes` samples: `NNNN.jpg` (JPEG) and `NNNN.txt` ("caption i")."""
    paths, start = [], 0
    for shard, size in enumerate(sizes):
        path = folder / f"train-{shard:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in range(start, start + size):
                for extension, data in (("jpg", _image_bytes(i, "JPEG")), ("txt", f"caption {i}".encode())):
                    member = tarfile.TarInfo(f"{i:04d}.{extension}")
                    member.size = len(data)
                    archive.addfile(member, io.BytesIO(data))
        paths.append(str(path))
        start += size
    return paths


def _config(*extra, **fields):
    config = TrainingConfig(
        pretrained_model_name_or_path="sd", image_column="jpg", caption_column="txt", resolution=16, **fields
    )
    return parse_args([*config.to_argv(), *extra])


def _args(sd, clip, out, data_files, *extra):
    return parse_args(
        [
            "--pretrained_model_name_or_path", str(sd), "--clip_model_name_or_path", str(clip),
            "--output_dir", str(out), "--resolution", "16", "--train_batch_size", "2", "--report_to", "none",
            "--loss_max_timestep", "999", "--streaming", "--train_data_files", *data_files,
            "--image_column", "jpg", "--caption_column", "txt", *extra,
        ]
    )  # fmt: skip


def _captions(items, count):
    iterator = iter(items)
    return [next(iterator)["caption"] for _ in range(count)]


# Every pass over a Parquet stream ends with a 5 s sleep in datasets (SLEEP_TIME_ON_THREADS_SHUTDOWN, an Arrow
# workaround), so the tests that read many passes use WebDataset shards.


# ------------------------------------------------------------------------------------------------ flags


def test_streaming_flags_parse_round_trip_and_refuse_what_cannot_work():
    config = _config("--streaming", "--train_data_files", "a/*.tar", "b/x.tar", "--max_train_steps", "5")
    assert config.streaming and config.train_data_files == ["a/*.tar", "b/x.tar"]
    assert config.shuffle_buffer_size == 1000
    assert parse_args(config.to_argv()) == config
    with pytest.raises(ValueError, match="--streaming needs --max_train_steps"):
        _config("--streaming", "--train_data_files", "x.parquet")
    with pytest.raises(ValueError, match="--max_train_samples cannot be used with --streaming"):
        _config("--streaming", "--max_train_steps", "5", "--max_train_samples", "10")
    with pytest.raises(ValueError, match="--dataloader_num_workers must be 0 with --streaming"):
        _config("--streaming", "--max_train_steps", "5", "--dataloader_num_workers", "2")
    with pytest.raises(ValueError, match="cannot tell the format from '.csv'"):
        _config("--train_data_files", "x.csv")
    with pytest.raises(ValueError, match=r"all be of one kind, got \['parquet', 'webdataset'\]"):
        _config("--train_data_files", "x.parquet", "y.tar")
    with pytest.raises(ValueError, match="one data source, not --dataset_name and --train_data_files"):
        _config("--train_data_files", "x.parquet", "--dataset_name", "y")
    with pytest.raises(ValueError, match="--shuffle_buffer_size must be positive"):
        check_args(TrainingConfig(pretrained_model_name_or_path="sd", shuffle_buffer_size=0))


# ------------------------------------------------------------------------------------------------ the stream


def test_parquet_and_webdataset_streams_are_read_with_their_columns(tmp_path):
    parquet = _parquet_shards(tmp_path, [3, 2])
    tar = _webdataset_shards(tmp_path, [4])
    for files, count in ((parquet, 5), (tar, 4)):
        config = _config("--streaming", "--max_train_steps", "1", "--train_data_files", *files)
        stream, caption_column = load_train_stream(config)
        assert isinstance(stream, datasets.IterableDataset) and caption_column == "txt"
        assert sorted(row["txt"] for row in stream) == sorted(f"caption {i}" for i in range(count))
    item = next(iter(StreamItems(stream, config)))  # the Parquet images are decoded in the train test below
    assert item["pixel_values"].shape == (3, 16, 16) and item["caption"].startswith("caption ")
    with pytest.raises(ValueError, match=r"--image_column 'png' is not a column .* \['jpg', 'txt'"):
        load_train_stream(_config("--streaming", "--max_train_steps", "1", "--train_data_files", *parquet,
                                  "--image_column", "png"))  # fmt: skip
    # without --streaming the same files load map-style, the image bytes read as images
    dataset, _ = load_train_dataset(_config("--train_data_files", *parquet))
    assert len(dataset) == 5 and dataset[4]["jpg"].size == (24, 20) and dataset[4]["txt"] == "caption 4"


def test_a_bad_caption_is_named_by_its_stream_position_and_lists_are_drawn_from(tmp_path):
    captions = [["a red circle", "a big red circle"], ["a blue square"], ["a green triangle", ""]]
    files = _parquet_shards(tmp_path, [3], captions=captions)
    config = _config("--streaming", "--max_train_steps", "1", "--train_data_files", *files)
    stream, _ = load_train_stream(config)
    unshuffled = _config(*config.to_argv(), "--shuffle_buffer_size", "1")  # a buffer of 1 keeps the file's order
    items = iter(StreamItems(stream, unshuffled))
    assert next(items)["caption"] in captions[0] and next(items)["caption"] == "a blue square"
    with pytest.raises(ValueError, match=r"stream position 2 \(pass 0, process 0\) \(column 'txt'\) has an empty"):
        next(items)


def test_passes_are_shuffled_differently_and_an_empty_part_is_refused(tmp_path):
    config = _config("--streaming", "--max_train_steps", "1", "--shuffle_buffer_size", "4")
    config.train_data_files = _webdataset_shards(tmp_path, [4, 4])
    stream, _ = load_train_stream(config)
    items = StreamItems(stream, config)
    first, second = _captions(items, 8), _captions(StreamItems(stream, config), 16)[8:]
    assert sorted(first) == sorted(second) == sorted(f"caption {i}" for i in range(8)) and first != second
    one = datasets.Dataset.from_dict({"jpg": [None], "txt": ["caption 0"]}).to_iterable_dataset()
    with pytest.raises(ValueError, match="process 1 of 2 got no examples from the training stream"):
        next(iter(StreamItems(split_stream(one, 1, 2), config, process_index=1, num_processes=2)))


def test_split_gives_whole_shards_or_every_other_example_disjoint_and_covering(tmp_path, caplog):
    for sizes, count, level in (([3, 4], 7, "INFO"), ([5], 5, "WARNING")):
        folder = tmp_path / f"{len(sizes)}-shards"
        folder.mkdir()
        files = _webdataset_shards(folder, sizes)
        config = _config("--streaming", "--max_train_steps", "1", "--train_data_files", *files)
        stream, _ = load_train_stream(config)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="diffusers_edge.training.streaming"):
            parts = [[row["txt"] for row in split_stream(stream, rank, 2)] for rank in range(2)]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(f"caption {i}" for i in range(count))
        (record,) = caplog.records  # process 0 says how the stream is split; process 1 says nothing
        assert record.levelname == level
        if level == "INFO":  # two files, two processes: one whole file each
            assert sorted(map(len, parts)) == [3, 4] and "1 whole shards per process" in record.getMessage()
        else:  # one file cannot be divided: both read it and keep every other example
            assert parts == [["caption 0", "caption 2", "caption 4"], ["caption 1", "caption 3"]]
            assert "every process reads every shard and keeps 1/2" in record.getMessage()


def test_stream_state_resumes_at_the_same_position_across_passes(tmp_path):
    config = _config("--streaming", "--max_train_steps", "1", "--shuffle_buffer_size", "3", "--random_flip")
    config.train_data_files = _webdataset_shards(tmp_path, [3, 2])
    stream, _ = load_train_stream(config)
    full = list(zip(range(13), StreamItems(stream, config)))
    interrupted = StreamItems(stream, config)
    before = list(zip(range(7), interrupted))  # pass 0 (5 examples) and 2 of pass 1
    state = interrupted.state_dict()
    assert state == {"positions": [(1, 2)], "seed": 0, "shuffle_buffer_size": 3}
    resumed = StreamItems(stream, config)
    resumed.load_state_dict(state)
    after = list(zip(range(6), resumed))
    assert [i["caption"] for _, i in before + after] == [i["caption"] for _, i in full]
    for (_, a), (_, b) in zip(before + after, full):
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
    other = StreamItems(stream, _config(*config.to_argv(), "--shuffle_buffer_size", "4"))
    with pytest.raises(ValueError, match="--shuffle_buffer_size 3; this run has 1, 0 and 4"):
        other.load_state_dict(state)


# ------------------------------------------------------------------------------------------------ train()


@pytest.fixture
def recorded_batches(monkeypatch):
    """Every batch the objective is called on, as (SD token ids, pixels)."""
    seen = []

    class Recording(training_loop.EDGEObjective):
        def __call__(self, batch, generator=None):
            seen.append((batch["input_ids"].clone(), batch["pixel_values"].clone()))
            return super().__call__(batch, generator)

    monkeypatch.setattr(training_loop, "EDGEObjective", Recording)
    return seen


def test_streamed_run_writes_a_lora_that_loads_back(tiny_sd, tiny_clip, tmp_path, recorded_batches):
    files = _parquet_shards(tmp_path, [4, 4])  # 8 examples, 3 steps of 2: one pass
    result = train(_args(tiny_sd, tiny_clip, tmp_path / "out", files, "--max_train_steps", "3",
                         "--learning_rate", "1e-2"))  # fmt: skip
    assert result.global_step == 3 and len(recorded_batches) == 3
    weights = load_file(result.weights_path)
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora.up" in k)  # LoRA up (B) starts at 0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.load_lora_weights(tmp_path / "out")
    assert pipe.unet.peft_config
    assert "train-00000.parquet" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(ValueError, match="is a stream .* train it with --streaming"):
        plain = _args(tiny_sd, tiny_clip, tmp_path / "plain", files, "--max_train_steps", "1")
        plain.streaming = False
        train(plain, datasets.load_dataset("parquet", data_files=files, split="train", streaming=True))


def test_resumed_streamed_run_sees_the_batches_of_an_uninterrupted_one(tiny_sd, tiny_clip, tmp_path, recorded_batches):
    # 5 examples, batch 2: the checkpoint at step 2 sits at position 4 of pass 0, step 3 spans passes 0 and 1
    files = _webdataset_shards(tmp_path, [5])
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--learning_rate", "1e-2", "--random_flip"]
    flags += ["--shuffle_buffer_size", "3"]
    full = train(_args(tiny_sd, tiny_clip, tmp_path / "full", files, *flags))
    uninterrupted = list(recorded_batches)
    recorded_batches.clear()
    first = _args(tiny_sd, tiny_clip, tmp_path / "resumed", files, *flags)
    first.max_train_steps = 2
    train(first)
    state = torch.load(tmp_path / "resumed" / "checkpoint-2" / "custom_checkpoint_0.pkl", weights_only=False)
    assert state["positions"] == [(0, 4)]
    resume = _args(tiny_sd, tiny_clip, tmp_path / "resumed", files, *flags, "--resume_from_checkpoint", "latest")
    resumed = train(resume)
    assert full.global_step == resumed.global_step == 4 and len(recorded_batches) == len(uninterrupted) == 4
    for (ids, pixels), (ids_full, pixels_full) in zip(recorded_batches, uninterrupted):
        assert torch.equal(ids, ids_full) and torch.equal(pixels, pixels_full)
    assert not torch.equal(uninterrupted[0][1], uninterrupted[3][1])
    a, b = load_file(full.weights_path), load_file(resumed.weights_path)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # the same files loaded map-style: the checkpoint's stream position has nowhere to go
    map_style = dataclasses.replace(resume, streaming=False)
    with pytest.raises(RuntimeError, match="could not be loaded .* custom checkpoints"):
        train(map_style)
