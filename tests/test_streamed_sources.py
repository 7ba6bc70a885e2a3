"""The streamed adapter: Parquet and WebDataset shards written here, read as streams row by row and compared with
the in-memory adapters on the same files; lazy image decoding; bad inputs named."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.data.sources import load_hub_source, load_source, load_streamed_source


def image_bytes(seed: int, image_format: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


SPLITS = ["train", "test", "val", "test", "train", "train", "test"]


def write_parquet_shards(folder: Path, rows_per_shard=(3, 2, 2)) -> Path:
    """A Flickr-like table (image, caption list, split, img_id) as several Parquet files of one `train` split."""
    folder.mkdir(parents=True)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.List(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("int64"),
        }
    )
    start = 0
    for shard, n in enumerate(rows_per_shard):
        rows = range(start, start + n)
        table = {
            "image": [{"bytes": image_bytes(i), "path": None} for i in rows],
            "caption": [[f"Image {i}: a Photo.", f"Another (caption) {i}!"] for i in rows],
            "split": [SPLITS[i] for i in rows],
            "img_id": [100 + i for i in rows],
        }
        shard_file = folder / f"train-{shard:05d}-of-{len(rows_per_shard):05d}.parquet"
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(shard_file))
        start += n
    return folder


def write_webdataset(path: Path, samples: list[tuple[str, bytes, str]]) -> Path:
    """A WebDataset .tar: per sample `<key>.jpg`, `<key>.txt` and `<key>.json`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, jpg, txt in samples:
            for extension, data in [("jpg", jpg), ("txt", txt.encode()), ("json", json.dumps({"key": key}).encode())]:
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def cc3m_samples(n: int = 4) -> list[tuple[str, bytes, str]]:
    return [(f"{i:09d}", image_bytes(50 + i, "JPEG"), f"A Dog, number {i} (on the beach)!") for i in range(n)]


def rows_of(dataset) -> list[tuple[list[str], str, np.ndarray]]:
    """(captions, image_id, pixels) per row: the whole content a reader sees, in order."""
    return [(row["captions"], row["image_id"], np.asarray(row["image"].convert("RGB"))) for row in dataset]


def assert_same_rows(streamed, in_memory) -> None:
    got, expected = rows_of(streamed), rows_of(in_memory)
    assert [r[:2] for r in got] == [r[:2] for r in expected]
    for (_, image_id, pixels), (_, _, expected_pixels) in zip(got, expected):
        np.testing.assert_array_equal(pixels, expected_pixels, err_msg=image_id)


# ---------------------------------------------------------------------------------------- equal to the in-memory path


@pytest.mark.parametrize("preprocess", [False, True])
def test_parquet_shards_stream_like_the_in_memory_adapter(tmp_path, preprocess):
    folder = write_parquet_shards(tmp_path / "shards")
    cache = str(tmp_path / "cache")
    in_memory = load_hub_source(str(folder), split="train", preprocess=preprocess, cache_dir=cache)
    streamed = load_streamed_source(folder, preprocess=preprocess)
    assert isinstance(streamed, datasets.IterableDataset)
    assert streamed.features == NORMALIZED_FEATURES
    assert_same_rows(streamed, in_memory)
    assert [row["image_id"] for row in streamed] == [str(i) for i in range(7)]  # positions across the 3 files
    first = next(iter(streamed))["captions"]
    assert first == (
        ["image 0 a photo", "another caption 0"] if preprocess else ["Image 0: a Photo.", "Another (caption) 0!"]
    )

    by_glob = load_source(str(folder / "*.parquet"), streaming=True, image_id_column="img_id", preprocess=preprocess)
    with_ids = load_hub_source(
        str(folder), split="train", image_id_column="img_id", preprocess=preprocess, cache_dir=cache
    )
    assert_same_rows(by_glob, with_ids)
    assert [row["image_id"] for row in by_glob][:2] == ["100", "101"]


