"""The real `examples/train_edge.py` under `accelerate launch` / `torchrun`, and the `diffusers-edge train` command.

Everything is offline: tiny random Stable Diffusion and CLIP folders and a tiny imagefolder are written to a
temporary folder and read back through the same `from_pretrained` / `load_dataset` calls that read the Hub.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.utils import write_basic_config
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_edge.commands.train import main as train_command
from diffusers_edge.testing import save_tiny_clip, save_tiny_stable_diffusion
from diffusers_edge.training import DIFFFIT_WEIGHT_NAME, difffit_parameters, load_difffit_weights

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_edge.py"
CAPTIONS = [
    ["a big red circle", "a red circle on the left"],
    ["a small blue square"],
    ["a green triangle in the middle", "a green triangle", "a tiny green triangle"],
    ["a white cross"],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("script")
    sd, clip = save_tiny_stable_diffusion(root / "sd"), save_tiny_clip(root / "clip")
    data = root / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    with open(data / "metadata.jsonl", "w") as f:
        for i, captions in enumerate(CAPTIONS):
            PIL.Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(data / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "captions": captions}) + "\n")
    config = root / "accelerate.yaml"
    write_basic_config(save_location=str(config))
    return {"sd": sd, "clip": clip, "data": data, "config": config, "root": root}


def _flags(tiny, out, *extra):
    return [
        "--pretrained_model_name_or_path", str(tiny["sd"]), "--clip_model_name_or_path", str(tiny["clip"]),
        "--train_data_dir", str(tiny["data"]), "--output_dir", str(out), "--resolution", "32",
        "--train_batch_size", "2", "--report_to", "none", "--loss_max_timestep", "999", "--seed", "3", *extra,
    ]  # fmt: skip


def _run(command, **env):
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **env}
    )
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def _image(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe("a big red circle", num_inference_steps=2, generator=generator, output_type="np").images


@pytest.mark.slow
def test_accelerate_launch_trains_a_lora_that_stock_diffusers_loads(tiny):
    out = tiny["root"] / "lora"
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]
    flags += ["--rank", "4", "--lora_alpha", "8", "--learning_rate", "5e-2", "--random_flip"]
    flags += ["--validation_prompt", "a red circle", "--num_validation_images", "1"]
    flags += ["--num_validation_inference_steps", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tiny["config"])]
    log = _run([*launch, "--num_processes", "1", "--cpu", str(SCRIPT), *_flags(tiny, out, *flags)])
    assert "4 images" in log and "1 processes" in log

    weights = out / "pytorch_lora_weights.safetensors"
    assert weights.is_file() and (out / "validation" / "step-4_0.png").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # the limit removed checkpoint-2
    with safe_open(str(weights), "pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 8

    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = _image(pipe)
    pipe.load_lora_weights(out)
    config = next(iter(pipe.unet.peft_config.values()))
    assert (config.r, config.lora_alpha) == (4, 8)  # alpha != rank survived the reload
    assert np.abs(_image(pipe) - before).max() > 1e-3

    card = (out / "README.md").read_text()
    for fact in (str(tiny["sd"]), str(tiny["clip"]), str(tiny["data"]), "| optimiser steps | 4 |", "1.0 / 1.0 / 1.0",
                 "one-step x0 predictions of noisy training latents"):
        assert fact in card


def _two_process_step_by_hand(flags, output_dir):
    """One SGD step of two DDP processes, computed in this process: each process's batch and noise, the mean of
    the two gradients (what DDP's all-reduce gives), gradient clipping, the step; saved like train_edge.py."""
    from accelerate.utils import set_seed

    from diffusers_edge.training import (
        EDGECollator,
        EDGEObjective,
        EDGETrainItems,
        EpochBatchSampler,
        add_trainable_parameters,
        load_train_dataset,
        parse_args,
        save_lora,
    )
    from diffusers_edge.training.loop import _load_models

    args = parse_args(flags)
    set_seed(args.seed)
    dataset, args.caption_column = load_train_dataset(args)
    models = _load_models(args)
    unet, processor = models["unet"], models["clip_processor"]
    params = add_trainable_parameters(unet, args)
    objective = EDGEObjective(unet, models["vae"], models["text_encoder"], models["clip_model"],
                              processor.image_processor, models["noise_scheduler"], args.loss_config())  # fmt: skip
    items, collate = EDGETrainItems(dataset, args), EDGECollator(models["tokenizer"], processor.tokenizer)
    gradients = []
    for process in (0, 1):
        sampler = EpochBatchSampler(len(dataset), args.train_batch_size, args.seed, process, 2)
        sampler.set_epoch(0)
        batch = collate([items[key] for key in next(iter(sampler))])
        seed = np.random.SeedSequence([args.seed, 0, 0, process]).generate_state(1)[0]  # (seed, epoch, batch, rank)
        loss = objective(batch, generator=torch.Generator().manual_seed(int(seed))).loss
        gradients.append(torch.autograd.grad(loss, params))
    for param, first, second in zip(params, *gradients):
        param.grad = (first + second) / 2
    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
    torch.optim.SGD(params, lr=args.learning_rate).step()
    return save_lora(unet, output_dir)


@pytest.mark.slow
def test_two_cpu_processes_train_the_lora_one_process_computes_by_hand(tiny):
    out = tiny["root"] / "ddp"
    flags = _flags(tiny, out, "--max_train_steps", "1", "--optimizer", "sgd", "--learning_rate", "0.5")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    log = _run([*command, *flags], ACCELERATE_USE_CPU="true")
    assert "MULTI_CPU" in log and "2 processes" in log
    assert [p.name for p in out.iterdir() if p.suffix == ".safetensors"] == ["pytorch_lora_weights.safetensors"]
    by_hand = load_file(_two_process_step_by_hand(flags, tiny["root"] / "by-hand"))
    trained = load_file(out / "pytorch_lora_weights.safetensors")
    assert trained.keys() == by_hand.keys() and any("lora_B" in key or "lora.up" in key for key in trained)
    for key in trained:
        torch.testing.assert_close(trained[key], by_hand[key])
    assert any(float(trained[key].abs().max()) > 0 for key in trained if "lora_B" in key or "lora.up" in key)
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None)
    pipe.load_lora_weights(out)  # stock diffusers reads it
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())


