"""The distilled-set layout: atomic shards, the card, the builder (our layout + flat BLIP JSON), exporters, push."""

import json
import os

import datasets
import huggingface_hub
import numpy as np
import PIL.Image
import pytest

from diffusers_edge.data.distilled import (
    DISTILLED_FEATURES,
    TMP_DIR,
    DistilledBuilder,
    check_complete,
    encode_png,
    export_blip_json,
    finished_shards,
    load_distilled,
    push_distilled,
    read_card_metadata,
    shard_path,
    size_category,
    to_flat_pairs,
    write_card,
    write_shard,
)
from diffusers_edge.testing import LocalFolderHub


def image(value):
    return PIL.Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8))


def rows(start, count):
    return {
        "image": [image(10 * i) for i in range(start, start + count)],
        "captions": [[f"prompt {i}", f"synthetic {i}"] for i in range(start, start + count)],
        "image_id": [str(i) for i in range(start, start + count)],
        "prompt": [f"prompt {i}" for i in range(start, start + count)],
        "seed": [1000 + i for i in range(start, start + count)],
        "source_image_id": [f"src{i}" if i % 2 else None for i in range(start, start + count)],
    }


@pytest.fixture
def finished(tmp_path):
    folder = tmp_path / "set"
    for shard, (start, count) in enumerate([(0, 2), (2, 2), (4, 1)]):
        write_shard(rows(start, count), shard_path(folder, shard, 3), folder / TMP_DIR)
    write_card(folder, {"method": "EDGE", "num_pairs": 10, "captions_per_image": 2, "num_images": 5, "seed": 0})
    return folder


def test_shards_appear_whole_and_incomplete_sets_are_named(tmp_path):
    folder = tmp_path / "set"
    write_shard(rows(0, 2), shard_path(folder, 0, 3), folder / TMP_DIR, run="run-a")
    write_shard(rows(4, 1), shard_path(folder, 2, 3), folder / TMP_DIR, run="run-a")
    (folder / TMP_DIR / "train-00001-of-00003.parquet.1.partial").write_bytes(b"PAR1")  # a crash mid-write
    assert finished_shards(folder, 3, "run-a") == {0, 2}
    assert not list((folder / TMP_DIR).glob("*.parquet"))  # nothing half-written is ever at a shard's name
    with pytest.raises(ValueError, match="train-00000-of-00003.parquet' was written by a distill run with other"):
        finished_shards(folder, 3, "run-b")
    write_shard(rows(0, 1), shard_path(folder, 0, 7), folder / TMP_DIR)  # another layout's shard, unrecorded
    with pytest.raises(ValueError, match=r"train-00000-of-00007.parquet' was not written by distill"):
        finished_shards(folder, 3, "run-a")  # named, never counted or overwritten
    with pytest.raises(ValueError, match="has no README.md"):
        check_complete(folder)
    (folder / "data" / "train-00000-of-00007.parquet").unlink()
    with pytest.raises(ValueError, match="incomplete or mixed set of shards"):
        write_card(folder, {"num_pairs": 10})
    with pytest.raises(ValueError, match=r"lack column\(s\) \['seed'\]"):
        write_shard({k: v for k, v in rows(0, 1).items() if k != "seed"}, shard_path(folder, 1, 3), folder / TMP_DIR)


def test_card_numbers_come_from_the_set(finished):
    from huggingface_hub import DatasetCard

    write_card(finished, {"method": "EDGE", "num_pairs": 9, "num_images": 4})  # what the caller says is overruled
    data = DatasetCard.load(finished / "README.md").data.to_dict()
    assert (data["distillation"]["num_pairs"], data["distillation"]["num_images"]) == (10, 5)
    assert data["license"] == "other" and data["size_categories"] == ["n<1K"]
    assert data["dataset_info"]["splits"][0]["num_examples"] == 5
    text = (finished / "README.md").read_text()
    assert "5 generated images with\n2 caption(s) each, 10 image-caption pairs in all" in text
    assert [size_category(n) for n in (0, 999, 1000, 123_456, 10**12)] == [
        "n<1K", "n<1K", "1K<n<10K", "100K<n<1M", "n>1T"]  # fmt: skip


def test_card_yaml_configs_and_load_dataset(finished):
    card = (finished / "README.md").read_text()
    assert "configs:" in card and "path: data/train-*.parquet" in card and "num_examples: 5" in card
    assert read_card_metadata(finished) == {
        "method": "EDGE", "num_pairs": 10, "captions_per_image": 2, "num_images": 5, "seed": 0,
    }  # fmt: skip
    loaded = datasets.load_dataset(str(finished), split="train")
    assert loaded.features == DISTILLED_FEATURES
    assert loaded["image_id"] == ["0", "1", "2", "3", "4"] and loaded["seed"] == [1000, 1001, 1002, 1003, 1004]
    assert loaded["source_image_id"] == [None, "src1", None, "src3", None]
    assert [int(np.asarray(im)[0, 0, 0]) for im in loaded["image"]] == [0, 10, 20, 30, 40]
    assert [p.name for p in check_complete(finished)] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]


