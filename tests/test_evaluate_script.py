"""`diffusers-edge evaluate` and examples/evaluate_distilled.py on the embedded shapes data with tiny encoders."""

import argparse
import json
import runpy
from pathlib import Path

import datasets
import pytest

from diffusers_edge.commands.evaluate import build_parser, main, run
from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.evaluation import evaluate_dataset, protocol_config, summarize
from diffusers_edge.selection.coreset import select_coreset
from diffusers_edge.shapes.dataset import load_captioned_shapes
from diffusers_edge.testing import save_tiny_bert

TINY_CNN = {"channels": [8, 16, 32, 64], "stem_width": 8}
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


def test_each_seed_trains_on_its_own_draw_and_best_summarizes_each_runs_best(common):
    cache, bert = common[common.index("--cache_dir") + 1], common[common.index("--text_encoder") + 1]
    shapes = load_captioned_shapes(seed=0, num_train=30, num_val=0, num_test=20, cache_dir=cache)
    drawn = {}

    def draw(seed):
        coreset = select_coreset(shapes["train"], "random", 8, seed=seed)
        drawn[seed] = coreset["image_id"]
        return coreset

    config = protocol_config("lors", epochs=4, eval_every=1, batch_size=8, image_size=32, lr_milestones=[])
    student = {"image_encoder": "resnet10t", "image_encoder_kwargs": TINY_CNN, "pretrained": False,
               "text_encoder": bert, "text_pooling": "mean", "device": "cpu", "progress": False}  # fmt: skip
    results = evaluate_dataset(draw, shapes["test"], config, seeds=[0, 1], **student)
    assert list(drawn) == [0, 1] and drawn[0] != drawn[1]  # one draw per seed, and the draws differ
    # the second run is exactly a one-seed evaluation on the second seed's own coreset
    alone = evaluate_dataset(select_coreset(shapes["train"], "random", 8, seed=1), shapes["test"], config,
                             seeds=[1], **student)  # fmt: skip
    assert alone["runs"][0]["losses"] == results["runs"][1]["losses"]
    assert alone["runs"][0]["evaluations"] == results["runs"][1]["evaluations"]
    for one in results["runs"]:
        top = max(one["evaluations"], key=lambda row: row["r_mean"])
        assert one["best"] == {k: v for k, v in top.items() if k != "epoch"} and one["best_epoch"] == top["epoch"]
        assert one["best"]["r_mean"] >= one["last"]["r_mean"]
    assert any(one["best"] != one["last"] for one in results["runs"])  # so that best and last can be told apart
    assert results["summary"]["best"] == summarize([run["best"] for run in results["runs"]])
    assert results["summary"]["last"] == summarize([run["last"] for run in results["runs"]])
    assert results["summary"]["best"]["r_mean"]["mean"] >= results["summary"]["last"]["r_mean"]["mean"]


def _same_run(common):
    """The protocol and student `common` describes, with one epoch, for evaluate_dataset called directly."""
    config = protocol_config("lors", epochs=1, eval_every=1, batch_size=8, image_size=32)
    student = {"image_encoder": "resnet10t", "image_encoder_kwargs": TINY_CNN, "pretrained": False,
               "text_encoder": common[common.index("--text_encoder") + 1], "text_pooling": "mean", "device": "cpu",
               "progress": False}  # fmt: skip
    return config, student


def _shapes(common):
    cache = common[common.index("--cache_dir") + 1]
    return load_captioned_shapes(seed=0, num_train=30, num_val=0, num_test=20, cache_dir=cache)


@pytest.mark.parametrize("baseline", ["herding", "kcenter", "forgetting", "full"])
def test_every_baseline_trains_on_the_coreset_select_coreset_picks(tmp_path, common, tiny_clip_path, baseline):
    budget = [] if baseline == "full" else ["--num_pairs", "6"]
    argv = ["--baseline", baseline, *budget, "--clip_model", str(tiny_clip_path), "--forgetting_epochs", "3",
            "--output_dir", str(tmp_path), *common, "--epochs", "1"]  # fmt: skip
    record = run(build_parser().parse_args(argv), argv)
    shapes, (config, student) = _shapes(common), _same_run(common)
    coreset = select_coreset(shapes["train"], baseline, 6, clip_model=tiny_clip_path, forgetting_epochs=3, seed=0)
    expected = evaluate_dataset(coreset, shapes["test"], config, seeds=[0], **student)
    assert record["results"]["runs"][0]["losses"] == expected["runs"][0]["losses"]
    sizes = {"num_images": 30, "num_pairs": 150} if baseline == "full" else {"num_images": 6, "num_pairs": 6}
    assert record["results"]["train"] == sizes and record["label"].startswith(f"{baseline}")


