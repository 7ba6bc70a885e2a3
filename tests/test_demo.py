"""`diffusers-edge demo --quick` end to end (about 2 minutes on a 2-core CPU), and the demo's small helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
from PIL import Image

from diffusers_edge.commands.demo import build_parser, config_from_args, main
from diffusers_edge.evaluation.report import results_table
from diffusers_edge.shapes.demo.config import DemoConfig
from diffusers_edge.shapes.demo.report import finite_numbers
from diffusers_edge.shapes.demo.run import StudentEvaluator
from diffusers_edge.training import EDGELossConfig, TrainingConfig

RECALL_KEYS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "r_mean")


def _run(seed: int, recalls: dict[str, float], best_epoch: int = 4) -> dict:
    return {"seed": seed, "evaluations": [{"epoch": 2, **recalls}, {"epoch": 4, **recalls}], "best_epoch": best_epoch}


def test_results_table_with_epochs_shows_mean_std_and_epochs():
    recalls = dict.fromkeys(RECALL_KEYS, 10.0)
    results = {
        "train": {"num_pairs": 100, "num_images": 50},
        "runs": [_run(0, recalls, 2), _run(1, recalls, 4)],
        "summary": {
            "last": {k: {"mean": 12.0, "std": 1.5} for k in RECALL_KEYS},
            "best": {k: {"mean": 13.25, "std": 0.0} for k in RECALL_KEYS},
        },
    }
    lines = results_table({"EDGE": results}, with_epochs=True).splitlines()
    assert lines[0].startswith("| set | pairs (images) | epoch | IR@1 |")
    assert lines[2] == "| EDGE | 100 (50) | last (4) | " + " | ".join(["12.0 ± 1.5"] * 7) + " |"
    assert lines[3].startswith("| EDGE | 100 (50) | best (2, 4) | 13.2 ± 0.0 |")


def test_config_flags_override_the_quick_preset_and_bad_values_raise():
    args = build_parser().parse_args(["--quick", "--budgets", "10", "12", "--seeds", "3", "--output_dir", "x"])
    config = config_from_args(args)
    assert config.quick and config.budgets == [10, 12] and config.seeds == [3] and config.max_train_steps == 4
    assert config_from_args(build_parser().parse_args([])).budgets == [100, 200]
    assert config_from_args(build_parser().parse_args([])).stable_diffusion().endswith("stable-diffusion")
    other = config_from_args(build_parser().parse_args(["--pretrained_model_name_or_path", "my/sd"]))
    assert other.stable_diffusion() == "my/sd" and other.to_dict()["pretrained_model_name_or_path"] == "my/sd"
    with pytest.raises(ValueError, match="budgets"):
        DemoConfig(budgets=[1])
    with pytest.raises(ValueError, match="test split has 1000 images"):
        DemoConfig(test_images=2000)
    with pytest.raises(ValueError, match="clip_loss_inputs"):
        DemoConfig(clip_loss_inputs="two_step")
    assert config_from_args(build_parser().parse_args(["--clip_loss_inputs", "rollout"])).clip_loss_inputs == "rollout"
    flags = ["--lora_layers", "attn2.to_k,attn2.to_v", "--clip_batch_size", "8", "--rollout_guidance_scale", "2"]
    tuned = config_from_args(build_parser().parse_args(flags)).training_config(Path("out"))
    assert (tuned.lora_layers, tuned.clip_batch_size, tuned.rollout_guidance_scale) == ("attn2.to_k,attn2.to_v", 8, 2)
    plain = DemoConfig().training_config(Path("out"))
    assert plain.lora_layers == "to_k,to_q,to_v,to_out.0" and plain.clip_batch_size is None  # the training defaults
    assert plain.rollout_guidance_scale == DemoConfig().guidance_scale == 3.0  # the numbers of earlier demo runs
    assert (plain.resolution, plain.train_batch_size, plain.max_train_steps, plain.rank) == (32, 32, 100, 4)
    assert (plain.seed, plain.output_dir, plain.report_to, plain.loss_max_timestep) == (0, "out", "none", 500)
    with pytest.raises(ValueError, match="clip_batch_size"):
        DemoConfig(clip_batch_size=0)
    with pytest.raises(ValueError, match="student_epochs"):
        DemoConfig(student_epochs=0)
    with pytest.raises(ValueError, match="shapes_config must be in"):
        DemoConfig(shapes_config="two_objects")
    full = config_from_args(build_parser().parse_args(["--full_study", "--seeds", "4"]))
    assert full.generation_seeds == [0, 1, 2] and full.ablations and full.seeds == [4]
    seeds = config_from_args(build_parser().parse_args(["--full_study", "--generation_seeds", "5"])).generation_seeds
    assert seeds == [5]
    default = config_from_args(build_parser().parse_args([]))
    assert default.shapes_config == "scenes" and default.generation_seeds == [0] and not default.ablations
    one = config_from_args(build_parser().parse_args(["--shapes_config", "one_object"]))
    assert one.student_encoder() == ("resnet10t", {"channels": [16, 32, 64, 128], "stem_width": 16}, None)
    with pytest.raises(ValueError, match="ships no pretrained student image encoder"):
        DemoConfig(shapes_config="one_object", student_pretrained=True).student_encoder()
    name, kwargs, checkpoint = default.student_encoder()
    assert checkpoint.name == "model.safetensors" and checkpoint.is_file() and kwargs["channels"] == [16, 32, 64, 128]
    random_init = config_from_args(build_parser().parse_args(["--no_student_pretrained"]))
    assert random_init.student_encoder()[2] is None
    ablation = DemoConfig().training_config(Path("out"), seed=7, weights={"contrastive_weight": 0.0})
    assert (ablation.contrastive_weight, ablation.diversity_weight, ablation.seed) == (0.0, 1.0, 7)
    assert "--contrastive_weight 0.0" in " ".join(ablation.to_argv())  # the command the demo records
    assert list(finite_numbers({"a": [1, {"b": 2.5}], "c": "x", "d": True})) == [1.0, 2.5]


def test_demo_settings_share_the_training_names_and_defaults():
    demo, loss = DemoConfig(), EDGELossConfig()
    shared = ("contrastive_weight", "diversity_weight", "denoise_weight", "loss_max_timestep", "clip_loss_inputs")
    assert all(getattr(demo, name) == getattr(loss, name) for name in shared)
    assert demo.rank == TrainingConfig.rank and demo.rollout_guidance_scale == TrainingConfig.rollout_guidance_scale
    # the earlier flag names stay accepted and land on the training names
    old = config_from_args(build_parser().parse_args("--train_steps 7 --lora_rank 2 --inference_steps 3".split()))
    new = config_from_args(build_parser().parse_args("--max_train_steps 7 --rank 2 --num_inference_steps 3".split()))
    assert old == new and (new.max_train_steps, new.rank, new.num_inference_steps) == (7, 2, 3)
    assert (new.training_config(Path("out")).max_train_steps, new.training_config(Path("out")).rank) == (7, 2)
    # the help quotes the defaults DemoConfig holds, not copies of them
    helps = {action.dest: action.help for action in build_parser()._actions}
    assert helps["max_train_steps"].endswith(f"(default {demo.max_train_steps})")
    assert helps["loss_max_timestep"].endswith(f"(default {loss.loss_max_timestep})")
    assert helps["budgets"].endswith("(default 100 200)")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The demo's folder, and per student evaluation (in order) the image ids each seed trained on."""
    output_dir = tmp_path_factory.mktemp("demo") / "edge-demo"
    trained_on, evaluate = [], StudentEvaluator.evaluate

    def recording(self, train, seeds):
        drawn = {seed: train(seed) if callable(train) else train for seed in seeds}  # a set, or a draw per seed
        trained_on.append({seed: list(dataset["image_id"]) for seed, dataset in drawn.items()})
        return evaluate(self, train, seeds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StudentEvaluator, "evaluate", recording)
        assert main(["--quick", "--output_dir", str(output_dir), "--no_progress", "--seeds", "0", "1"]) == 0
    return output_dir, trained_on