def test_builder_reads_our_layout(finished, tmp_path):
    builder = DistilledBuilder(data_path=str(finished), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    built = builder.as_dataset(split="train")
    direct = load_distilled(finished, cache_dir=tmp_path / "cache2")
    for ds in (built, direct):
        assert ds.num_rows == 5 and ds["captions"][3] == ["prompt 3", "synthetic 3"]
        assert ds["prompt"] == [f"prompt {i}" for i in range(5)]
        assert np.array_equal(np.asarray(ds[4]["image"]), np.asarray(image(40)))


def test_flat_pairs_and_blip_json_round_trip(finished, tmp_path):
    distilled = load_distilled(finished, cache_dir=tmp_path / "cache")
    flat = to_flat_pairs(distilled)
    assert flat.num_rows == 10 and flat.column_names == ["image", "caption", "image_id"]
    assert flat["caption"][:3] == ["prompt 0", "synthetic 0", "prompt 1"] and flat["image_id"][:3] == ["0", "0", "1"]
    assert np.array_equal(np.asarray(flat[3]["image"]), np.asarray(image(10)))

    path = export_blip_json(distilled, tmp_path / "blip")
    records = json.loads(path.read_text())
    assert len(records) == 10 and records[2] == {"image": "images/000001.png", "caption": "prompt 1", "image_id": 1}
    assert (tmp_path / "blip" / "images" / "000004.png").read_bytes() == encode_png(image(40))
    back = load_distilled(path, cache_dir=tmp_path / "cache3")
    assert back.num_rows == 5 and back["captions"] == distilled["captions"]
    assert back["prompt"] == [None] * 5
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(back["image"], distilled["image"]))


