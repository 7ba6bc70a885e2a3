"""Tests of the embedded captioned-shapes dataset (`diffusers_edge.shapes`) and `diffusers-edge shapes`."""

import ast
import importlib
import inspect
import io
import json
from collections import Counter

import datasets
import numpy as np
import pytest
from PIL import Image

from diffusers_edge.commands.shapes import main as shapes_main
from diffusers_edge.data.format import NORMALIZED_FEATURES, validate_normalized
from diffusers_edge.shapes import dataset as D
from diffusers_edge.shapes import objects as O
from diffusers_edge.shapes.tokenization import build_clip_tokenizer

GRID_PX = np.array(O._GRID) * 32  # grid centres in pixels at 32 px


@pytest.fixture(scope="module")
def one() -> datasets.DatasetDict:
    return D.load_captioned_shapes("one_object", seed=0, num_train=60, num_val=10, num_test=20)


@pytest.fixture(scope="module")
def two() -> datasets.DatasetDict:
    return D.load_captioned_shapes("two_objects", seed=0, num_train=60, num_val=10, num_test=20)


# -------------------------------------------------------------- re-deriving attributes from pixels (independent)


def _foreground(pixels: np.ndarray) -> np.ndarray:
    """Pixels that differ from the (majority) background by more than half the strongest difference."""
    background = np.median(pixels.reshape(-1, 3), axis=0)
    diff = np.abs(pixels - background).max(-1)
    return diff > diff.max() / 2


def _describe(pixels: np.ndarray, mask: np.ndarray) -> dict:
    """Colour (chromaticity of the mean foreground pixel), size (extent), box centre, shape (large objects only)."""
    ys, xs = np.nonzero(mask)
    mean = pixels[mask].mean(0)
    chroma = mean / mean.max()  # brightness-invariant: a dimmed white is grey, not purple
    color = min(O.COLORS, key=lambda c: np.abs(np.array(O.COLORS[c]) / max(O.COLORS[c]) - chroma).sum())
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    size = "large" if max(w, h) > 10 else "small"  # small objects span 6.5-7.5 px, large 13-14 px
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    described = {"color": color, "size": size, "cx": cx + 0.5, "cy": cy + 0.5, "count": int(mask.sum())}
    if size == "large":  # too few pixels to tell shapes apart reliably when small
        offset = ys.mean() - cy  # a triangle's mass sits low in its box
        diagonal = all(mask[round(cy + sy * h / 4), round(cx + sx * w / 4)] for sx in (-1, 1) for sy in (-1, 1))
        if offset > 1:
            described["shape"] = "triangle"
        elif mask.sum() / (w * h) > 0.92:
            described["shape"] = "square"
        else:  # a circle covers the points a quarter of the way along its diagonals; a cross does not
            described["shape"] = "circle" if diagonal else "cross"
    return described


def _grid_position(cx: float, cy: float) -> str:
    return O._POSITION_NAMES[int(np.abs(GRID_PX - cy).argmin())][int(np.abs(GRID_PX - cx).argmin())]


def _labels(example: dict, features: datasets.Features) -> dict:
    return {k: features[k].int2str(v) for k, v in example.items() if isinstance(features[k], datasets.ClassLabel)}


# ----------------------------------------------------------------------------------------------------- tests


def test_render_canonical_scene_matches_hand_computed_pixels():
    # a 13.5 px square centred at 16 px covers pixels 9.25..22.75: pixel 10 is inside, pixel 8 is outside
    image = O.render_shapes([O.ShapeObject("square", "red", "large", "center")])
    pixels = np.asarray(image)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert tuple(pixels[16, 16]) == (220, 40, 40) and tuple(pixels[10, 21]) == (220, 40, 40)
    assert tuple(pixels[8, 16]) == (0, 0, 0) and tuple(pixels[16, 23]) == (0, 0, 0)
    assert tuple(pixels[9, 16]) == (165, 30, 30)  # row 9 is covered from 9.25 on: 3/4 of the pixel, box-filtered
    assert int((pixels.max(-1) > 0).sum()) == 14 * 14  # 12 full rows/columns plus 2 partial ones


