"""`diffusers-edge evaluate` and examples/evaluate_distilled.py on the embedded shapes data with tiny encoders."""

import argparse
import json
import runpy
from pathlib import Path

import datasets
import pytest

from diffusers_edge.commands.evaluate import build_parser, main, run
from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.data.shapes import load_captioned_shapes
from diffusers_edge.evaluation import evaluate_dataset, protocol_config
from diffusers_edge.testing import save_tiny_bert

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "evaluate_distilled.py"


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    bert = save_tiny_bert(tmp_path_factory.mktemp("bert"))
    cache = tmp_path_factory.mktemp("shapes-cache")
    return [
        "--shapes_num_train", "30", "--shapes_num_test", "20", "--cache_dir", str(cache),
        "--image_encoder", "resnet10t", "--image_encoder_kwargs", '{"channels": [8, 16, 32, 64], "stem_width": 8}',
        "--no_pretrained", "--text_encoder", str(bert), "--text_pooling", "mean", "--image_size", "32",
        "--epochs", "2", "--eval_every", "1", "--batch_size", "8", "--no_progress", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def distilled_folder(tmp_path_factory, common):
    """A distilled set in the Hub layout (Parquet + README YAML configs): 6 images with 2 captions each."""
    cache = common[common.index("--cache_dir") + 1]
    shapes = load_captioned_shapes(seed=0, num_train=30, num_val=0, num_test=20, cache_dir=cache)["train"]
    rows = shapes.select(range(6)).select_columns(["image", "captions", "image_id"])
    rows = rows.map(lambda row: {"captions": row["captions"][:2]}).cast(NORMALIZED_FEATURES)
    folder = tmp_path_factory.mktemp("distilled")
    (folder / "data").mkdir()
    rows.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n---\n"
    )
    return folder


def test_baseline_run_prints_the_table_and_results_json_round_trips(tmp_path, common, capsys):
    out = tmp_path / "random"
    argv = ["--baseline", "random", "--num_pairs", "10", "--seeds", "0", "1", "--output_dir", str(out), *common]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| random 10 (2 seeds) | last |" in printed and "| random 10 (2 seeds) | best |" in printed
    assert "optimistic" in printed
    text = (out / "results.json").read_text()
    record = json.loads(text)
    assert json.loads(json.dumps(record)) == record
    assert record["command"] == ["diffusers-edge", "evaluate", *argv]
    assert record["args"]["num_pairs"] == 10 and record["args"]["seeds"] == [0, 1]
    results = record["results"]
    assert results["protocol"]["epochs"] == 2 and results["protocol"]["name"] == "lors"
    assert results["protocol"]["momentum"] == 0.9 and results["protocol"]["image_size"] == 32
    assert results["student"]["image_encoder_kwargs"] == {"channels": [8, 16, 32, 64], "stem_width": 8}
    assert results["student"]["text_pooling"] == "mean" and results["test"] == {"num_images": 20, "num_texts": 100}
    assert [one["train"] for one in results["runs"]] == [{"num_images": 10, "num_pairs": 10}] * 2
    for one in results["runs"]:
        assert [row["epoch"] for row in one["evaluations"]] == [1, 2]
        assert one["last"] == {k: v for k, v in one["evaluations"][-1].items() if k != "epoch"}
        assert all(0.0 <= one[which][key] <= 100.0 for which in ("last", "best") for key in ("r_mean", "t2i_R@1"))
    last = [one["last"]["r_mean"] for one in results["runs"]]
    assert results["summary"]["last"]["r_mean"]["mean"] == pytest.approx(sum(last) / 2)
    assert record["table"] in printed and record["table"] in (out / "results.md").read_text()


def test_distilled_folder_every_caption_is_a_pair_and_saved_args_reproduce(tmp_path, common, distilled_folder):
    argv = ["--distilled", str(distilled_folder), "--seeds", "3", "--output_dir", str(tmp_path / "a"), *common]
    record = run(build_parser().parse_args(argv), argv)
    assert record["results"]["train"] == {"num_images": 6, "num_pairs": 12}
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    again = run(argparse.Namespace(**{**saved["args"], "output_dir": str(tmp_path / "b")}))
    assert again["results"]["runs"][0]["evaluations"] == saved["results"]["runs"][0]["evaluations"]
    assert again["results"]["runs"][0]["losses"] == saved["results"]["runs"][0]["losses"]


def test_example_script_is_the_same_front(tmp_path, common, distilled_folder, capsys):
    module = runpy.run_path(str(EXAMPLE), run_name="example")
    argv = ["--distilled", str(distilled_folder), "--output_dir", str(tmp_path), *common, "--epochs", "1"]
    assert module["main"](argv) == 0
    assert "| " + str(distilled_folder) + " (1 seed) | last |" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["results"]["protocol"]["epochs"] == 1


def _save(rows: dict, folder: Path) -> str:
    datasets.Dataset.from_dict(rows, features=NORMALIZED_FEATURES).save_to_disk(str(folder))
    return str(folder)


def test_bad_input_is_named(tmp_path, common, distilled_folder):
    def parse(*extra):
        return build_parser().parse_args(["--output_dir", str(tmp_path / "out"), *common, *extra])

    image = load_captioned_shapes(num_train=2, num_val=0, num_test=0)["train"][0]["image"]
    empty = datasets.Dataset.from_dict({"image": [], "captions": [], "image_id": []}, features=NORMALIZED_FEATURES)
    one = datasets.Dataset.from_dict({"image": [image], "captions": [["a red circle"]], "image_id": ["a"]},
                                     features=NORMALIZED_FEATURES)  # fmt: skip
    bert = common[common.index("--text_encoder") + 1]
    with pytest.raises(ValueError, match="the training set is empty"):
        evaluate_dataset(empty, one, protocol_config("lors", image_size=32), text_encoder=bert, progress=False)
    no_caption = _save({"image": [image, image], "captions": [["a red circle"], []], "image_id": ["a", "b"]},
                       tmp_path / "no-caption")  # fmt: skip
    with pytest.raises(ValueError, match="image_id='b'.* has no captions"):
        run(parse("--distilled", no_caption))
    with pytest.raises(ValueError, match="image_id='b'.* has no captions"):
        run(parse("--distilled", str(distilled_folder), "--test_source", no_caption, "--test_split", ""))
    with pytest.raises(ValueError, match="exceeds the pool"):
        run(parse("--baseline", "random", "--num_pairs", "31"))
    with pytest.raises(ValueError, match="needs --num_pairs"):
        run(parse("--baseline", "herding"))
    with pytest.raises(ValueError, match="Close names: .*resnet10t"):
        run(parse("--distilled", str(distilled_folder), "--image_encoder", "resnet10tt"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--distilled", "x", "--baseline", "random"])