@pytest.mark.slow
def test_each_student_seed_draws_its_own_random_coreset(quick_demo):
    output_dir, trained_on = quick_demo
    rows = json.loads((output_dir / "results.json").read_text(encoding="utf-8"))["tables"]["20"]
    by_row = dict(zip(rows, trained_on))  # rows are evaluated in table order
    for label in ("random coreset", "random coreset at EDGE's split"):
        assert by_row[label][0] != by_row[label][1]
    assert len(by_row["random coreset"][0]) == 20 and len(by_row["random coreset at EDGE's split"][0]) == 10
    for label in ("EDGE", "plain generation"):  # generated sets are fixed: every seed trains on the same images
        assert by_row[label][0] == by_row[label][1]


@pytest.mark.slow
def test_quick_demo_writes_report_grid_results_and_loadable_sets(quick_demo):
    quick_demo = quick_demo[0]
    results = json.loads((quick_demo / "results.json").read_text(encoding="utf-8"))
    assert list(results["tables"]) == ["20"]
    rows = results["tables"]["20"]
    expected = ["random coreset", "herding", "k-center", "random coreset at EDGE's split", "plain generation",
                "EDGE w/o caption synthesis", "EDGE", "EDGE + k-center selection"]
    assert list(rows) == expected
    every = [*rows.values(), results["full_reference"]]
    recalls = [
        value
        for row in every
        for run in row["runs"]
        for evaluation in run["evaluations"]
        for key, value in evaluation.items()
        if key in RECALL_KEYS
    ]
    recalls += [row["summary"][w][key]["mean"] for row in every for w in ("last", "best") for key in RECALL_KEYS]
    generation = [d for sets in results["generation"].values() for d in sets.values()]
    scores = [v for d in generation for v in d["prompt_following"].values()]
    # 8 rows evaluated at epochs 2 and 4, the full split (1 epoch) once, for 2 seeds; last and best of all 9 rows
    assert len(recalls) == 2 * (8 * 2 * 7 + 7) + 9 * 2 * 7
    # the scenes judge: claim accuracy of every prompt, how confidently it read the images, unsaid variety
    assert all({"all", "confident"} <= set(d["prompt_following"]) and "unsaid" in d for d in generation)
    assert 0 <= results["generation"]["20"]["EDGE"]["synthesized_captions"]["all"] <= 100
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in recalls + scores)
    assert all(math.isfinite(v) for v in finite_numbers(results))
    # the full split is far above chance and above every 20-pair set: the numbers measure something. Chance on the
    # quick run's 200 test images is r_mean (1 + 5 + 10) / 3 / 200 * 100 = 2.7; scenes' partial captions make
    # retrieval hard (the quick full split, 300 images for 1 epoch, measured 19.0)
    full = results["full_reference"]["summary"]["last"]["r_mean"]["mean"]
    assert full > 4 * 2.7 and all(full > row["summary"]["last"]["r_mean"]["mean"] for row in rows.values())
    # another seed gives other numbers: each seed trains its own student (and draws its own random coreset)
    for row in every:
        first, second = (run["evaluations"][-1] for run in row["runs"])
        assert [first[k] for k in RECALL_KEYS] != [second[k] for k in RECALL_KEYS]
    change = results["generation"]["20"]["EDGE w/o caption synthesis"]["pixel_change_vs_plain"]
    assert 0 < change < 255
    # budgets count pairs: EDGE keeps 2 captions per image, so half the images
    assert rows["EDGE"]["train"] == {"num_images": 10, "num_pairs": 20}
    assert rows["plain generation"]["train"] == {"num_images": 20, "num_pairs": 20}
    assert rows["random coreset at EDGE's split"]["train"] == {"num_images": 10, "num_pairs": 20}

    report = (quick_demo / "report.md").read_text(encoding="utf-8")
    edge = rows["EDGE"]["summary"]["last"]["r_mean"]
    assert "| EDGE | 20 (10) | last (4) |" in report and f"{edge['mean']:.1f} ± {edge['std']:.1f} |" in report
    assert "fine-tune" in report and "plain generation" in report and "prompt claims right" in report
    assert "EDGE demo on captioned shapes (`scenes`)" in report and "starting from the stack's pretrained" in report
    split = rows["random coreset at EDGE's split"]["summary"]["last"]["r_mean"]
    assert f"(random coreset at EDGE's split) score {split['mean']:.1f} ± {split['std']:.1f}" in report

    with Image.open(quick_demo / "samples.png") as grid:
        assert grid.width >= 8 * 128 and grid.height >= 4 * 128

    folder = results["distilled_sets"]["20"]["EDGE"]
    distilled = datasets.load_dataset(folder, split="train")
    assert distilled.num_rows == 10 and all(len(c) == 2 for c in distilled["captions"])
    assert distilled[0]["image"].size == (32, 32)
    plain = datasets.load_dataset(results["distilled_sets"]["20"]["plain generation"], split="train")
    edge_one = datasets.load_dataset(results["distilled_sets"]["20"]["EDGE w/o caption synthesis"], split="train")
    assert plain["prompt"] == edge_one["prompt"]  # same prompts and seeds: only the generator differs
