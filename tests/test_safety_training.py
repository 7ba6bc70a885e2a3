"""Training never saves non-finite weights, checkpoints appear only when complete, `latest` skips (and names) what
is incomplete or damaged, and bad flags are named before any model loads."""

import pytest
import torch
from safetensors.torch import load_file

import diffusers_edge.training as training
from diffusers_edge.shapes.dataset import load_captioned_shapes
from diffusers_edge.training import checkpoints, loop, resolve_checkpoint, train
from test_training import _args  # the tiny training flags (16 px, batch 2, no tracker)


@pytest.fixture(scope="module")
def shapes():
    return load_captioned_shapes(num_train=6, num_val=1, num_test=1)["train"]


def test_diverging_training_stops_naming_step_and_term_and_writes_no_weights(tiny_sd, tiny_clip, shapes, tmp_path):
    out = tmp_path / "diverged"
    args = _args(tiny_sd, tiny_clip, out, "--max_train_steps", "6", "--checkpointing_steps", "1")
    args.learning_rate = 1e30  # what `--learning_rate 1e30` gives
    with pytest.raises(FloatingPointError, match=r"Training diverged at step \d: .*(loss|weight).* not finite"):
        train(args, shapes)
    assert not (out / training.LORA_WEIGHT_NAME).exists() and not (out / "README.md").exists()
    for checkpoint in out.glob("checkpoint-*"):  # whatever was saved before the divergence holds finite weights
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / training.LORA_WEIGHT_NAME).values())


def test_non_finite_weights_are_never_written(tmp_path):
    with pytest.raises(FloatingPointError, match=r"Refusing to write .*'w' holds NaN or infinite values"):
        training.check_finite({"ok": torch.ones(2), "w": torch.tensor([1.0, float("inf")])}, str(tmp_path))


def test_a_kill_while_saving_a_checkpoint_resumes_from_the_previous_one(
    tiny_sd, tiny_clip, shapes, tmp_path, monkeypatch
):
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--learning_rate", "1e-2"]
    full = train(_args(tiny_sd, tiny_clip, tmp_path / "full", *flags), shapes)

    class Killed(RuntimeError):
        pass

    save_lora = training.save_lora

    def killed_while_saving_step_4(unet, directory):
        if "checkpoint-4" in str(directory):
            raise Killed("simulated kill in the middle of saving checkpoint-4")
        return save_lora(unet, directory)

    out = tmp_path / "killed"
    monkeypatch.setattr(checkpoints, "save_lora", killed_while_saving_step_4)  # what the checkpoint hook calls
    with pytest.raises(Killed):
        train(_args(tiny_sd, tiny_clip, out, *flags), shapes)
    monkeypatch.setattr(checkpoints, "save_lora", save_lora)
    assert not (out / "checkpoint-4").exists() and (out / "checkpoint-4.partial").is_dir()
    (out / "checkpoint-6").mkdir()  # an empty folder, as a kill during an older-style save leaves
    (out / "checkpoint-best").mkdir()  # a user's folder outside the checkpoint-N naming

    with pytest.warns(UserWarning) as caught:
        resumed = train(_args(tiny_sd, tiny_clip, out, *flags, "--resume_from_checkpoint", "latest"), shapes)
    message = str(caught[0].message)
    assert "checkpoint-4.partial (a save that did not finish)" in message
    assert "checkpoint-6 (incomplete: no pytorch_lora_weights.safetensors" in message
    assert "checkpoint-best" in message and "resuming from checkpoint-2" in message
    a, b = load_file(full.weights_path), load_file(resumed.weights_path)
    assert resumed.global_step == 4 and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "checkpoint-4" / training.LORA_WEIGHT_NAME).is_file()  # the resumed run saved it completely
    assert not (out / "checkpoint-4.partial").exists()


def test_checkpoint_names_and_damaged_files_are_named(tiny_sd, tiny_clip, shapes, tmp_path):
    out = tmp_path / "run"
    train(_args(tiny_sd, tiny_clip, out, "--max_train_steps", "2", "--checkpointing_steps", "1"), shapes)
    best = out / "checkpoint-best"
    best.mkdir()
    with pytest.raises(ValueError, match=r"'.*checkpoint-best': a checkpoint folder must be named checkpoint-<step>"):
        resolve_checkpoint("checkpoint-best", out)
    (tmp_path / "saved").mkdir()  # outside the checkpoint-N naming altogether
    with pytest.raises(ValueError, match=r"'.*saved': a checkpoint folder must be named checkpoint-<step>"):
        resolve_checkpoint(str(tmp_path / "saved"), out)
    with pytest.raises(ValueError, match="checkpoint-6' cannot be resumed from: incomplete: no pytorch_lora_weights"):
        (out / "checkpoint-6").mkdir()
        resolve_checkpoint("checkpoint-6", out)
    optimizer = out / "checkpoint-2" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"checkpoint-2' cannot be resumed from: optimizer.bin is damaged"):
        resolve_checkpoint("checkpoint-2", out)
    with pytest.warns(
        UserWarning, match=r"skipped .*checkpoint-2 \(optimizer.bin is damaged.*resuming from checkpoint-1"
    ):
        assert resolve_checkpoint("latest", out).name == "checkpoint-1"


def test_bad_flags_are_named_before_models_load(tiny_sd, tiny_clip, tiny_bert_path, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--learning_rate must be a positive finite number, got -0.001"):
        _args(tiny_sd, tiny_clip, tmp_path, "--learning_rate=-1e-3")
    with pytest.raises(ValueError, match="--learning_rate must be a positive finite number, got nan"):
        _args(tiny_sd, tiny_clip, tmp_path, "--learning_rate", "nan")

    def no_loading(args):
        raise AssertionError("models were loaded before the flags were checked")

    monkeypatch.setattr(loop, "_load_models", no_loading)
    with pytest.raises(
        ValueError, match=r"--clip_model_name_or_path '.*' is a 'bert' model \(BertModel\), not a dual"
    ):
        train(_args(tiny_sd, tiny_bert_path, tmp_path / "a"))
    with pytest.raises(
        FileNotFoundError, match=r"--pretrained_model_name_or_path '\./no-such-sd' is not an existing folder or file"
    ):
        train(_args("./no-such-sd", tiny_clip, tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match=r"--clip_model_name_or_path '.*no-clip' is not an existing folder"):
        train(_args(tiny_sd, tmp_path / "no-clip", tmp_path / "c"))
