"""Annotation files are untrusted: their image paths must stay inside the image root, and every silently wrong input
(one image under two ids, text or missing files in an image column, a truncated JPEG, a latin-1 file) is named."""

import io
import json
import os
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from diffusers_edge.data.distilled import export_blip_json, load_distilled
from diffusers_edge.data.sources import load_hub_source, load_imagefolder_source, load_karpathy_json, load_source


def write_png(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path.read_bytes()


@pytest.fixture
def layout(tmp_path):
    """A shared image root, and a private image beside it that no annotation may reach."""
    root = tmp_path / "root"
    write_png(root / "images" / "a.png", 0)
    secret = write_png(tmp_path / "private" / "secret.png", 1)
    return root, tmp_path / "private" / "secret.png", secret


def blip(tmp_path, records):
    path = tmp_path / "root" / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


OUTSIDE = ["../private/secret.png", "images/../../private/secret.png"]


@pytest.mark.parametrize("bad", [*OUTSIDE, "ABSOLUTE"])
def test_blip_json_paths_outside_the_root_are_refused_naming_the_record(layout, tmp_path, bad):
    root, secret_path, _ = layout
    bad = str(secret_path) if bad == "ABSOLUTE" else bad
    records = [
        {"image": "images/a.png", "caption": "fine", "image_id": 0},
        {"image": bad, "caption": "x", "image_id": 1},
    ]
    annotation = blip(tmp_path, records)
    with pytest.raises(ValueError, match=r"train.json record 1 .*outside the image root.*allow_outside_root=True"):
        load_karpathy_json(annotation, root)
    with pytest.raises(ValueError, match=r"train.json record 1: image path .* outside the image root"):
        load_distilled(annotation)  # the flat distilled form of the same records
    allowed = load_karpathy_json(annotation, root, allow_outside_root=True)  # the explicit opt-in
    assert (
        allowed.num_rows == 2
        and Path(allowed.cast_column("image", datasets.Image(decode=False))[1]["image"]["path"]) == secret_path
    )


def test_karpathy_filepath_and_metadata_file_name_outside_are_refused(layout, tmp_path):
    root, _, _ = layout
    data = {
        "images": [{"filepath": "..", "filename": "private/secret.png", "split": "train", "sentences": [{"raw": "x"}]}]
    }
    (root / "dataset_flickr30k.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"images\[0\] \(filename 'private/secret.png'\): image path .* outside"):
        load_karpathy_json(root / "dataset_flickr30k.json", root)
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "../private/secret.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl line 1 \(file_name '../private/secret.png'\).* outside"):
        load_imagefolder_source(root)
    with pytest.raises(ValueError, match="outside the image root"):
        load_source(root)  # the dispatcher keeps the default
    assert load_source(root, allow_outside_root=True).num_rows == 1


def test_a_symlink_inside_the_root_leading_out_is_refused(layout, tmp_path):
    root, secret_path, _ = layout
    os.symlink(secret_path, root / "images" / "innocent.png")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "images/innocent.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"'images/innocent.png' resolves to '.*private/secret.png', outside"):
        load_imagefolder_source(root)


def test_export_never_copies_a_file_from_outside(layout, tmp_path):
    root, secret_path, secret = layout
    paths = [str(root / "images" / "a.png"), str(secret_path)]
    by_path = datasets.Dataset.from_dict(
        {"image": paths, "captions": [["a"], ["b"]], "image_id": ["0", "1"]},
        features=datasets.Features(
            {"image": datasets.Image(), "captions": datasets.List(datasets.Value("string")),
             "image_id": datasets.Value("string")}
        ),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"row 0 stores its image by path only .* pass image_root="):
        export_blip_json(by_path, tmp_path / "share")
    with pytest.raises(ValueError, match=r"row 1: image path .*secret.png.* outside the image root"):
        export_blip_json(by_path, tmp_path / "share2", image_root=root)
    shared = [p.read_bytes() for p in (tmp_path / "share2").rglob("*.png")]
    assert secret not in shared
    export_blip_json(by_path, tmp_path / "share3", allow_outside_root=True)  # the opt-in copies it
    assert secret in [p.read_bytes() for p in (tmp_path / "share3").rglob("*.png")]


def test_one_image_under_two_ids_is_refused(layout, tmp_path):
    root, _, _ = layout
    records = [
        {"image": "images/a.png", "caption": "one", "image_id": 0},
        {"image": "images/a.png", "caption": "two", "image_id": 9},
    ]
    with pytest.raises(ValueError, match=r"record 1 .*images/a.png' is already image '0'.* image_id '9'"):
        load_karpathy_json(blip(tmp_path, records), root)
    path = str(root / "images" / "a.png")
    hub = datasets.Dataset.from_dict({"image": [path, path], "caption": ["one", "two"]})
    with pytest.raises(ValueError, match=r"row 1 \(image_id='1'\): image file .*a.png' is already image '0'"):
        load_hub_source(hub)


def test_an_image_column_holding_text_or_missing_files_is_named(layout, tmp_path):
    root, _, _ = layout
    text = datasets.Dataset.from_dict({"image": ["a dog runs", "a cat sleeps"], "caption": ["one", "two"]})
    with pytest.raises(
        FileNotFoundError, match=r"row 0 \(image_id='0'\) column 'image' holds 'a dog runs', which is not"
    ):
        load_hub_source(text)
    missing = datasets.Dataset.from_dict(
        {"image": [str(root / "images" / "a.png"), str(root / "gone.png")], "caption": ["a", "b"]}
    )
    with pytest.raises(FileNotFoundError, match=r"row 1 .*gone.png', which is not an existing image file"):
        load_hub_source(missing)
    cast = missing.cast_column("image", datasets.Image())  # Image() cells that hold only a path
    with pytest.raises(FileNotFoundError, match=r"row 1 .*gone.png'"):
        load_hub_source(cast)


def test_a_truncated_jpeg_is_named_at_load_time(layout, tmp_path):
    root, _, _ = layout
    buffer = io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    (root / "images" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with PIL.Image.open(root / "images" / "cut.jpg") as image:
        image.verify()  # the structural check alone lets it through
    records = [{"image": "images/cut.jpg", "caption": "x", "image_id": 0}]
    with pytest.raises(ValueError, match=r"record 0 .*cut.jpg' cannot be read as an image \(image file is truncated"):
        load_karpathy_json(blip(tmp_path, records), root)
    (root / "images" / "padded.jpg").write_bytes(buffer.getvalue() + b"camera data after the end marker")
    records = [{"image": "images/padded.jpg", "caption": "x", "image_id": 0}]
    assert load_karpathy_json(blip(tmp_path, records), root).num_rows == 1  # complete, so accepted


def test_a_latin1_annotation_file_is_named(layout, tmp_path):
    root, _, _ = layout
    path = root / "train.json"
    path.write_bytes(json.dumps([{"image": "images/a.png", "caption": "café"}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"train.json' is not UTF-8 text \(byte \d+ is b'\\xe9'\)"):
        load_karpathy_json(path, root)
    with pytest.raises(ValueError, match=r"train.json' is not UTF-8 text"):
        load_distilled(path)
    (root / "metadata.jsonl").write_bytes('{"file_name": "images/a.png", "caption": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"metadata.jsonl' is not UTF-8 text"):
        load_imagefolder_source(root)