def test_render_scales_with_image_size_and_rejects_bad_input():
    image = O.render_shapes([O.ShapeObject("circle", "white", "small", "top left")], image_size=64)
    pixels = np.asarray(image)
    ys, xs = np.nonzero(pixels.max(-1) > 128)
    assert image.size == (64, 64)
    assert abs(xs.mean() + 0.5 - 17) < 0.5 and abs(ys.mean() + 0.5 - 17) < 0.5  # 8.5 px at 32 -> 17 px at 64
    with pytest.raises(ValueError, match="Unknown color 'cyan'"):
        O.ShapeObject("circle", "cyan", "small", "top")
    with pytest.raises(ValueError, match="image_size"):
        O.render_shapes([], image_size=8)


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    def build(cache: str, seed: int) -> datasets.Dataset:
        builder = D.CaptionedShapes(cache_dir=str(tmp_path / cache), seed=seed, num_train=12, num_val=0, num_test=0)
        builder.download_and_prepare()
        return builder.as_dataset(split="train").cast_column("image", datasets.Image(decode=False))

    first, again = build("a", 0), build("b", 0)
    other = build("a", 1)  # same cache folder as `first`: the seed is part of the config id, no stale reuse
    pixels = [np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))) for r in first]
    assert first["captions"] == again["captions"] and first["shape"] == again["shape"]
    assert [r["image"]["bytes"] for r in first] == [r["image"]["bytes"] for r in again]
    assert first["captions"] != other["captions"]
    assert sum(r["image"]["bytes"] == o["image"]["bytes"] for r, o in zip(first, other)) == 0
    assert len({p.tobytes() for p in pixels}) == len(pixels)  # jitter: no two images pixel-identical


def test_split_sizes_do_not_change_other_splits():
    small = D.load_captioned_shapes(seed=3, num_train=5, num_val=3, num_test=4)
    large = D.load_captioned_shapes(seed=3, num_train=9, num_val=0, num_test=4)
    assert small["test"]["captions"] == large["test"]["captions"]
    assert small["train"]["captions"] == large["train"]["captions"][:5]  # examples are drawn one by one
    assert set(large) == {"train", "test"}  # an empty split is left out
    assert small["train"]["captions"] != small["test"]["captions"][:5]


def test_every_image_has_five_distinct_lower_case_captions(one, two):
    for dsd in (one, two):
        for split in dsd.values():
            for captions in split["captions"]:
                assert len(captions) == 5 and len(set(captions)) == 5
                for caption in captions:
                    assert caption == caption.lower() and all(w.isalpha() for w in caption.split())


def test_caption_vocabulary_is_exactly_the_words_captions_use():
    rng = np.random.default_rng(0)
    used = {"one_object": set(), "two_objects": set()}  # scenes: tests/test_scenes.py
    for name, n in (("one_object", 1), ("two_objects", 2)):
        for _ in range(600):
            objects, relation = O.sample_scene(n, rng)
            used[name] |= {w for c in O.caption_shapes(objects, relation, rng=rng) for w in c.split()}
    assert sorted(used["one_object"]) == D.caption_vocabulary("one_object")
    assert sorted(used["two_objects"]) == D.caption_vocabulary("two_objects")
    scenes = set(D.caption_vocabulary("scenes"))
    assert sorted(used["one_object"] | used["two_objects"] | scenes) == D.caption_vocabulary()
    assert len(D.caption_vocabulary()) < 150
    with pytest.raises(ValueError, match="Unknown captioned-shapes config 'three'"):
        D.caption_vocabulary("three")


def test_every_caption_word_is_one_clip_token(one, two):
    tokenizer = build_clip_tokenizer(D.caption_vocabulary())
    for dsd in (one, two):
        for captions in dsd["train"]["captions"]:
            for caption in captions:
                words = caption.split()
                assert tokenizer.tokenize(caption) == [w + "</w>" for w in words]