def test_train_command_difffit_file_loads_into_a_stock_pipeline(tiny):
    out = tiny["root"] / "difffit"
    flags = ["--finetune", "difffit", "--max_train_steps", "1", "--optimizer", "sgd", "--learning_rate", "1.0"]
    assert train_command(_flags(tiny, out, *flags)) == 0
    path = out / DIFFFIT_WEIGHT_NAME
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = _image(pipe)
    base = {name: p.detach().clone() for name, p in difffit_parameters(pipe.unet).items()}
    load_difffit_weights(pipe.unet, path)
    changed = [name for name, p in difffit_parameters(pipe.unet).items() if not torch.equal(p, base[name])]
    assert changed and np.abs(_image(pipe) - before).max() > 1e-4
    assert "difffit" in (out / "README.md").read_text()


def test_bad_data_fails_before_training(tiny, tmp_path):
    (tmp_path / "0.png").write_bytes((tiny["data"] / "0.png").read_bytes())
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "label": "x"}) + "\n")
    flags = _flags(tiny, tmp_path / "out")
    flags[flags.index("--train_data_dir") + 1] = str(tmp_path)
    with pytest.raises(ValueError, match="none of the caption columns"):
        train_command(flags)
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


def test_train_command_names_itself_in_usage_errors(capsys):
    with pytest.raises(SystemExit):
        train_command(["--output_dir", "x"])  # --pretrained_model_name_or_path is required
    assert "usage: diffusers-edge train" in capsys.readouterr().err