def test_split_filtering_keeps_the_in_memory_ids(tmp_path):
    folder = write_parquet_shards(tmp_path / "shards")
    kwargs = {"split_column": "split", "split_value": "test"}
    in_memory = load_hub_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"), **kwargs)
    streamed = load_streamed_source(folder, **kwargs)
    assert_same_rows(streamed, in_memory)
    assert [row["image_id"] for row in streamed] == ["1", "3", "6"]  # positions before filtering, as in memory
    several = load_source(folder, streaming=True, split_column="split", split_value=["val", "train"])
    assert [row["image_id"] for row in several] == ["0", "2", "4", "5"]
    first = next(iter(several))["image_id"]
    state = several.state_dict()  # after the first kept row
    several.load_state_dict(state)
    assert [first] + [row["image_id"] for row in several] == ["0", "2", "4", "5"]


@pytest.mark.parametrize("preprocess", [False, True])
def test_webdataset_shards_stream_like_the_in_memory_adapter(tmp_path, preprocess):
    samples = cc3m_samples()
    shards = [write_webdataset(tmp_path / "cc3m" / f"{k:05d}.tar", samples[2 * k : 2 * k + 2]) for k in range(2)]
    columns = {"image_column": "jpg", "caption_column": "txt", "preprocess": preprocess}
    in_memory = load_hub_source(
        "webdataset", split="train", data_files=[str(s) for s in shards], image_id_column="__key__",
        cache_dir=str(tmp_path / "cache"), **columns,
    )  # fmt: skip
    streamed = load_streamed_source(str(tmp_path / "cc3m" / "*.tar"), **columns)
    assert streamed.features == NORMALIZED_FEATURES
    assert_same_rows(streamed, in_memory)
    assert [row["image_id"] for row in streamed] == [key for key, _, _ in samples]  # __key__ by default
    expected = "a dog, number 0 on the beach" if preprocess else "A Dog, number 0 (on the beach)!"
    assert next(iter(streamed))["captions"] == [expected]

    by_builder = load_streamed_source("webdataset", data_files=[str(s) for s in shards], split="train", **columns)
    assert_same_rows(by_builder, in_memory)
    by_folder = load_source(tmp_path / "cc3m", streaming=True, **columns)
    assert_same_rows(by_folder, in_memory)


def test_iterable_inputs_and_resuming(tmp_path):
    folder = write_parquet_shards(tmp_path / "shards")
    stream = datasets.load_dataset(str(folder), streaming=True)  # an IterableDatasetDict with one split
    assert [row["image_id"] for row in load_streamed_source(stream, image_id_column="img_id")][-1] == "106"
    with pytest.raises(ValueError, match=r"splits \['train'\]"):
        load_streamed_source(stream, split="test")

    streamed = load_source(stream["train"], streaming=True)
    seen = []
    for row in streamed:
        seen.append(row["image_id"])
        if len(seen) == 4:  # in the second file
            state = streamed.state_dict()
            break
    streamed.load_state_dict(state)
    assert seen + [row["image_id"] for row in streamed] == [str(i) for i in range(7)]


def test_a_normalized_stream_passes_through_with_captions_checked(tmp_path):
    folder = write_parquet_shards(tmp_path / "shards")
    normalized = load_hub_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    extra = normalized.add_column("seed", list(range(7))).to_iterable_dataset()
    passed = load_source(extra, streaming=True)
    assert passed.column_names == ["image", "captions", "image_id", "seed"]
    assert_same_rows(passed, normalized)

    blank = normalized.map(lambda row, i: {"captions": [""] if i == 5 else row["captions"]}, with_indices=True)
    checked = load_source(blank.to_iterable_dataset(), streaming=True)
    with pytest.raises(ValueError, match=r"row 5 \(image_id='5'\) has an empty caption at position 0"):
        list(checked)
    converted = load_source(extra, streaming=True, preprocess=True)  # asks for a conversion
    assert converted.features == NORMALIZED_FEATURES
    assert next(iter(converted))["captions"] == ["image 0 a photo", "another caption 0"]


def test_a_stream_of_unknown_features_is_checked_row_by_row():
    def rows():
        yield {"jpg": image_bytes(1), "txt": "one"}
        yield {"jpg": image_bytes(2), "text": "two"}

    stream = datasets.IterableDataset.from_generator(rows)
    assert stream.column_names is None
    out = load_streamed_source(stream, image_column="jpg", caption_column="txt")
    iterator = iter(out)
    first = next(iterator)
    assert first["captions"] == ["one"] and first["image"].size == (7, 5)
    with pytest.raises(ValueError, match=r"row 1 has no column 'txt' \(caption_column='txt'\); its columns are "):
        next(iterator)


