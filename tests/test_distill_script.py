"""The distill command: in-process flags, and examples/distill.py on one process versus two (torchrun + gloo)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_edge.commands.distill import main, parse_args
from diffusers_edge.data.distilled import MANIFEST_NAME, load_distilled
from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.pipeline_edge import EDGEPipeline, item_seed
from diffusers_edge.testing import save_tiny_captioner, save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "distill.py"


def common_flags(tiny_sd_path, output_dir, num_pairs, cpi=1):
    return [
        "--pretrained_model_name_or_path", str(tiny_sd_path), "--source", "shapes", "--shapes_num_train", "12",
        "--num_pairs", str(num_pairs), "--captions_per_image", str(cpi), "--output_dir", str(output_dir),
        "--num_inference_steps", "2", "--batch_size", "2", "--shard_size", "2", "--seed", "5",
    ]  # fmt: skip


def test_flags_defaults_and_errors():
    required = ["--pretrained_model_name_or_path", "sd", "--source", "s", "--num_pairs", "4", "--output_dir", "o"]
    args = parse_args(required)
    assert (args.captions_per_image, args.selection, args.guidance_scale) == (2, "random", 7.5)
    assert args.num_inference_steps == 50 and args.batch_size == 8 and args.shard_size == 64
    assert args.clip_model_name_or_path == "openai/clip-vit-base-patch32" and args.captioner is None
    assert not args.push_to_hub
    for flag in ("--clip_model_name_or_path", "--clip_model"):  # training's name, and the older alias
        assert parse_args([*required, flag, "my-clip"]).clip_model_name_or_path == "my-clip"
    with pytest.raises(SystemExit):
        parse_args([*required, "--push_to_hub"])
    with pytest.raises(SystemExit):
        parse_args([*required, "--selection", "farthest"])


def test_main_in_process_with_kcenter_and_a_captioner(tiny_sd_path, tmp_path, capsys):
    clip = save_tiny_clip(tmp_path / "clip")
    captioner = save_tiny_captioner(tmp_path / "captioner")
    flags = common_flags(tiny_sd_path, tmp_path / "out", num_pairs=6, cpi=2)
    flags += ["--selection", "kcenter", "--clip_model", str(clip), "--captioner", str(captioner)]
    assert main(flags) == 0
    assert "3 images, 6 pairs" in capsys.readouterr().out
    distilled = load_distilled(tmp_path / "out", cache_dir=tmp_path / "cache")
    assert distilled.num_rows == 3 and all(len(c) == 2 and all(x.strip() for x in c) for c in distilled["captions"])
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["selection"] == "kcenter" and manifest["clip_model"] == str(clip)
    assert manifest["captioner"]["mode"] == "image-to-text"
    # re-running the finished command is a no-op that returns the same set; other flags are refused by name
    assert main(flags) == 0
    with pytest.raises(ValueError, match="num_inference_steps=2, but this call has num_inference_steps=3"):
        main([*flags, "--num_inference_steps", "3"])


def test_main_streams_webdataset_shards_and_selects_from_an_embedding_store(tiny_sd_path, tmp_path, capsys):
    import io
    import tarfile

    from transformers import CLIPModel, CLIPProcessor

    from diffusers_edge.selection import embed_captions, kcenter_greedy

    clip = save_tiny_clip(tmp_path / "clip")
    captions = [f"a {colour} {shape}" for colour in ("red", "blue", "green") for shape in ("circle", "square", "star")]
    for shard in range(2):  # two .tar shards of `<key>.jpg` / `<key>.txt`, as a CC3M downloader writes them
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for index in range(shard * 5, min(shard * 5 + 5, len(captions))):
                buffer = io.BytesIO()
                PIL.Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(buffer, format="JPEG")
                for extension, data in (("jpg", buffer.getvalue()), ("txt", captions[index].encode())):
                    info = tarfile.TarInfo(f"{index:05d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    flags = [
        "--pretrained_model_name_or_path", str(tiny_sd_path), "--source", str(tmp_path / "shard-*.tar"),
        "--streaming", "--image_column", "jpg", "--caption_column", "txt", "--selection", "kcenter",
        "--clip_model", str(clip), "--embedding_cache_dir", str(tmp_path / "stores"), "--num_pairs", "4",
        "--captions_per_image", "1", "--output_dir", str(tmp_path / "out"), "--num_inference_steps", "2",
        "--seed", "2",
    ]  # fmt: skip
    assert main(flags) == 0 and "4 images, 4 pairs" in capsys.readouterr().out
    embeddings = embed_captions(captions, CLIPModel.from_pretrained(clip), CLIPProcessor.from_pretrained(clip))
    plan = json.loads((tmp_path / "out" / "edge_plan.json").read_text())
    assert plan["prompts"] == [captions[i] for i in kcenter_greedy(embeddings, 4, seed=2)]
    assert plan["source_ids"] == [f"{i:05d}" for i in kcenter_greedy(embeddings, 4, seed=2)]  # WebDataset keys
    assert len(list((tmp_path / "stores").iterdir())) == 1


def _save_visible_lora(tiny_sd_path, folder):
    """A LoRA on the tiny UNet whose effect shows in the images, saved the way train_edge.py saves one."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = EDGEPipeline.from_pretrained(tiny_sd_path).unet
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():  # lora_B starts at zero: give the adapter a visible effect
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return folder


