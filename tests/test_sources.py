"""Adapters into the normalized form: small fixture files in each format, round trips, and bad inputs."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.data.sources import (
    load_hub_source,
    load_imagefolder_source,
    load_karpathy_json,
    load_source,
    pre_caption,
)


def write_png(path: Path, seed: int, size: tuple[int, int] = (7, 5)) -> np.ndarray:
    """Writes a small random RGB PNG and returns its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(pixels).save(path)
    return pixels


def png_bytes(seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def pixels_of(dataset: datasets.Dataset, row: int) -> np.ndarray:
    return np.asarray(dataset[row]["image"].convert("RGB"))


# --------------------------------------------------------------------------------------------------- pre_caption


@pytest.mark.parametrize(
    ("raw", "max_words", "expected"),
    [
        ("A dog (brown) runs!  Fast.", 30, "a dog brown runs fast"),
        # commas, apostrophes, hyphens and slashes are kept by BLIP's rule
        ("Two men, one in a T-shirt/jeans, aren't smiling.", 30, "two men, one in a t-shirt/jeans, aren't smiling"),
        ('He said: "hi"; then~left*#', 30, "he said hi then left"),
        ("A girl\tis\n\nrunning.\n", 30, "a girl\tis running"),
        ("one two three four five six", 4, "one two three four"),
        ("  Spaces   around   ", 30, "spaces around"),
        ("...!!!", 30, ""),
    ],
)
def test_pre_caption_matches_hand_computed_blip_outputs(raw, max_words, expected):
    assert pre_caption(raw, max_words=max_words) == expected


def test_pre_caption_default_keeps_thirty_words():
    words = [f"w{i}" for i in range(40)]
    assert pre_caption(" ".join(words)) == " ".join(words[:30])


# ------------------------------------------------------------------------------------------------ Karpathy JSON


@pytest.fixture
def flickr_root(tmp_path):
    root = tmp_path / "flickr30k"
    pixels = {name: write_png(root / "flickr30k-images" / f"{name}.png", seed) for seed, name in enumerate("abc")}
    return root, pixels


def test_karpathy_train_groups_records_by_image_in_first_seen_order(flickr_root, tmp_path):
    root, pixels = flickr_root
    records = [
        {"image": "flickr30k-images/b.png", "caption": "B one.", "image_id": 1},
        {"image": "flickr30k-images/a.png", "caption": "A one", "image_id": 0},
        {"image": "flickr30k-images/b.png", "caption": "B two", "image_id": 1},
        {"image": "flickr30k-images/c.png", "caption": "C one", "image_id": 2},
        {"image": "./flickr30k-images/../flickr30k-images/a.png", "caption": "A two", "image_id": 0},  # same file
    ]
    train = load_karpathy_json(write_json(tmp_path / "flickr30k_train.json", records), root)

    assert train.features == NORMALIZED_FEATURES
    assert train["image_id"] == ["1", "0", "2"]
    assert train["captions"] == [["B one.", "B two"], ["A one", "A two"], ["C one"]]
    np.testing.assert_array_equal(pixels_of(train, 0), pixels["b"])
    np.testing.assert_array_equal(pixels_of(train, 2), pixels["c"])


def test_karpathy_test_file_one_record_per_image_with_preprocessing(flickr_root, tmp_path):
    root, pixels = flickr_root
    records = [
        {"image": "flickr30k-images/c.png", "caption": ["A Man (left) waves!", "Two dogs: one black."]},
        {"image": "flickr30k-images/a.png", "caption": ["Kids play in a yard."], "image_id": "img-a"},
    ]
    test = load_karpathy_json(
        write_json(tmp_path / "flickr30k_test.json", records), str(root), preprocess=True, max_words=3
    )

    assert test.features == NORMALIZED_FEATURES
    assert test["image_id"] == ["c", "img-a"]  # the path stem, or the given id
    assert test["captions"] == [["a man left", "two dogs one"], ["kids play in"]]
    np.testing.assert_array_equal(pixels_of(test, 0), pixels["c"])
    np.testing.assert_array_equal(pixels_of(test, 1), pixels["a"])


def test_karpathy_original_dataset_json_filters_splits(flickr_root, tmp_path):
    root, pixels = flickr_root
    data = {
        "dataset": "flickr30k",
        "images": [
            {"filename": "a.png", "filepath": "flickr30k-images", "split": "train", "sentences": [{"raw": "x."}]},
            {
                "filename": "b.png",
                "filepath": "flickr30k-images",
                "split": "test",
                "sentences": [{"raw": "First one."}, {"raw": "Second."}],
            },
            {"filename": "c.png", "filepath": "flickr30k-images", "split": "restval", "sentences": [{"raw": "y"}]},
        ],
    }
    annotation = write_json(tmp_path / "dataset_flickr30k.json", data)

    test = load_karpathy_json(annotation, root, split="test")
    assert test["image_id"] == ["b"]
    assert test["captions"] == [["First one.", "Second."]]
    np.testing.assert_array_equal(pixels_of(test, 0), pixels["b"])

    train = load_karpathy_json(annotation, root, split=["train", "restval"])
    assert train["image_id"] == ["a", "c"]
    assert load_karpathy_json(annotation, root).num_rows == 3

    with pytest.raises(ValueError, match=r"no images in split \['val'\].*\['restval', 'test', 'train'\]"):
        load_karpathy_json(annotation, root, split="val")


def karpathy_error(tmp_path, root, records, **kwargs):
    annotation = write_json(tmp_path / "bad.json", records)
    return lambda: load_karpathy_json(annotation, root, **kwargs)


def test_karpathy_missing_field_names_record_and_lists_fields(flickr_root, tmp_path):
    root, _ = flickr_root
    records = [{"image": "flickr30k-images/a.png", "caption": "ok"}, {"image": "flickr30k-images/b.png"}]
    with pytest.raises(ValueError, match=r"bad\.json record 1 has no \['caption'\] field\(s\); it has \['image'\]"):
        karpathy_error(tmp_path, root, records)()


def test_karpathy_missing_image_names_file_and_record(flickr_root, tmp_path):
    root, _ = flickr_root
    records = [{"image": "flickr30k-images/a.png", "caption": "ok"}, {"image": "nope/z.jpg", "caption": "z"}]
    with pytest.raises(FileNotFoundError, match=r"record 1 \(image 'nope/z\.jpg'\).*z\.jpg' does not exist"):
        karpathy_error(tmp_path, root, records)()


def test_karpathy_unreadable_image_names_file_and_record(flickr_root, tmp_path):
    root, _ = flickr_root
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    records = [{"image": "flickr30k-images/a.png", "caption": "ok"}, {"image": "broken.png", "caption": "b"}]
    with pytest.raises(ValueError, match=r"record 1 \(image 'broken\.png'\).*broken\.png' cannot be read"):
        karpathy_error(tmp_path, root, records)()


@pytest.mark.parametrize(
    ("caption", "kwargs", "message"),
    [
        ([], {}, r"record 0 \(image 'flickr30k-images/a\.png'\) has no captions"),
        (["fine", "  "], {}, r"record 0 \(image 'flickr30k-images/a\.png'\) has an empty caption at position 1"),
        ("", {}, r"record 0 .* has an empty caption at position 0"),
        (["...!"], {"preprocess": True}, r"record 0 .*after BLIP pre_caption\) has an empty caption"),
        (7, {}, r"record 0 .*captions must be a string or a list of strings, got int"),
    ],
)
def test_karpathy_empty_captions_name_the_record(flickr_root, tmp_path, caption, kwargs, message):
    root, _ = flickr_root
    records = [{"image": "flickr30k-images/a.png", "caption": caption}]
    with pytest.raises(ValueError, match=message):
        karpathy_error(tmp_path, root, records, **kwargs)()


def test_karpathy_same_id_different_files_names_both(flickr_root, tmp_path):
    root, _ = flickr_root
    records = [
        {"image": "flickr30k-images/a.png", "caption": "one", "image_id": "7"},
        {"image": "flickr30k-images/b.png", "caption": "two", "image_id": "7"},
    ]
    with pytest.raises(ValueError, match=r"record 1 .*image_id '7' already belongs to .*a\.png' \(.*record 0"):
        karpathy_error(tmp_path, root, records)()


def test_karpathy_rejects_split_for_per_split_files_and_other_shapes(flickr_root, tmp_path):
    root, _ = flickr_root
    records = [{"image": "flickr30k-images/a.png", "caption": "one"}]
    with pytest.raises(ValueError, match="holds one split already"):
        karpathy_error(tmp_path, root, records, split="test")()
    with pytest.raises(ValueError, match="neither a BLIP annotation list"):
        karpathy_error(tmp_path, root, {"annotations": []})()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_karpathy_json(tmp_path / "absent.json", root)


# ------------------------------------------------------------------------------------------------- imagefolder


def write_imagefolder(folder: Path, lines: list) -> dict[str, np.ndarray]:
    pixels = {"cat": write_png(folder / "cat.png", 10), "dog": write_png(folder / "pets" / "dog.png", 11)}
    write_png(folder / "unlisted.png", 12)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (folder / "metadata.jsonl").write_text(text + "\n", encoding="utf-8")
    return pixels


def test_imagefolder_round_trip(tmp_path):
    folder = tmp_path / "photos"
    pixels = write_imagefolder(
        folder,
        [
            {"file_name": "pets/dog.png", "text": ["A Dog.", "a puppy"]},
            "",
            {"file_name": "cat.png", "text": "A cat!"},
            {"file_name": "pets/dog.png", "text": "third dog caption"},
        ],
    )
    photos = load_imagefolder_source(folder, caption_column="text")

    assert photos.features == NORMALIZED_FEATURES
    assert photos["image_id"] == ["dog", "cat"]
    assert photos["captions"] == [["A Dog.", "a puppy", "third dog caption"], ["A cat!"]]
    np.testing.assert_array_equal(pixels_of(photos, 0), pixels["dog"])
    np.testing.assert_array_equal(pixels_of(photos, 1), pixels["cat"])
    assert load_imagefolder_source(folder, "text", preprocess=True)["captions"][1] == ["a cat"]


@pytest.mark.parametrize(
    ("lines", "error", "message"),
    [
        ([{"file_name": "cat.png"}], ValueError, r"jsonl line 1 has no \['caption'\].*it has \['file_name'\]"),
        (['{"file_name": "cat.png", '], ValueError, r"metadata\.jsonl line 1 is not valid JSON"),
        (
            [{"file_name": "cat.png", "caption": "c"}, {"file_name": "gone.png", "caption": "g"}],
            FileNotFoundError,
            r"line 2 \(file_name 'gone\.png'\).*gone\.png' does not exist",
        ),
        ([{"file_name": "cat.png", "caption": []}], ValueError, r"line 1 \(file_name 'cat\.png'\) has no captions"),
        (
            [{"file_name": "cat.png", "caption": "c"}, {"file_name": "pets/cat.png", "caption": "c2"}],
            ValueError,
            r"line 2 .*image_id 'cat' already belongs to .*cat\.png' \(.*line 1 \(file_name 'cat\.png'\)\)",
        ),
        ([{"file_name": "bad.png", "caption": "c"}], ValueError, r"line 1 \(file_name 'bad\.png'\).*cannot be read"),
    ],
)
def test_imagefolder_bad_input_names_the_line(tmp_path, lines, error, message):
    folder = tmp_path / "photos"
    write_imagefolder(folder, lines)
    write_png(folder / "pets" / "cat.png", 13)
    (folder / "bad.png").write_bytes(b"GIF89a garbage")
    with pytest.raises(error, match=message):
        load_imagefolder_source(folder)


def test_imagefolder_needs_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no metadata.jsonl"):
        load_imagefolder_source(tmp_path)


# ------------------------------------------------------------------------------------------------ Hub datasets


def flickr_hub_copy(n: int = 6) -> tuple[datasets.Dataset, list[np.ndarray]]:
    """The column layout of the common Flickr30K Hub copy: image, caption (5), sentids, split, img_id, filename."""
    encoded = [png_bytes(100 + i) for i in range(n)]
    splits = ["train", "test", "val", "train", "test", "train"][:n]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.List(datasets.Value("string")),
            "sentids": datasets.List(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )
    table = {
        "image": [{"bytes": data, "path": None} for data, _ in encoded],
        "caption": [[f"Image {i}, caption {k}." for k in range(5)] for i in range(n)],
        "sentids": [[str(5 * i + k) for k in range(5)] for i in range(n)],
        "split": splits,
        "img_id": [str(i) for i in range(n)],
        "filename": [f"{1000 + i}.jpg" for i in range(n)],
    }
    return datasets.Dataset.from_dict(table, features=features), [pixels for _, pixels in encoded]


def test_hub_flickr_layout_from_a_local_parquet_name(tmp_path):
    source, pixels = flickr_hub_copy()
    folder = tmp_path / "flickr30k-copy"
    (folder / "data").mkdir(parents=True)
    source.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))

    test = load_hub_source(
        str(folder),
        split="test",
        image_id_column="img_id",
        split_column="split",
        split_value="test",
        cache_dir=str(tmp_path / "cache"),
    )
    assert test.features == NORMALIZED_FEATURES
    assert test["image_id"] == ["1", "4"]
    assert test["captions"][1] == [f"Image 4, caption {k}." for k in range(5)]
    np.testing.assert_array_equal(pixels_of(test, 0), pixels[1])
    np.testing.assert_array_equal(pixels_of(test, 1), pixels[4])

    train = load_hub_source(source, split_column="split", split_value=["train", "val"], preprocess=True)
    assert train["image_id"] == ["0", "2", "3", "5"]  # row numbers of the unfiltered split
    assert train["captions"][0][:2] == ["image 0, caption 0", "image 0, caption 1"]


