"""distill never loses or mixes data: it writes only into an empty folder or one holding a set it began, counts a
shard as finished only when its own record says so, and checks its arguments before writing anything."""

import json
import math

import pytest
import torch

from diffusers_edge.data.distilled import (
    MANIFEST_NAME,
    RECORDS_DIR,
    TMP_DIR,
    load_distilled,
    shard_path,
    write_card,
    write_shard,
)
from diffusers_edge.pipeline_edge import EDGEPipeline
from diffusers_edge.shapes.dataset import load_captioned_shapes

FAST = {"num_inference_steps": 2, "progress": False, "captions_per_image": 1, "batch_size": 2, "shard_size": 2}


@pytest.fixture(scope="module")
def source():
    return load_captioned_shapes(num_train=8, num_val=1, num_test=1)["train"]


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def a_downloaded_set(folder):
    """The layout of a set pushed to the Hub and downloaded: card + a complete shard series, no manifest."""
    rows = {
        "image": [b"\x89PNG not really"],
        "captions": [["someone else's caption"]],
        "image_id": ["0"],
        "prompt": ["someone else's caption"],
        "seed": [1],
        "source_image_id": [None],
    }
    for shard in range(3):
        write_shard(rows, shard_path(folder, shard, 3), folder / TMP_DIR)
    write_card(folder, {"method": "EDGE", "seed": 99})
    import shutil

    shutil.rmtree(folder / TMP_DIR)


@pytest.mark.parametrize("resume", [True, False])
def test_a_users_folder_is_refused_and_left_byte_identical(pipe, source, tmp_path, resume):
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("# my notes\n")
    (folder / "data" / "train-00000-of-00003.parquet").write_bytes(b"my own parquet")
    (folder / "data" / "train-00001-of-00003.parquet").write_bytes(b"my other parquet")
    before = snapshot(folder)
    with pytest.raises(ValueError, match=rf"not empty and holds no distilled set .*no {MANIFEST_NAME}.*README.md"):
        pipe.distill(source, 5, output_dir=folder, resume=resume, **FAST)
    assert snapshot(folder) == before


def test_a_downloaded_set_with_matching_shard_names_is_not_taken_as_finished(pipe, source, tmp_path):
    folder = tmp_path / "downloaded"
    a_downloaded_set(folder)  # 3 shards of 2 images: exactly what 5 images with shard_size 2 would be named
    before = snapshot(folder)
    with pytest.raises(ValueError, match="holds no distilled set begun by distill"):
        pipe.distill(source, 5, output_dir=folder, seed=7, **FAST)
    assert snapshot(folder) == before


def test_a_shard_of_another_run_or_a_changed_one_is_named_and_refused(pipe, source, tmp_path):
    reference, other, folder = tmp_path / "reference", tmp_path / "other", tmp_path / "set"
    pipe.distill(source, 5, output_dir=reference, seed=1, **FAST)
    pipe.distill(source, 5, output_dir=other, seed=2, **FAST)

    class Killed(RuntimeError):
        pass

    def kill_after_two(report):
        if report.event == "shard":
            raise Killed

    with pytest.raises(Killed):
        pipe.distill(source, 5, output_dir=folder, seed=1, callback=kill_after_two, **FAST)
    name = "train-00001-of-00003.parquet"
    (folder / "data" / name).write_bytes((other / "data" / name).read_bytes())  # a valid shard of another run
    before = snapshot(folder)
    with pytest.raises(ValueError, match=rf"{name}' was not written by distill.*move them away"):
        pipe.distill(source, 5, output_dir=folder, seed=1, **FAST)
    with pytest.raises(ValueError, match=rf"discard the set \(resume=False\).*{name}' was not written by distill"):
        pipe.distill(source, 5, output_dir=folder, seed=1, resume=False, **FAST)
    assert snapshot(folder) == before  # neither refused call changed or deleted a file

    (folder / "data" / name).unlink()
    first = folder / "data" / "train-00000-of-00003.parquet"
    first.write_bytes(first.read_bytes()[:-20])  # damaged after distill wrote it
    with pytest.raises(ValueError, match="train-00000-of-00003.parquet' changed since distill wrote it"):
        pipe.distill(source, 5, output_dir=folder, seed=1, **FAST)
    first.unlink()  # what the message asks for: the resumed run then regenerates it
    result = pipe.distill(source, 5, output_dir=folder, seed=1, **FAST)
    assert snapshot(folder / "data") == snapshot(reference / "data") and result.num_rows == 5
    records = sorted(p.name for p in (folder / RECORDS_DIR).iterdir())
    assert records == ["README.md.json"] + [f"train-0000{i}-of-00003.parquet.json" for i in range(3)]


def test_resume_false_deletes_only_what_distill_wrote(pipe, source, tmp_path):
    folder = tmp_path / "set"
    pipe.distill(source, 4, output_dir=folder, seed=1, **FAST)
    (folder / "notes.txt").write_text("mine")
    (folder / "data" / "extra.csv").write_text("mine too")
    restarted = pipe.distill(source, 2, output_dir=folder, seed=3, resume=False, **FAST)
    assert restarted.num_rows == 2 and restarted["seed"][0] != load_distilled(tmp_path / "set")["seed"][1]
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "data" / "extra.csv").read_text() == "mine too"
    assert sorted(p.name for p in (folder / "data").glob("*.parquet")) == ["train-00000-of-00001.parquet"]
    assert json.loads((folder / MANIFEST_NAME).read_text())["seed"] == 3