def test_one_object_captions_name_the_attributes_drawn():
    # 300 images re-described from their pixels alone, against every caption's words and the attribute columns
    shapes_checked = Counter()
    for index in range(300):
        example = D.generate_example(0, "one_object", "train", index)
        pixels = np.asarray(example["image"], dtype=float)
        seen = _describe(pixels, _foreground(pixels))
        seen["position"] = _grid_position(seen["cx"], seen["cy"])
        for caption in example["captions"]:
            said = O.parse_caption(caption)
            for key in ("color", "size", "position", "shape"):
                if key in seen:
                    assert said[key] == seen[key], (example["image_id"], caption, key, seen)
            assert said == {k: example[k] for k in said}
        shapes_checked[seen.get("shape")] += 1
    assert all(shapes_checked[s] > 20 for s in O.SHAPE_NAMES)  # shape was checked on every shape, not only one


def test_two_object_captions_name_both_objects_and_their_relation():
    for index in range(200):
        example = D.generate_example(0, "two_objects", "train", index)
        pixels = np.asarray(example["image"], dtype=float)
        mask = _foreground(pixels)
        ys, xs = np.nonzero(mask)
        horizontal = np.ptp(xs) > np.ptp(ys) + 4  # two objects side by side spread wider than tall
        halves = np.zeros_like(mask), np.zeros_like(mask)
        if horizontal:
            halves[0][:, :16], halves[1][:, 16:] = mask[:, :16], mask[:, 16:]
        else:
            halves[0][:16], halves[1][16:] = mask[:16], mask[16:]
        first, second = (_describe(pixels, half) for half in halves)  # left/top, right/bottom
        for caption in example["captions"]:
            said = O.parse_caption(caption, num_objects=2)
            named = [{k: said[f"{k}_{i}"] for k in ("color", "size", "shape")} for i in (1, 2)]
            if said["relation"] in ("right of", "below"):
                named.reverse()
            assert (said["relation"] in ("left of", "right of")) == horizontal, (caption, example["image_id"])
            for drawn, words in zip((first, second), named):
                assert all(words[k] == drawn[k] for k in ("color", "size", "shape") if k in drawn), (caption, drawn)


def test_parse_caption_rejects_captions_without_the_attributes():
    with pytest.raises(ValueError, match="exactly one of each attribute"):
        O.parse_caption("a red circle in the center")  # no size
    with pytest.raises(ValueError, match="exactly one of each attribute"):
        O.parse_caption("a big red blue circle in the center")
    with pytest.raises(ValueError, match="relation"):
        O.parse_caption("a big red circle and a small blue box", num_objects=2)
    with pytest.raises(ValueError, match="needs a relation"):
        O.caption_shapes([O.ShapeObject("circle", "red", "large", "left")] * 2, relation="near")


def test_builder_and_helper_give_the_normalized_form(tmp_path, one, two):
    builder = D.CaptionedShapes(config_name="two_objects", cache_dir=str(tmp_path), num_train=4, num_val=1, num_test=2)
    builder.download_and_prepare()
    built = builder.as_dataset()
    assert builder.config_id.startswith("two_objects-") and builder.config.num_train == 4
    assert {k: built[k].num_rows for k in built} == {"train": 4, "validation": 1, "test": 2}
    for dsd, extra in ((one, {"shape", "color", "size", "position"}), (two, {"relation", "shape_1", "position_2"})):
        for name, split in dsd.items():
            validate_normalized(split, name=name)
            assert all(split.features[k] == v for k, v in NORMALIZED_FEATURES.items())
            assert extra <= set(split.column_names)
            assert split[0]["image_id"] == f"{name}-00000" and split[0]["image"].size == (32, 32)
    assert two["train"].features["relation"].names == list(O.RELATIONS)
    assert one["train"].cache_files == []  # cache_dir=None: generated in a temporary folder, held in memory
    row = two["test"][0]
    labels = _labels(row, two["test"].features)
    assert O.parse_caption(row["captions"][0], 2)["relation"] in (labels["relation"], O._INVERSE[labels["relation"]])