def test_hub_single_string_captions_and_path_images(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    pixels = [write_png(Path(p), 200 + i) for i, p in enumerate(paths)]
    source = datasets.Dataset.from_dict({"file": paths, "text": ["one", "two", "three"], "key": [30, 10, 20]})

    out = load_hub_source(source, image_column="file", caption_column="text", image_id_column="key")
    assert out.features == NORMALIZED_FEATURES
    assert out["captions"] == [["one"], ["two"], ["three"]]
    assert out["image_id"] == ["30", "10", "20"]
    np.testing.assert_array_equal(pixels_of(out, 2), pixels[2])


def test_hub_dataset_dict_needs_a_split_when_it_has_several():
    source, _ = flickr_hub_copy(2)
    both = datasets.DatasetDict(train=source, test=source.select([1]))
    assert load_hub_source(both, split="test")["image_id"] == ["0"]
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]"):
        load_hub_source(both)
    with pytest.raises(ValueError, match="one split already"):
        load_hub_source(source, split="train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"caption_column": "captions"},
            r"no column 'captions' \(caption_column='captions'\); its columns are "
            r"\['image', 'caption', 'sentids', 'split', 'img_id', 'filename'\]",
        ),
        ({"image_column": "jpg"}, r"no column 'jpg' \(image_column='jpg'\)"),
        ({"split_column": "fold", "split_value": "a"}, r"no column 'fold' \(split_column='fold'\)"),
        ({"split_column": "split", "split_value": "dev"}, r"no row has split in \['dev'\].*\['test', 'train', 'val'"),
        ({"split_column": "split"}, "give both or neither"),
    ],
)
def test_hub_bad_columns_are_named(kwargs, message):
    source, _ = flickr_hub_copy()
    with pytest.raises(ValueError, match=message):
        load_hub_source(source, **kwargs)