def test_a_streamed_train_source_gives_the_in_memory_coreset(tmp_path, common, tiny_clip_path):
    shapes = _shapes(common)
    (tmp_path / "shards").mkdir()
    for index in range(2):  # CC3M-style Parquet shards of the normalized form
        shard = shapes["train"].shard(2, index, contiguous=True)
        shard.to_parquet(str(tmp_path / "shards" / f"train-{index}.parquet"))
    argv = ["--baseline", "kcenter", "--num_pairs", "6", "--space", "text", "--clip_model", str(tiny_clip_path),
            "--train_source", str(tmp_path / "shards"), "--train_streaming", "--embedding_cache_dir",
            str(tmp_path / "stores"), "--output_dir", str(tmp_path / "out"), *common, "--epochs", "1"]  # fmt: skip
    record = run(build_parser().parse_args(argv), argv)
    config, student = _same_run(common)
    coreset = select_coreset(shapes["train"], "kcenter", 6, space="text", clip_model=tiny_clip_path, seed=0)
    expected = evaluate_dataset(coreset, shapes["test"], config, seeds=[0], **student)
    assert record["results"]["runs"][0]["losses"] == expected["runs"][0]["losses"]
    assert len(list((tmp_path / "stores").iterdir())) == 2  # caption embeddings and the text-space points
    with pytest.raises(ValueError, match="the embedded `shapes` data is built in memory"):
        run(build_parser().parse_args([*argv[:8], *argv[10:]]))  # no --train_source: the embedded data


def test_coreset_seed_fixes_one_coreset_for_every_training_seed(tmp_path, common):
    argv = ["--baseline", "random", "--num_pairs", "6", "--coreset_seed", "5", "--seeds", "0", "1",
            "--output_dir", str(tmp_path), *common, "--epochs", "1"]  # fmt: skip
    record = run(build_parser().parse_args(argv), argv)
    shapes, (config, student) = _shapes(common), _same_run(common)
    fixed = select_coreset(shapes["train"], "random", 6, seed=5)
    expected = evaluate_dataset(fixed, shapes["test"], config, seeds=[0, 1], **student)
    assert [r["losses"] for r in record["results"]["runs"]] == [r["losses"] for r in expected["runs"]]
    own_draw = evaluate_dataset(select_coreset(shapes["train"], "random", 6, seed=1), shapes["test"], config,
                                seeds=[1], **student)  # fmt: skip
    assert own_draw["runs"][0]["losses"] != record["results"]["runs"][1]["losses"]


def test_captions_per_image_all_keeps_every_caption(tmp_path, common):
    argv = ["--baseline", "random", "--num_pairs", "10", "--captions_per_image", "all", "--output_dir", str(tmp_path),
            *common, "--epochs", "1"]  # fmt: skip
    record = run(build_parser().parse_args(argv), argv)
    assert record["results"]["train"] == {"num_images": 2, "num_pairs": 10}  # shapes images have 5 captions
    with pytest.raises(ValueError, match="--captions_per_image must be a positive number or `all`, got 'two'"):
        run(build_parser().parse_args([*argv[:4], "--captions_per_image", "two", *argv[6:]]))


def test_a_saved_table_with_a_split_column_gives_both_splits(tmp_path, common):
    """A Flickr30K-like single table (`image`, `caption` lists, `split`), saved with save_to_disk."""
    shapes = _shapes(common)
    table = datasets.concatenate_datasets([shapes["train"], shapes["test"]]).select_columns(["image", "captions"])
    table = table.rename_column("captions", "caption").add_column("split", ["train"] * 30 + ["test"] * 20)
    table.save_to_disk(str(tmp_path / "table"))
    argv = ["--baseline", "random", "--num_pairs", "10", "--train_source", str(tmp_path / "table"),
            "--test_source", str(tmp_path / "table"), "--split_column", "split", "--output_dir", str(tmp_path / "out"),
            *common, "--epochs", "1"]  # fmt: skip
    record = run(build_parser().parse_args(argv), argv)
    assert record["results"]["test"] == {"num_images": 20, "num_texts": 100}
    # ids are row numbers of the whole table: the pool is rows 0-29, the test rows 30-49
    train = shapes["train"].remove_columns("image_id").add_column("image_id", [str(i) for i in range(30)])
    test = shapes["test"].remove_columns("image_id").add_column("image_id", [str(i) for i in range(30, 50)])
    config, student = _same_run(common)
    expected = evaluate_dataset(select_coreset(train, "random", 10, seed=0), test, config, seeds=[0], **student)
    assert record["results"]["runs"][0]["losses"] == expected["runs"][0]["losses"]
    assert record["results"]["runs"][0]["evaluations"] == expected["runs"][0]["evaluations"]


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
