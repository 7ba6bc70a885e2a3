"""`diffusers-edge evaluate` refuses an unfinished or mixed distilled set as `load_distilled` does, and names a
missing text encoder before it loads any data or model."""

import json

import numpy as np
import PIL.Image
import pytest

import diffusers_edge.evaluation.evaluator as evaluator
from diffusers_edge.commands.evaluate import build_parser, run
from diffusers_edge.data.distilled import MANIFEST_NAME, load_distilled, run_id, shard_path, write_card, write_shard
from diffusers_edge.evaluation.student import FrozenTextEncoder

MANIFEST = {"format_version": 2, "num_images": 6, "shard_size": 1, "seed": 0}


def rows(i):
    image = PIL.Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8))
    return {"image": [image], "captions": [[f"caption {i}"]], "image_id": [str(i)], "prompt": [f"caption {i}"],
            "seed": [i], "source_image_id": [None]}  # fmt: skip


def a_set(folder, shards, card=True):
    """A folder as distill writes it: manifest, `shards` of the 6 recorded, and the card when finished."""
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps(MANIFEST))
    for i in shards:
        write_shard(rows(i), shard_path(folder, i, 6), folder / ".edge_tmp", run=run_id(MANIFEST))
    if card:
        write_card(folder, {"num_images": 6}, run=run_id(MANIFEST))
    return folder


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the student was trained on a set that should have been refused")

    monkeypatch.setattr(evaluator, "evaluate_dataset", refuse)


def parse(tmp_path, *extra):
    return build_parser().parse_args(["--output_dir", str(tmp_path / "out"), "--no_progress", *extra])


def test_an_unfinished_set_is_refused_as_load_distilled_refuses_it(tmp_path, no_training):
    folder = a_set(tmp_path / "unfinished", shards=[0, 1], card=False)  # README gone, 2 of 6 shards
    with pytest.raises(ValueError, match="has no README.md"):
        load_distilled(folder)
    with pytest.raises(
        ValueError, match=r"--distilled '.*unfinished' is not a finished distilled set: .*no README.md"
    ):
        run(parse(tmp_path, "--distilled", str(folder)))
    (folder / "README.md").write_text("---\nconfigs: []\n---\n")  # a card, but the shard series is still short
    with pytest.raises(ValueError, match=r"is not a finished distilled set: .*incomplete or mixed set of shards"):
        run(parse(tmp_path, "--distilled", str(folder)))


def test_a_mixed_set_is_refused(tmp_path, no_training):
    folder = a_set(tmp_path / "mixed", shards=range(6))
    other = tmp_path / "other"  # a valid shard of another run under the same name
    write_shard(rows(4), shard_path(other, 3, 6), other / ".edge_tmp", run="another run")
    shard = "data/train-00003-of-00006.parquet"
    (folder / shard).write_bytes((other / shard).read_bytes())
    with pytest.raises(ValueError, match=r"is not a finished distilled set: .*train-00003-of-00006.parquet' changed"):
        run(parse(tmp_path, "--distilled", str(folder)))
    with pytest.raises(ValueError, match=r"train-00003-of-00006.parquet' changed since distill wrote it"):
        load_distilled(folder, cache_dir=tmp_path / "cache")


def test_a_missing_text_encoder_is_named_before_anything_loads(tmp_path, no_training):
    missing = str(tmp_path / "tiny-bert")
    with pytest.raises(FileNotFoundError, match=r"--text_encoder '.*tiny-bert' is not an existing folder or file"):
        run(parse(tmp_path, "--distilled", "never-loaded", "--text_encoder", missing))
    with pytest.raises(FileNotFoundError, match=r"text_encoder '\./tiny-bert' is not an existing folder or file"):
        FrozenTextEncoder("./tiny-bert")