def test_hub_bad_rows_are_named():
    source, _ = flickr_hub_copy(4)

    empty = source.map(lambda row, i: {"caption": [] if i == 2 else row["caption"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"row 2 \(image_id='2'\) has no captions"):
        load_hub_source(empty, image_id_column="img_id")

    blank = source.map(lambda row, i: {"caption": ["a", ""] if i == 3 else row["caption"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"row 3 \(image_id='3'\) has an empty caption at position 1"):
        load_hub_source(blank, image_id_column="img_id", split_column="split", split_value="train")

    twice = source.map(lambda row, i: {"img_id": "x" if i in (1, 3) else row["img_id"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"image_id 'x' appears twice \(rows 1 and 3\)"):
        load_hub_source(twice, image_id_column="img_id")

    no_image = source.cast_column("image", datasets.Image(decode=False)).map(
        lambda row, i: {"image": None if i == 1 else row["image"]}, with_indices=True
    )
    with pytest.raises(ValueError, match=r"row 1 \(image_id='1'\) has no image in column 'image'"):
        load_hub_source(no_image, image_id_column="img_id")


def test_hub_thousands_of_rows_without_decoding_images(monkeypatch):
    data, _ = png_bytes(0)
    n = 5000
    source = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": None}] * n,
            "caption": [[f"c{i}", f"d{i}"] for i in range(n)],
            "split": ["train" if i % 5 else "test" for i in range(n)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "caption": datasets.List(datasets.Value("string")),
                "split": datasets.Value("string"),
            }
        ),
    )

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(datasets.features.image.Image, "decode_example", refuse)
    start = time.perf_counter()
    test = load_hub_source(source, split_column="split", split_value="test")
    elapsed = time.perf_counter() - start
    assert test.num_rows == 1000
    assert test["image_id"][:3] == ["0", "5", "10"]
    assert test["captions"][-1] == ["c4995", "d4995"]
    assert elapsed < 10, elapsed


# ------------------------------------------------------------------------------------------------- load_source


def test_load_source_dispatches_on_what_it_is_given(flickr_root, tmp_path):
    root, _ = flickr_root
    annotation = write_json(root / "flickr30k_val.json", [{"image": "flickr30k-images/a.png", "caption": ["v"]}])
    assert load_source(annotation)["image_id"] == ["a"]  # image_root defaults to the JSON file's folder
    assert load_source(str(annotation), image_root=root, preprocess=True)["captions"] == [["v"]]

    folder = tmp_path / "photos"
    write_imagefolder(folder, [{"file_name": "cat.png", "caption": "A cat."}])
    assert load_source(folder)["captions"] == [["A cat."]]

    hub, _ = flickr_hub_copy(3)
    assert load_source(hub, image_id_column="filename")["image_id"] == ["1000.jpg", "1001.jpg", "1002.jpg"]
    saved = tmp_path / "saved"
    datasets.DatasetDict(test=hub).save_to_disk(str(saved))
    assert load_source(saved, split="test", split_column="split", split_value="val")["image_id"] == ["2"]


def test_load_source_passes_a_normalized_dataset_through(tmp_path):
    hub, _ = flickr_hub_copy(3)
    normalized = load_hub_source(hub, image_id_column="filename").add_column("seed", [1, 2, 3])
    same = load_source(normalized)
    assert same is normalized  # validated, extra columns kept
    cleaned = load_source(normalized, preprocess=True)
    assert cleaned.features == NORMALIZED_FEATURES
    assert cleaned["captions"][0][0] == "image 0, caption 0"
    assert cleaned["image_id"] == ["1000.jpg", "1001.jpg", "1002.jpg"]
    renamed = load_source(normalized, image_id_column="seed")  # a column argument asks for a conversion
    assert renamed.column_names == ["image", "captions", "image_id"]
    assert list(renamed["image_id"]) == ["1", "2", "3"]
    assert list(renamed["captions"]) == list(normalized["captions"])
    twice = normalized.map(lambda row: {"image_id": "same"})
    with pytest.raises(ValueError, match="appears twice"):
        load_source(twice)


def test_load_source_missing_json_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_source(tmp_path / "absent.json")


# -------------------------------------------------------------------------------------------------------- docs


def test_docs_adapter_examples_run(tmp_path, monkeypatch, capsys):
    """Every Python block under '## Adapters' in docs/data.md runs and prints what its '# ...' lines say."""
    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    section = text.split("## Adapters", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        lines = block.splitlines()
        expected = [b[2:] for a, b in zip(lines, lines[1:]) if a.startswith("print(") and b.startswith("# ")]
        exec(compile(block, "docs/data.md", "exec"), namespace)
        assert capsys.readouterr().out.splitlines() == expected