# ------------------------------------------------------------------------------------------------ lazy decoding


def test_a_caption_only_read_never_decodes_an_image(tmp_path, monkeypatch):
    samples = cc3m_samples(3)
    samples[1] = (samples[1][0], b"\xff\xd8 not a JPEG at all", samples[1][2])
    shard = write_webdataset(tmp_path / "broken.tar", samples)
    stream = load_streamed_source(shard, image_column="jpg", caption_column="txt")

    captions_only = list(stream.select_columns(["captions", "image_id"]))
    assert [row["image_id"] for row in captions_only] == ["000000000", "000000001", "000000002"]
    with pytest.raises(Exception, match="cannot identify image file"):  # PIL's error, when the image is read
        list(stream)

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    parquet = load_streamed_source(write_parquet_shards(tmp_path / "shards"), split_column="split", split_value="test")
    monkeypatch.setattr(datasets.features.image.Image, "decode_example", refuse)
    assert len(list(parquet.select_columns(["captions", "image_id"]))) == 3


# ------------------------------------------------------------------------------------------------------ bad input


def test_a_missing_column_names_the_existing_ones(tmp_path):
    shard = write_webdataset(tmp_path / "s.tar", cc3m_samples(2))
    with pytest.raises(ValueError, match=r"no column 'caption' \(caption_column='caption'\); its columns are "
                       r"\['jpg', 'txt', 'json', '__key__', '__url__'\]"):  # fmt: skip
        load_streamed_source(shard, image_column="jpg")
    with pytest.raises(ValueError, match=r"no column 'fold' \(split_column='fold'\)"):
        load_streamed_source(shard, image_column="jpg", caption_column="txt", split_column="fold", split_value="a")
    with pytest.raises(ValueError, match="give both or neither"):
        load_streamed_source(shard, image_column="jpg", caption_column="txt", split_column="split")


def test_an_empty_caption_names_the_stream_row(tmp_path):
    samples = cc3m_samples(3)
    samples[2] = (samples[2][0], samples[2][1], "   ")
    shard = write_webdataset(tmp_path / "s.tar", samples)
    stream = load_streamed_source(shard, image_column="jpg", caption_column="txt")
    with pytest.raises(ValueError, match=r"s\.tar row 2 \(image_id='000000002'\) has an empty caption at position 0"):
        list(stream.select_columns(["captions"]))
    punctuation = write_webdataset(tmp_path / "p.tar", [(samples[0][0], samples[0][1], "(!)")])
    with pytest.raises(ValueError, match=r"row 0 \(image_id='000000000'\) \(after BLIP pre_caption\) has an empty"):
        list(load_streamed_source(punctuation, image_column="jpg", caption_column="txt", preprocess=True))


def test_unknown_or_mixed_file_extensions_are_refused(tmp_path):
    (tmp_path / "pairs.csv").write_text("image,caption\n")
    with pytest.raises(ValueError, match=r"pairs\.csv'.*unknown file extension '\.csv'.*'\.parquet', '\.tar'"):
        load_streamed_source(tmp_path / "pairs.csv")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(image_bytes(0, "JPEG"))
    with pytest.raises(ValueError, match=r"holds no \.parquet or \.tar shards .*\['\.jpg'\]"):
        load_source(images, streaming=True)
    write_parquet_shards(tmp_path / "mixed", rows_per_shard=(1,))
    write_webdataset(tmp_path / "mixed" / "s.tar", cc3m_samples(1))
    with pytest.raises(ValueError, match="mixes Parquet and WebDataset shards"):
        load_streamed_source(tmp_path / "mixed")
    with pytest.raises(FileNotFoundError, match="No file matches"):
        load_streamed_source(str(tmp_path / "absent-*.tar"))


def test_random_access_paths_refuse_a_stream_and_say_what_to_use(tmp_path):
    stream = datasets.Dataset.from_dict({"image": [None], "caption": ["a"]}).to_iterable_dataset()
    with pytest.raises(TypeError, match=r"random access.*streaming=True.*load_streamed_source"):
        load_hub_source(stream)
    with pytest.raises(TypeError, match="random access"):
        load_source(stream)
    annotation = tmp_path / "flickr30k_test.json"
    annotation.write_text("[]")
    with pytest.raises(ValueError, match="read whole; load it without streaming=True"):
        load_source(annotation, streaming=True)