def test_a_changed_card_is_not_overwritten(pipe, source, tmp_path):
    folder = tmp_path / "set"
    pipe.distill(source, 2, output_dir=folder, **FAST)
    (folder / "README.md").write_text("# my edited card\n")
    with pytest.raises(ValueError, match="README.md' changed since distill wrote it"):
        pipe.distill(source, 2, output_dir=folder, **FAST)
    assert (folder / "README.md").read_text() == "# my edited card\n"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer, got 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number, got nan"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number, got inf"),
        ({"height": 20}, "height must be a positive multiple of 8"),
    ],
)
def test_sampling_arguments_are_checked_before_anything_is_written(pipe, source, tmp_path, kwargs, message):
    folder = tmp_path / "set"
    with pytest.raises(ValueError, match=message):
        pipe.distill(source, 2, output_dir=folder, **{**FAST, **kwargs})
    assert not folder.exists()  # no manifest recorded the bad value, so the corrected run starts cleanly
    assert pipe.distill(source, 2, output_dir=folder, **FAST).num_rows == 2


def test_a_corrupt_shard_is_named_when_the_set_is_loaded(pipe, source, tmp_path):
    folder = tmp_path / "set"
    pipe.distill(source, 2, output_dir=folder, **FAST)
    a_copy = tmp_path / "copy"
    (a_copy / "data").mkdir(parents=True)
    (a_copy / "README.md").write_bytes((folder / "README.md").read_bytes())
    (a_copy / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 and then nothing")
    with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet' is not a readable Parquet file"):
        load_distilled(a_copy)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 and then nothing")
    with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet' changed since distill wrote it"):
        load_distilled(folder)


def test_a_missing_lora_folder_is_named(tiny_sd_path, tmp_path):
    pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
    with pytest.raises(FileNotFoundError, match=r"LoRA '.*no-such-lora' is not an existing folder or file"):
        pipe.load_lora_weights(str(tmp_path / "no-such-lora"))
    with pytest.raises(FileNotFoundError, match=r"LoRA 'someone/missing-lora' is not a local folder or file"):
        pipe.load_lora_weights("someone/missing-lora")  # offline: the Hub cannot be asked


def test_a_lora_with_nan_weights_is_refused(tiny_sd_path, tmp_path):
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import save_file

    from diffusers_edge.training import LORA_WEIGHT_NAME, save_lora

    pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights="gaussian"))
    path = save_lora(pipe.unet, tmp_path / "nan-lora")  # save_lora itself refuses NaN: poison the file afterwards
    with safe_open(str(path), "pt") as file:
        tensors, metadata = {k: file.get_tensor(k) for k in file.keys()}, file.metadata()  # noqa: SIM118
    first = sorted(k for k in tensors if "lora.down" in k or "lora_A" in k)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(path), metadata=metadata)
    assert path.name == LORA_WEIGHT_NAME
    fresh = EDGEPipeline.from_pretrained(tiny_sd_path)
    with pytest.raises(ValueError, match=r"LoRA '.*nan-lora' holds non-finite .* weights, e\.g\. '.*lora_A"):
        fresh.load_lora_weights(str(tmp_path / "nan-lora"))


def test_distill_command_checks_flags_before_loading(tmp_path):
    from diffusers_edge.commands.distill import parse_args

    required = ["--pretrained_model_name_or_path", "sd", "--source", "shapes", "--num_pairs", "4"]
    required += ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--num_inference_steps must be a positive integer, got 0"):
        parse_args([*required, "--num_inference_steps", "0"])
    with pytest.raises(ValueError, match="--guidance_scale must be a finite number, got nan"):
        parse_args([*required, "--guidance_scale", "nan"])
    with pytest.raises(FileNotFoundError, match=r"--lora '.*edge-lora' is not an existing folder or file"):
        parse_args([*required, "--lora", str(tmp_path / "edge-lora")])
    assert not (tmp_path / "out").exists()


def test_a_kill_between_recording_and_renaming_a_shard_regenerates_it(pipe, source, tmp_path, monkeypatch):
    import diffusers_edge.data.distilled_layout as layout  # write_shard lives there

    reference, folder = tmp_path / "reference", tmp_path / "set"
    pipe.distill(source, 5, output_dir=reference, **FAST)

    class Killed(RuntimeError):
        pass

    real_replace = layout.os.replace

    def killed_before_second_shard_lands(src, dst):
        if str(dst).endswith("train-00001-of-00003.parquet"):
            raise Killed("simulated kill after the record, before the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(layout.os, "replace", killed_before_second_shard_lands)
    with pytest.raises(Killed):
        pipe.distill(source, 5, output_dir=folder, **FAST)
    monkeypatch.setattr(layout.os, "replace", real_replace)
    assert (folder / RECORDS_DIR / "train-00001-of-00003.parquet.json").is_file()
    assert not (folder / "data" / "train-00001-of-00003.parquet").exists()
    pipe.distill(source, 5, output_dir=folder, **FAST)
    assert snapshot(folder / "data") == snapshot(reference / "data")
