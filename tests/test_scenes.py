"""Tests of the `scenes` world (`diffusers_edge.shapes.scenes`) and its captioned-shapes builder config."""

import numpy as np
import pytest

from diffusers_edge.data.format import validate_normalized
from diffusers_edge.shapes import scenes as S
from diffusers_edge.shapes.dataset import (
    caption_vocabulary,
    generate_example,
    load_captioned_shapes,
    num_combinations,
    shapes_statistics,
)
from diffusers_edge.shapes.objects import COLORS, ShapeObject
from diffusers_edge.shapes.tokenization import build_clip_tokenizer

RED_CIRCLE = ShapeObject("circle", "red", "large", "top left")
BLUE_BOX = ShapeObject("square", "blue", "small", "top right")
WHITE_CROSS = ShapeObject("cross", "white", "large", "bottom left")
SCENE = S.Scene((RED_CIRCLE, BLUE_BOX, WHITE_CROSS), "gray")


def _example_scene(example: dict) -> S.Scene:
    return S.scene_from_columns({k: example[k] for k in S.SCENE_LABELS})


@pytest.fixture(scope="module")
def small() -> dict:
    return load_captioned_shapes("scenes", seed=0, num_train=40, num_val=0, num_test=10)


def test_builder_is_deterministic_per_seed_and_seeds_differ(small):
    again = load_captioned_shapes("scenes", seed=0, num_train=40, num_val=0, num_test=10)
    other = load_captioned_shapes("scenes", seed=1, num_train=40, num_val=0, num_test=10)
    for split in ("train", "test"):
        assert small[split]["captions"] == again[split]["captions"]
        assert [np.asarray(a).tobytes() for a in small[split]["image"]] == [
            np.asarray(b).tobytes() for b in again[split]["image"]
        ]
    assert small["train"]["captions"] != other["train"]["captions"]
    validate_normalized(small["train"])
    assert small["train"].features["shape_top_left"].names == ["none", "circle", "square", "triangle", "cross"]


def test_every_caption_parses_and_each_claim_holds_for_its_own_scene():
    kinds = set()
    for index in range(300):
        example = generate_example(0, "scenes", "train", index)
        scene = _example_scene(example)
        assert len(set(example["captions"])) == 5
        for caption in example["captions"]:
            claims = S.parse_claims(caption)
            kinds |= {claim.kind for claim in claims}
            assert all(claim.holds(scene) for claim in claims), (caption, scene)
    assert kinds == set(S.CLAIM_KINDS)


def test_claims_are_false_against_a_scene_that_contradicts_them():
    red, blue = ShapeObject("circle", "red", "large", "top right"), ShapeObject("square", "blue", "small", "top left")
    swapped = S.Scene((blue, red, WHITE_CROSS), "black")
    cases = {  # caption: (true of SCENE, true of swapped)
        "a red circle left of a small blue box": (True, False),
        "a big white cross below a red disk": (True, False),  # swapped: the circle is no longer above the cross
        "three shapes in red blue and white": (True, True),
        "two objects": (False, False),
        "four shapes in red and blue": (False, False),
        "a red circle in the top left corner": (True, False),
        "a small blue square on a gray background": (True, False),
        "a green circle": (False, False),
        "a small red circle": (False, False),
        "there is a blue box and a white cross": (True, True),
    }
    for caption, (in_scene, in_swapped) in cases.items():
        claims = S.parse_claims(caption)
        assert all(c.holds(SCENE) for c in claims) is in_scene, caption
        assert all(c.holds(swapped) for c in claims) is in_swapped, caption


def test_parse_claims_reads_each_kind_and_rejects_unknown_joins():
    claims = S.parse_claims("a big red circle is to the left of a box on a grey background")
    assert claims == [
        S.RelationClaim(S.ObjectSpec("circle", "red", "large"), "left of", S.ObjectSpec("square")),
        S.BackgroundClaim("gray"),
    ]
    assert S.parse_claims("four objects in white and purple") == [
        S.CountClaim(4),
        S.ColorsClaim(frozenset({"white", "purple"})),
    ]
    assert S.parse_claims("a tiny plus sign in the lower right corner") == [
        S.ObjectClaim(S.ObjectSpec("cross", None, "small", "bottom right"))
    ]
    with pytest.raises(ValueError, match="joins two objects with 'beside'"):
        S.parse_claims("a red circle beside a blue box")
    with pytest.raises(ValueError, match="makes no claim"):
        S.parse_claims("a picture")


def test_claim_accuracy_against_hand_counted_claims():
    captions = ["a red circle left of a blue box", "two shapes on a gray background", "a picture"]
    scores = S.claim_accuracy(captions, [SCENE, SCENE, SCENE])
    # claims: relation (true); count 2 (false: three objects), background gray (true); one unparsed caption
    assert scores == {"all": 50.0, "relation": 100.0, "count": 0.0, "background": 100.0, "unparsed": 0.0}
    with pytest.raises(ValueError, match="2 captions but 1 scenes"):
        S.claim_accuracy(captions[:2], [SCENE])