def test_bad_configuration_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="num_train must be a positive integer, got 0"):
        D.CaptionedShapes(cache_dir=str(tmp_path), num_train=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        D.load_captioned_shapes(seed=-1, num_train=2)
    with pytest.raises(ValueError, match="Unknown captioned-shapes config 'three_objects'"):
        D.load_captioned_shapes("three_objects")
    with pytest.raises(ValueError, match="not found"):
        D.CaptionedShapes(config_name="three_objects", cache_dir=str(tmp_path))


def test_a_random_100_image_subset_of_the_default_train_split_does_not_cover_the_combinations():
    # attributes of the default train split (seed 0, 5000 images) drawn exactly as the builder draws them
    keys = []
    for index in range(5000):
        objects, _ = O.sample_scene(1, D.example_rng(0, "one_object", "train", index))
        keys.append(D.combination_key(O.scene_attributes(objects, None)))
    subset = np.random.default_rng(0).choice(5000, size=100, replace=False)
    assert len(set(keys)) == D.num_combinations("one_object") == 4 * 6 * 2 * 9
    assert len({keys[i] for i in subset}) < 100 < D.num_combinations("one_object")
    assert D.generate_example(0, "one_object", "train", 4321)["shape"] == keys[4321][0]


def test_statistics_against_hand_computed_values():
    rows = {
        "image": [Image.new("RGB", (32, 32))] * 3,
        "captions": [["a"], ["b"], ["c d"]],
        "image_id": ["0", "1", "2"],
        "shape": ["circle", "circle", "square"],
        "color": ["red"] * 3,
        "size": ["small"] * 3,
        "position": ["top"] * 3,
    }
    features = datasets.Features(
        {**NORMALIZED_FEATURES, **D._attribute_features(1)}  # same columns the builder writes
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    stats = D.shapes_statistics(datasets.DatasetDict({"train": ds, "test": ds}), subset_size=2, seed=0)
    assert stats["splits"]["test"] == {"images": 3, "captions": 3, "combinations": 2}
    assert stats["t2i_r1_ceiling_test"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1) / 3)
    # default_rng(0).choice(3, 2, replace=False) draws rows 1 and 2: a circle and a square, two combinations
    assert stats["train_subset_size"] == 2 and stats["train_subset_combinations"] == 2
    assert stats["words_used"] == 4 and stats["vocabulary_size"] == len(D.caption_vocabulary("one_object"))


def test_command_writes_preview_and_statistics(tmp_path, capsys):
    out = tmp_path / "preview"
    argv = ["--config", "one_object", "--seed", "2", "--num_train", "120", "--num_val", "5", "--num_test", "30"]
    assert shapes_main([*argv, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]) == 0
    stats = json.loads((out / "statistics.json").read_text())
    preview = Image.open(out / "preview.png")
    printed = capsys.readouterr().out
    assert preview.size == (4 * 170, 4 * (128 + 8 + 3 * 13 + 6))
    assert {k: v["images"] for k, v in stats["splits"].items()} == {"train": 120, "validation": 5, "test": 30}
    assert stats["seed"] == 2 and stats["possible_combinations"] == 432
    assert stats["train_subset_size"] == 100 and stats["train_subset_combinations"] < 100
    assert len(stats["examples"]) == 3 and len(stats["examples"][0]["captions"]) == 5
    assert "a random 100-image subset of train covers" in printed
    assert all(caption in printed for caption in stats["examples"][2]["captions"])
    assert np.asarray(preview).std() > 20  # images and text were drawn, not a blank canvas


@pytest.mark.parametrize(
    ("old", "homes"),
    [
        ("diffusers_edge.data.shapes", ["diffusers_edge.shapes.dataset", "diffusers_edge.shapes.objects"]),
        ("diffusers_edge.data.scenes", ["diffusers_edge.shapes.scenes"]),
        ("diffusers_edge.data.stack", ["diffusers_edge.shapes.stack"]),
    ],
)
def test_old_module_paths_re_export_every_public_name_of_their_new_homes(old, homes):
    shim = importlib.import_module(old)
    for home in map(importlib.import_module, homes):
        defined = _defined_names(home)
        assert defined and all(getattr(shim, name) is getattr(home, name) for name in defined)
    assert sorted(shim.__all__) == sorted(n for n in vars(shim) if not n.startswith("_"))


def _defined_names(module) -> list[str]:
    """The public names a module's own top-level statements define (not the ones it imports)."""
    names = []
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [target.id for target in targets if isinstance(target, ast.Name)]
    return [name for name in names if not name.startswith("_")]


def test_old_shapes_name_is_the_tuple_of_shape_names():
    from diffusers_edge.data import shapes

    assert shapes.SHAPES is O.SHAPE_NAMES == ("circle", "square", "triangle", "cross")
