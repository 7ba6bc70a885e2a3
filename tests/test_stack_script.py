"""`examples/shapes/train_tiny_stack.py --quick` trains every component of a scenes stack that loads back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "train_tiny_stack.py"


@pytest.mark.slow
def test_quick_scenes_stack_trains_every_component_and_loads_back(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    from diffusers_edge.captioning import Captioner
    from diffusers_edge.evaluation.student import build_image_encoder
    from diffusers_edge.shapes.judge import load_judge
    from diffusers_edge.shapes.scenes import SCENE_LABELS

    spec = importlib.util.spec_from_file_location("train_tiny_stack", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    log = script.main(["--quick", "--output_dir", str(tmp_path), "--num_threads", "1", "--device", "cpu"])

    stages = ["data", "judge", "clip", "text-encoder", "captioner", "student-image-encoder", "vae", "unet", "eval"]
    assert all(log[name]["cpu_s"] >= 0 for name in stages)
    assert log["runs"][0]["config"] == "scenes"
    assert set(json.loads((tmp_path / "training_log.json").read_text())) == set(log)
    assert set(load_judge(tmp_path / "judge").labels) == set(SCENE_LABELS)
    assert {"all", "confident", "colors_per_scene_generated"} <= set(log["eval"]["guidance_3"])
    assert {"greedy", "sampled"} <= set(log["captioner"]["test_captions"])
    CLIPModel.from_pretrained(tmp_path / "clip")
    StableDiffusionPipeline.from_pretrained(tmp_path / "stable-diffusion")
    Captioner.from_pretrained(tmp_path / "captioner")
    encoder = json.loads((tmp_path / "student-image-encoder" / "config.json").read_text())
    assert encoder["pretraining"]["data_seed"] == 1 and encoder["kwargs"]["channels"] == [16, 32, 64, 128]
    model = build_image_encoder(encoder["model_name"], checkpoint=tmp_path / "student-image-encoder" /
                                encoder["checkpoint"], **encoder["kwargs"])
    assert model.num_features == encoder["num_features"] == 128

    # a second run of one component keeps the first run's stages in the log and names the run that wrote each
    again = script.main(["--quick", "--output_dir", str(tmp_path), "--components", "judge", "--num_threads", "1",
                         "--device", "cpu"])
    assert len(again["runs"]) == 2 and again["judge"]["run"] == 1 and again["clip"]["run"] == 0