def test_columns_round_trip_and_reject_half_empty_cells():
    columns = S.scene_columns(SCENE)
    assert columns["shape_bottom_right"] == columns["color_bottom_right"] == "none"
    assert S.scene_from_columns(columns) == SCENE
    with pytest.raises(ValueError, match="without a colour or size"):
        S.scene_from_columns(columns | {"color_top_left": "none"})
    with pytest.raises(ValueError, match="distinct cells"):
        S.Scene((RED_CIRCLE, RED_CIRCLE), "black")
    with pytest.raises(ValueError, match="Unknown background"):
        S.Scene((RED_CIRCLE,), "pink")


def test_pixels_show_each_object_in_its_cell_with_its_colour():
    """Read back from pixels, independently of the renderer: each quadrant holds foreground iff its cell is
    occupied, and the brightest foreground pixels there have the object's hue."""
    for index in range(60):
        example = generate_example(0, "scenes", "test", index)
        scene = _example_scene(example)
        pixels = np.asarray(example["image"], dtype=float)
        background = np.median(pixels[[0, 0, -1, -1], [0, -1, 0, -1]], axis=0)
        for cell, (top, left) in zip(S.GRID_CELLS, ((0, 0), (0, 16), (16, 0), (16, 16))):
            quadrant = pixels[top : top + 16, left : left + 16]
            foreground = np.abs(quadrant - background).max(-1) > 60
            obj = scene.at(cell)
            assert foreground.any() == (obj is not None), (index, cell)
            if obj is not None:
                mean = quadrant[foreground].mean(0)
                chroma = mean / mean.max()
                nearest = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) / max(COLORS[c]) - chroma).sum())
                assert nearest == obj.color, (index, cell)


def test_no_caption_describes_the_whole_scene_and_five_cover_most_of_it():
    covered = []
    for index in range(200):
        example = generate_example(0, "scenes", "train", index)
        scene = _example_scene(example)
        named = set()
        for caption in example["captions"]:
            claims = S.parse_claims(caption)
            specs = [c.spec for c in claims if c.kind == "object"]
            specs += [s for c in claims if c.kind == "relation" for s in (c.first, c.second)]
            complete = [s for s in specs if None not in (s.color, s.size, s.cell)]
            assert len(complete) < len(scene.objects), caption  # never every object fully described
            named |= {(s.shape, s.color) for s in specs if s.color is not None}
        covered.append(len(named & {(o.shape, o.color) for o in scene.objects}) / len(scene.objects))
    assert np.mean(covered) > 0.85  # measured: 89% of objects are named with their shape and colour (seed 0)


def test_vocabulary_is_the_words_used_and_each_is_one_clip_token():
    used = {w for i in range(400) for c in generate_example(0, "scenes", "train", i)["captions"] for w in c.split()}
    vocabulary = caption_vocabulary("scenes")
    assert sorted(used) == vocabulary
    tokenizer = build_clip_tokenizer(vocabulary)
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in vocabulary)


def test_statistics_and_combination_count():
    objects = 4 * 6 * 2
    layouts = 6 * objects**2 + 4 * objects**3 + objects**4
    assert num_combinations("scenes") == 3 * layouts
    stats = shapes_statistics(load_captioned_shapes("scenes", num_train=30, num_val=0, num_test=10), "scenes")
    assert stats["splits"]["train"]["combinations"] == 30  # millions of scenes: no two alike
    assert stats["t2i_r1_ceiling_test"] == 100.0


def test_canonical_render_puts_each_object_on_its_cell():
    image = S.render_scene(SCENE)
    assert image.getpixel((8, 8)) == (220, 40, 40)  # red circle centred on the top-left cell
    assert image.getpixel((24, 8)) == (45, 85, 235)  # small blue box on the top right
    assert image.getpixel((24, 24)) == (80, 80, 80)  # empty cell: gray background


def test_unsaid_variety_against_hand_computed_entropies():
    red = ShapeObject("circle", "red", "large", "top left")
    blue = ShapeObject("square", "blue", "small", "top right")
    one_colour = S.Scene((red, ShapeObject("square", "red", "small", "top right")), "black")
    two_colours = S.Scene((red, blue), "gray")
    prompts = ["a red circle", "a red circle", "two shapes on a gray background", "three shapes in red and blue"]
    generated = [one_colour, one_colour, one_colour, one_colour]
    real = [two_colours, S.Scene((red, blue), "black"), two_colours, S.Scene((red, blue, WHITE_CROSS), "brown")]
    variety = S.unsaid_variety(prompts, generated, real)
    # background unsaid in prompts 0, 1, 3: generated black x3 (0 bits), real gray/black/brown (log2 3 bits)
    assert variety["background_entropy_generated"] == 0.0
    assert variety["background_entropy_real"] == pytest.approx(np.log2(3))
    # count unsaid in prompts 0, 1: both 2 objects everywhere
    assert variety["count_entropy_real"] == variety["count_entropy_generated"] == 0.0
    # colours unsaid in prompts 0-2: generated paints everything red (1 colour), real has 2
    assert (variety["colors_per_scene_generated"], variety["colors_per_scene_real"]) == (1.0, 2.0)
    assert variety["distinct_scenes_generated"] == 25.0 and variety["distinct_scenes_real"] == 75.0  # 3 of 4
    with pytest.raises(ValueError, match="as many prompts"):
        S.unsaid_variety(prompts, generated[:2], real)