def test_flat_json_from_other_tools_and_its_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    image(50).save(tmp_path / "imgs" / "a.jpg")
    image(90).save(tmp_path / "imgs" / "b.png")
    records = [
        {"image": "imgs/a.jpg", "caption": "first of a", "image_id": "coco_1"},
        {"image": "imgs/b.png", "caption": "only of b", "image_id": 7},
        {"image": "imgs/a.jpg", "caption": "second of a", "image_id": "coco_1"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    ds = load_distilled(tmp_path / "train.json", cache_dir=tmp_path / "cache")
    assert ds["image_id"] == ["coco_1", "7"] and ds["captions"] == [["first of a", "second of a"], ["only of b"]]

    def fails(bad, error, match, name):
        (tmp_path / name).write_text(json.dumps(bad))
        with pytest.raises(error, match=match):
            load_distilled(tmp_path / name, cache_dir=tmp_path / f"cache-{name}")

    fails([{"image": "imgs/a.jpg"}], ValueError, "record 0 needs 'image' and 'caption'", "no_caption.json")
    fails([{"image": "imgs/a.jpg", "caption": " "}], ValueError, "record 0 has an empty caption", "empty.json")
    fails([{"image": "imgs/zz.jpg", "caption": "x"}], FileNotFoundError, "zz.jpg", "missing.json")
    two_files = [
        {"image": "imgs/a.jpg", "caption": "x", "image_id": 1},
        {"image": "imgs/b.png", "caption": "y", "image_id": 1},
    ]
    fails(two_files, ValueError, "record 1: image_id '1' names", "clash.json")


# The peers' readers, rebuilt from what their evaluation code does (our code, not theirs):
# LoRS (BLIP's re_train_dataset): json.load(ann_root/<fixed name>), image = os.path.join(image_root, record["image"]).
def lors_pairs(ann_root, image_root, benchmark):
    name = {"flickr30k": "flickr30k_train.json", "coco": "coco_karpathy_train.json"}[benchmark]
    with open(os.path.join(ann_root, name)) as f:
        records = json.load(f)
    return [(os.path.join(image_root, r["image"]), r["caption"], r["image_id"]) for r in records]


# EDGE (evaluation/evaluation.py): distill_image = os.path.join(distill_ann, "images"); the JSON has a fixed name in
# distill_ann; image = os.path.join(distill_image, record["image"]).
def edge_pairs(distill_ann, benchmark):
    distill_image = os.path.join(distill_ann, "images")
    name = {"flickr30k": "flickr30k_train.json", "coco": "coco_train.json"}[benchmark]
    with open(os.path.join(distill_ann, name)) as f:
        records = json.load(f)
    return [(os.path.join(distill_image, r["image"]), r["caption"], r["image_id"]) for r in records]


def open_every_pair(pairs, distilled):
    """Opens every image a peer would open and checks its pixels and caption against the distilled set."""
    expected = [(row, caption) for row, captions in enumerate(distilled["captions"]) for caption in captions]
    assert [(image_id, caption) for _, caption, image_id in pairs] == expected
    for path, _, image_id in pairs:
        with PIL.Image.open(path) as opened:
            assert np.array_equal(np.asarray(opened.convert("RGB")), np.asarray(distilled[image_id]["image"]))


@pytest.mark.parametrize("peer_set", ["flickr30k", "coco"])
def test_exports_open_in_the_peers_readers(finished, tmp_path, peer_set):
    distilled = load_distilled(finished, cache_dir=tmp_path / "cache")
    lors = tmp_path / "lors"
    path = export_blip_json(distilled, lors, layout="lors", benchmark=peer_set)
    assert path.parent == lors
    open_every_pair(lors_pairs(lors, lors, peer_set), distilled)

    edge = tmp_path / "edge"
    edge_json = export_blip_json(distilled, edge, layout="edge", benchmark=peer_set)
    open_every_pair(edge_pairs(edge, peer_set), distilled)
    back = load_distilled(edge_json, image_root=edge / "images", cache_dir=tmp_path / "cache-edge")
    assert back["captions"] == distilled["captions"]

    # the generic layout is what each peer failed on: LoRS finds no file, EDGE doubles images/images/
    generic = tmp_path / "generic"
    export_blip_json(distilled, generic)
    with pytest.raises(FileNotFoundError):
        lors_pairs(generic, generic, peer_set)
    (generic / ("flickr30k_train.json" if peer_set == "flickr30k" else "coco_train.json")).write_text(
        (generic / "train.json").read_text()
    )
    with pytest.raises(FileNotFoundError, match="images/images/000000.png"):
        open_every_pair(edge_pairs(generic, peer_set), distilled)


def test_export_presets_refuse_names_the_peers_would_not_find(finished, tmp_path):
    distilled = load_distilled(finished, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="layout='lors' writes 'flickr30k_train.json'"):
        export_blip_json(distilled, tmp_path / "a", layout="lors", json_name="train.json")
    with pytest.raises(ValueError, match="reads images from 'images/'"):
        export_blip_json(distilled, tmp_path / "b", layout="edge", image_folder="pics")
    with pytest.raises(ValueError, match="benchmark must be one of"):
        export_blip_json(distilled, tmp_path / "c", layout="edge", benchmark="cc3m")
    with pytest.raises(ValueError, match="layout must be one of"):
        export_blip_json(distilled, tmp_path / "d", layout="mtt")


def test_export_command_writes_the_edge_layout(finished, tmp_path, capsys):
    from diffusers_edge.cli import main

    out = tmp_path / "edge"
    assert main(["export", "--distilled", str(finished), "--output_dir", str(out), "--layout", "edge"]) == 0
    assert "10 pairs, 5 images (edge layout)" in capsys.readouterr().out
    open_every_pair(edge_pairs(out, "flickr30k"), load_distilled(finished, cache_dir=tmp_path / "cache"))


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_push_uploads_card_and_shards_only(finished, tmp_path):
    api = RecordingApi()
    url = push_distilled(finished, "me/edge-set", private=True, api=api)
    assert url == "https://huggingface.co/datasets/me/edge-set"
    assert api.calls[0] == ("create_repo", "me/edge-set", {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = api.calls[1][1]
    assert upload["folder_path"] == str(finished) and upload["repo_type"] == "dataset"
    assert upload["allow_patterns"] == ["README.md", "data/train-*.parquet"]
    assert upload["delete_patterns"] == ["data/train-*.parquet"]
    with pytest.raises(ValueError, match="not a finished distilled set"):
        push_distilled(tmp_path, "me/empty", api=RecordingApi())


def test_a_second_push_replaces_the_set(finished, tmp_path, monkeypatch):
    # no Hub is reachable: huggingface_hub's upload_folder writes into a local folder playing the repository
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)  # the single-commit path
    repo = tmp_path / "hub-repo"
    api = LocalFolderHub(repo)
    push_distilled(finished, "me/edge-set", api=api)
    first = datasets.load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "c1"))
    assert first.num_rows == 5

    smaller = tmp_path / "smaller"
    for shard, (start, count) in enumerate([(10, 2), (12, 1)]):
        write_shard(rows(start, count), shard_path(smaller, shard, 2), smaller / TMP_DIR)
    write_card(smaller, {"method": "EDGE", "num_pairs": 6, "captions_per_image": 2})
    push_distilled(smaller, "me/edge-set", api=api)
    assert sorted(p.name for p in (repo / "data").iterdir()) == [f"train-0000{i}-of-00002.parquet" for i in range(2)]
    second = datasets.load_dataset(str(repo), split="train", cache_dir=str(tmp_path / "c2"))
    assert second["image_id"] == ["10", "11", "12"]
    assert not (repo / "edge_manifest.json").exists()