def test_main_with_a_lora_a_saved_source_and_non_default_guidance(tiny_sd_path, tmp_path):
    captions = [[f"a picture number {i}", f"another caption {i}"] for i in range(4)]
    images = [PIL.Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(4)]
    rows = {"image": images, "captions": captions, "image_id": [f"img{i}" for i in range(4)]}
    source = datasets.Dataset.from_dict(rows, features=NORMALIZED_FEATURES)
    datasets.DatasetDict({"train": source}).save_to_disk(str(tmp_path / "source"))
    lora = _save_visible_lora(tiny_sd_path, tmp_path / "lora")
    flags = common_flags(tiny_sd_path, tmp_path / "out", num_pairs=2)
    flags[flags.index("--source") + 1] = str(tmp_path / "source")
    flags += ["--lora", str(lora), "--guidance_scale", "2.5", "--negative_prompt", "a dark picture"]
    assert main(flags) == 0
    distilled = load_distilled(tmp_path / "out", cache_dir=tmp_path / "cache")
    pool = {c: i for i, cs in zip(rows["image_id"], captions) for c in cs}
    assert all(pool[p] == s for p, s in zip(distilled["prompt"], distilled["source_image_id"]))
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["lora"] == [str(lora)] and manifest["negative_prompt"] == "a dark picture"

    # the same pixels as the LoRA pipeline called directly with the item seeds, guidance and negative prompt
    def direct(with_lora):
        pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
        pipe.set_progress_bar_config(disable=True)
        if with_lora:
            pipe.load_lora_weights(str(lora))
        generators = [torch.Generator().manual_seed(item_seed(5, i)) for i in (0, 1)]
        return pipe(list(distilled["prompt"]), generator=generators, num_inference_steps=2, guidance_scale=2.5,
                    negative_prompt=["a dark picture"] * 2, output_type="np").images  # fmt: skip

    made = np.stack([np.asarray(image) for image in distilled["image"]])
    np.testing.assert_array_equal((direct(True) * 255).round().astype(np.uint8), made)
    assert not np.array_equal((direct(False) * 255).round().astype(np.uint8), made)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command, env_extra, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env_extra}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_two_processes_write_the_same_set_as_one(tiny_sd_path, tmp_path):
    one = tmp_path / "one"  # the one-process reference runs here, single-threaded like the torchrun workers
    assert main(common_flags(tiny_sd_path, one, num_pairs=5)) == 0
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # torchrun, without needing it on PATH
    launcher = [*torchrun, "--nproc_per_node", "2", "--master_port", str(free_port())]
    command = [*launcher, str(SCRIPT), *common_flags(tiny_sd_path, two, 5)]
    result = _run(command, {"ACCELERATE_USE_CPU": "true"}, tmp_path)
    assert result.stdout.count("5 images, 5 pairs") == 1  # only the main process reports
    one_shards = sorted((one / "data").glob("*.parquet"))
    two_shards = sorted((two / "data").glob("*.parquet"))
    assert [p.name for p in one_shards] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [p.name for p in two_shards] == [p.name for p in one_shards]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one_shards, two_shards))
    assert json.loads((one / MANIFEST_NAME).read_text()) == json.loads((two / MANIFEST_NAME).read_text())
