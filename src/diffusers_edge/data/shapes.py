"""The embedded captioned-shapes dataset: procedurally drawn 32x32 images with 5 captions each, like Flickr30K.

It is the default data of diffusers-edge: small enough that a tiny CLIP, a tiny diffusion model and a retrieval
student learn it on a laptop CPU in minutes (REFERENCE.md section 5 measured such a stack), structured enough that
retrieval numbers mean something (a random 100-pair subset cannot cover the attribute space), and fully
deterministic from a seed.

Two builder configs:

- `one_object` (default): one shape on a near-black background. Attributes: shape (4) x colour (6) x size (2) x
  position (3x3 grid, 9) = 432 combinations. Captions mention all four attributes.
- `two_objects`: two shapes side by side or one above the other; captions describe both objects (shape, colour,
  size) and their spatial relation ("a big red circle left of a small blue square"): 48 x 47 x 2 = 4512 scenes.

Every image gets 5 different captions from varied templates and synonyms (lower-case words, no punctuation), and
every caption word is a single token of `diffusers_edge.tokenization.build_clip_tokenizer(caption_vocabulary())`.
Colours are chosen far apart in RGB (no cyan next to blue: the tiny generator of REFERENCE.md section 5 drifted
between those). Small seeded jitter in position, size, colour and background keeps every image distinct.

Instance-level ties: images with the same attribute combination get interchangeable captions, so even a model that
gets every attribute right scores at most about `mean(1 / images sharing the combination)` text-to-image R@1
(REFERENCE.md section 5: 43% there); `shapes_statistics` reports that ceiling for the test split.

Example:
    >>> dsd = load_captioned_shapes(num_train=8, num_val=2, num_test=2)
    >>> dsd["train"][0]["captions"][0]  # doctest: +SKIP
    'in the lower left corner there is a big yellow triangle'
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw

from .format import CAPTIONS_COLUMN, IMAGE_COLUMN, IMAGE_ID_COLUMN

# ----------------------------------------------------------------------------------------------- attribute space

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# RGB at full brightness; pairwise at least ~145 apart in one channel (no cyan/blue pair, REFERENCE.md section 5).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (45, 85, 235),
    "yellow": (235, 215, 45),
    "white": (235, 235, 235),
    "purple": (190, 60, 220),
}
# Object extent in pixels at 32 px (scaled with the image size): (min, max) of the seeded uniform draw. A small
# square (<= 7.5 px, <= 57 px^2) never covers as many pixels as a large triangle (>= 13 px, >= 84 px^2).
SIZES: dict[str, tuple[float, float]] = {"small": (6.5, 7.5), "large": (13.0, 14.0)}
# 3x3 grid of centres, as fractions of the image side; 8.5 and 23.5 px at 32 px keep a large object inside the
# image and two large neighbours (left/right) from overlapping.
_GRID = (8.5 / 32, 0.5, 23.5 / 32)
_POSITION_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
# name -> (x, y) centre as fractions of the image side
POSITIONS: dict[str, tuple[float, float]] = {
    name: (x, y) for row, y in zip(_POSITION_NAMES, _GRID) for name, x in zip(row, _GRID)
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# relation of object 1 to object 2 -> (position of object 1, position of object 2) for each of the 3 layouts
_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "left of": (("top left", "top right"), ("left", "right"), ("bottom left", "bottom right")),
    "above": (("top left", "bottom left"), ("top", "bottom"), ("top right", "bottom right")),
}
_LAYOUTS["right of"] = tuple((b, a) for a, b in _LAYOUTS["left of"])
_LAYOUTS["below"] = tuple((b, a) for a, b in _LAYOUTS["above"])

POSITION_JITTER = 0.5  # pixels at 32 px, uniform in [-j, j] on each axis
BRIGHTNESS_RANGE = (0.8, 1.0)  # multiplies the object colour
COLOR_JITTER = 10  # added per channel, uniform in [-j, j]
BACKGROUND_MAX = 20  # background channels uniform in [0, BACKGROUND_MAX)
_SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges

# ------------------------------------------------------------------------------------------------ caption words

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
SHAPE_WORDS = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus sign"),
}
POSITION_PHRASES = {
    "top left": ("at the top left", "in the top left corner", "in the upper left corner", "at the upper left"),
    "top": ("at the top", "at the top center", "near the top edge", "in the top middle"),
    "top right": ("at the top right", "in the top right corner", "in the upper right corner", "at the upper right"),
    "left": ("on the left", "on the left side", "at the middle left", "near the left edge"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "on the right side", "at the middle right", "near the right edge"),
    "bottom left": (
        "at the bottom left",
        "in the bottom left corner",
        "in the lower left corner",
        "at the lower left",
    ),
    "bottom": ("at the bottom", "at the bottom center", "near the bottom edge", "in the bottom middle"),
    "bottom right": (
        "at the bottom right",
        "in the bottom right corner",
        "in the lower right corner",
        "at the lower right",
    ),
}
RELATION_PHRASES = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
BACKGROUND_WORDS = ("black", "dark")
CAPTIONS_PER_IMAGE = 5  # as Flickr30K (Karpathy split): 5 per image

# {size} {color} {shape} {pos} {bg}; every template mentions every attribute, and no two render the same string.
_ONE_OBJECT_TEMPLATES = (
    "a {size} {color} {shape} {pos}",
    "{pos} there is a {size} {color} {shape}",
    "a picture of a {size} {color} {shape} {pos}",
    "a {size} {shape} colored {color} {pos}",
    "an image with a {size} {color} {shape} {pos}",
    "a {size} {color} {shape} {pos} on a {bg} background",
    "{pos} of the image is a {size} {color} {shape}",
    "there is a {size} {color} {shape} {pos}",
)
# {a} / {b}: object 1 / 2 phrases "{size} {color} {shape}"; {rel}: relation of 1 to 2; {inv}: of 2 to 1.
_TWO_OBJECT_TEMPLATES = (
    "a {a} {rel} a {b}",
    "a {b} {inv} a {a}",
    "there is a {a} {rel} a {b}",
    "a picture of a {b} {inv} a {a}",
    "a {a} is {rel} a {b}",
    "an image with a {b} {inv} a {a}",
    "a {a} {rel} a {b} on a {bg} background",
    "two shapes with a {b} {inv} a {a}",
)


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: the attribute names that captions describe.

    Example:
        >>> ShapeObject(shape="circle", color="red", size="large", position="top left")
        ShapeObject(shape='circle', color='red', size='large', position='top left')
    """

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, COLORS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}; choose one of {list(allowed)}.")


# --------------------------------------------------------------------------------------------------- rendering


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, extent: float, fill: tuple) -> None:
    """Draws `shape` whose bounding box is `extent` wide and high, centred on (cx, cy)."""
    h = extent / 2
    if shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":  # pointing up, base at the bottom of the box
        draw.polygon(((cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)), fill=fill)
    else:  # cross: a plus sign whose arms are a third of the extent thick
        t = extent / 6
        draw.rectangle((cx - h, cy - t, cx + h, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - h, cx + t, cy + h), fill=fill)


def render_shapes(
    objects: Sequence[ShapeObject],
    image_size: int = 32,
    rng: np.random.Generator | None = None,
    background: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Draws `objects` on a `background` colour and returns an RGB image of `image_size` pixels a side.

    With `rng`, the background (each channel plus up to `BACKGROUND_MAX`), each object's centre (+-0.5 px),
    extent (within its size range), brightness and per-channel colour are jittered from it; without, the scene is
    drawn canonically (exact background and colours, mid-range extent, grid centres). Geometry scales with
    `image_size` (given in pixels at 32 px).

    Example:
        >>> image = render_shapes([ShapeObject("square", "red", "large", "center")])
        >>> image.size, image.getpixel((16, 16)), image.getpixel((0, 0))
        ((32, 32), (220, 40, 40), (0, 0, 0))
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels to draw the shapes apart, got {image_size}.")
    scale = image_size / 32 * _SUPERSAMPLE
    side = image_size * _SUPERSAMPLE
    if rng is not None:
        background = tuple(int(b + v) for b, v in zip(background, rng.integers(0, BACKGROUND_MAX, size=3)))
    canvas = Image.new("RGB", (side, side), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        low, high = SIZES[obj.size]
        color = np.asarray(COLORS[obj.color], dtype=float)
        fx, fy = POSITIONS[obj.position]
        cx, cy = fx * side, fy * side
        if rng is None:
            extent = (low + high) / 2
        else:
            cx, cy = (np.array([cx, cy]) + rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2) * scale).tolist()
            extent = rng.uniform(low, high)
            color = color * rng.uniform(*BRIGHTNESS_RANGE) + rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=3)
        fill = tuple(int(v) for v in np.clip(np.rint(color), 0, 255))
        _draw_shape(draw, obj.shape, cx, cy, extent * scale, fill)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


# ---------------------------------------------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(obj: ShapeObject, rng: np.random.Generator) -> str:
    return f"{_pick(rng, SIZE_WORDS[obj.size])} {obj.color} {_pick(rng, SHAPE_WORDS[obj.shape])}"


def caption_shapes(
    objects: Sequence[ShapeObject],
    relation: str | None = None,
    rng: np.random.Generator | None = None,
    num_captions: int = CAPTIONS_PER_IMAGE,
) -> list[str]:
    """Writes `num_captions` different captions of a scene, each mentioning every attribute drawn.

    One object: its size, colour, shape and position. Two objects: both objects' size, colour and shape and
    `relation` (of the first object to the second, one of `RELATIONS`). Templates are drawn without replacement
    and synonyms at random from `rng` (a fixed default generator when `None`).

    Example:
        >>> caption_shapes([ShapeObject("circle", "red", "large", "center")], rng=np.random.default_rng(0))[0]
        'an image with a big red disk in the middle'
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if len(objects) == 1:
        templates = _ONE_OBJECT_TEMPLATES
        if relation is not None:
            raise ValueError(f"A one-object scene has no relation, got {relation!r}.")
    elif len(objects) == 2:
        templates = _TWO_OBJECT_TEMPLATES
        if relation not in RELATIONS:
            raise ValueError(f"A two-object scene needs a relation among {list(RELATIONS)}, got {relation!r}.")
    else:
        raise ValueError(f"Scenes have one or two objects, got {len(objects)}.")
    if not 1 <= num_captions <= len(templates):
        raise ValueError(f"num_captions must be in [1, {len(templates)}], got {num_captions}.")
    captions = []
    for t in rng.choice(len(templates), size=num_captions, replace=False):
        words: dict[str, str] = {"bg": _pick(rng, BACKGROUND_WORDS)}
        if len(objects) == 1:
            (obj,) = objects
            words |= {"size": _pick(rng, SIZE_WORDS[obj.size]), "color": obj.color}
            words |= {"shape": _pick(rng, SHAPE_WORDS[obj.shape]), "pos": _pick(rng, POSITION_PHRASES[obj.position])}
        else:
            words |= {"a": _object_phrase(objects[0], rng), "b": _object_phrase(objects[1], rng)}
            words |= {"rel": _pick(rng, RELATION_PHRASES[relation])}
            words |= {"inv": _pick(rng, RELATION_PHRASES[_INVERSE[relation]])}
        captions.append(templates[int(t)].format(**words))
    return captions


def caption_vocabulary(config_name: str | None = None) -> list[str]:
    """Every word that a caption of `config_name` (`None`: any config) can contain, sorted.

    Example:
        >>> words = caption_vocabulary("one_object")
        >>> "yellow" in words, "left" in words, "above" in words
        (True, True, False)
    """
    texts: list[str] = list(BACKGROUND_WORDS) + list(COLORS)
    texts += [w for words in SIZE_WORDS.values() for w in words]
    texts += [w for words in SHAPE_WORDS.values() for w in words]
    names = list(CONFIGS) if config_name is None else [config_name]
    for name in names:
        num_objects = _num_objects(name)
        if num_objects == 0:
            from .scenes import scenes_vocabulary

            texts += scenes_vocabulary()
        elif num_objects == 1:
            texts += list(_ONE_OBJECT_TEMPLATES) + [p for ps in POSITION_PHRASES.values() for p in ps]
        else:
            texts += list(_TWO_OBJECT_TEMPLATES) + [p for ps in RELATION_PHRASES.values() for p in ps]
    words = {w for text in texts for w in re.sub(r"\{\w+\}", " ", text).split()}
    return sorted(words)


def parse_caption(caption: str, num_objects: int = 1) -> dict[str, str]:
    """Reads the attributes back from a caption written by `caption_shapes` (the inverse of captioning).

    One object: `{"shape", "color", "size", "position"}`. Two objects: `{"shape_1", "color_1", "size_1",
    "shape_2", ..., "relation"}` for the objects in the order the caption names them. Useful to score generated
    images against their prompt. Raises `ValueError` when an attribute is missing or ambiguous.

    Example:
        >>> parse_caption("a tiny green plus sign in the upper left corner")
        {'shape': 'cross', 'color': 'green', 'size': 'small', 'position': 'top left'}
    """
    if num_objects == 1:
        found = {
            "shape": _find_all(caption, SHAPE_WORDS),
            "color": _find_all(caption, {c: (c,) for c in COLORS}),
            "size": _find_all(caption, SIZE_WORDS),
            "position": _find_all(caption, POSITION_PHRASES),
        }
        bad = {k: v for k, v in found.items() if len(v) != 1}
        if bad:
            raise ValueError(f"Caption {caption!r} does not name exactly one of each attribute: {bad}.")
        return {k: v[0] for k, v in found.items()}
    if num_objects != 2:
        raise ValueError(f"Scenes have one or two objects, got {num_objects}.")
    size = "|".join(w for ws in SIZE_WORDS.values() for w in ws)
    shape = "|".join(w for ws in SHAPE_WORDS.values() for w in ws)
    obj = rf"\b({size}) ({'|'.join(COLORS)}) ({shape})\b"
    relation = "|".join(sorted((p for ps in RELATION_PHRASES.values() for p in ps), key=len, reverse=True))
    match = re.search(rf"{obj} (?:is )?({relation}) a {obj}", caption)
    if match is None:
        raise ValueError(f"Caption {caption!r} does not read as '<object> <relation> a <object>'.")
    g = match.groups()
    parsed = {"relation": _lookup(g[3], RELATION_PHRASES)}
    for i, (z, c, s) in ((1, g[0:3]), (2, g[4:7])):
        parsed |= {f"shape_{i}": _lookup(s, SHAPE_WORDS), f"color_{i}": c, f"size_{i}": _lookup(z, SIZE_WORDS)}
    return parsed


def _lookup(word: str, table: dict[str, tuple[str, ...]]) -> str:
    return next(key for key, words in table.items() if word in words)


def _find_all(caption: str, table: dict[str, tuple[str, ...]]) -> list[str]:
    """Attribute values whose phrase occurs in `caption`, longest phrases first so 'at the top left' is not 'top'."""
    phrases = sorted(((p, k) for k, ps in table.items() for p in ps), key=lambda pk: len(pk[0]), reverse=True)
    found, text = [], f" {caption} "
    for phrase, key in phrases:
        if f" {phrase} " in text:
            found.append(key)
            text = text.replace(f" {phrase} ", " | ")
    return sorted(set(found))


# ------------------------------------------------------------------------------------------------- the dataset

CONFIG_NUM_OBJECTS = {"one_object": 1, "two_objects": 2, "scenes": 0}
"""Objects per image of each config; 0 marks `scenes` (2-4 objects on a grid, `diffusers_edge.data.scenes`)."""
CONFIGS = tuple(CONFIG_NUM_OBJECTS)
SPLITS = ("train", "validation", "test")  # Karpathy's train / val / test


def _num_objects(config_name: str) -> int:
    if config_name not in CONFIG_NUM_OBJECTS:
        raise ValueError(f"Unknown captioned-shapes config {config_name!r}; choose one of {list(CONFIG_NUM_OBJECTS)}.")
    return CONFIG_NUM_OBJECTS[config_name]


def num_combinations(config_name: str = "one_object") -> int:
    """How many attribute combinations captions can tell apart (432 for `one_object`, 4512 for `two_objects`).

    Example:
        >>> num_combinations("one_object")
        432
    """
    objects = len(SHAPES) * len(COLORS) * len(SIZES)
    if _num_objects(config_name) == 0:
        from .scenes import BACKGROUNDS, GRID_CELLS, NUM_OBJECTS

        layouts = sum(math.comb(len(GRID_CELLS), n) * objects**n for n in NUM_OBJECTS)
        return layouts * len(BACKGROUNDS)
    if _num_objects(config_name) == 1:
        return objects * len(POSITIONS)
    return objects * (objects - 1) * 2  # ordered (left/top, right/bottom) pairs of distinct objects, 2 axes


def example_rng(seed: int, config_name: str, split: str, index: int) -> np.random.Generator:
    """The generator that draws example `index` of `split`: independent of split sizes and of other splits.

    Example:
        >>> a, b = example_rng(0, "one_object", "train", 3), example_rng(0, "one_object", "train", 3)
        >>> int(a.integers(1000)) == int(b.integers(1000))
        True
    """
    keys = (CONFIGS.index(config_name) + 1, SPLITS.index(split), index)  # one_object / two_objects: 1 / 2 as ever
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=keys))


def sample_scene(num_objects: int, rng: np.random.Generator) -> tuple[list[ShapeObject], str | None]:
    """Draws the objects of one scene (and their relation when there are two), uniformly over the attribute space.

    Example:
        >>> objects, relation = sample_scene(2, np.random.default_rng(0))
        >>> len(objects), relation in RELATIONS
        (2, True)
    """
    def draw_object() -> tuple[str, str, str]:
        return _pick(rng, SHAPES), _pick(rng, list(COLORS)), _pick(rng, list(SIZES))

    if num_objects == 1:
        return [ShapeObject(*draw_object(), position=_pick(rng, list(POSITIONS)))], None
    first = draw_object()
    second = draw_object()
    while second == first:  # two identical objects would make "a left of b" and "b left of a" the same caption
        second = draw_object()
    relation = _pick(rng, RELATIONS)
    pos_1, pos_2 = _LAYOUTS[relation][int(rng.integers(3))]
    return [ShapeObject(*first, position=pos_1), ShapeObject(*second, position=pos_2)], relation


def combination_key(example: dict[str, Any], num_objects: int = 1) -> tuple:
    """The attributes captions can tell apart, as a hashable key; ties in retrieval are images with equal keys.

    `example` holds attribute names (as strings). Two objects: the scene read left-to-right or top-to-bottom, so
    "a left of b" and "b right of a" give the same key (row/column of the pair is not captioned).

    Example:
        >>> combination_key({"shape": "circle", "color": "red", "size": "small", "position": "top"})
        ('circle', 'red', 'small', 'top')
    """
    if num_objects == 0:
        from .scenes import SCENE_LABELS

        return tuple(example[k] for k in SCENE_LABELS)
    if num_objects == 1:
        return tuple(example[k] for k in ("shape", "color", "size", "position"))
    objs = [tuple(example[f"{k}_{i}"] for k in ("shape", "color", "size")) for i in (1, 2)]
    relation = example["relation"]
    if relation in ("right of", "below"):
        objs.reverse()
    axis = "horizontal" if relation in ("left of", "right of") else "vertical"
    return (*objs[0], *objs[1], axis)


def _attribute_features(num_objects: int) -> dict[str, datasets.ClassLabel]:
    if num_objects == 0:
        from .scenes import SCENE_LABELS

        return {k: datasets.ClassLabel(names=list(v)) for k, v in SCENE_LABELS.items()}
    labels = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
    if num_objects == 1:
        return {k: datasets.ClassLabel(names=list(v)) for k, v in labels.items()}
    features = {f"{k}_{i}": datasets.ClassLabel(names=list(v)) for i in (1, 2) for k, v in labels.items()}
    return features | {"relation": datasets.ClassLabel(names=list(RELATIONS))}


def scene_attributes(objects: Sequence[ShapeObject], relation: str | None) -> dict[str, str]:
    """The attribute columns of a scene, as strings (`shape`, ... or `shape_1`, ..., `relation`).

    Example:
        >>> scene_attributes([ShapeObject("circle", "red", "small", "top")], None)
        {'shape': 'circle', 'color': 'red', 'size': 'small', 'position': 'top'}
    """
    fields = ("shape", "color", "size", "position")
    if len(objects) == 1:
        return {k: getattr(objects[0], k) for k in fields}
    columns = {f"{k}_{i}": getattr(obj, k) for i, obj in enumerate(objects, start=1) for k in fields}
    return columns | {"relation": relation}


def generate_example(
    seed: int, config_name: str, split: str, index: int, image_size: int = 32
) -> dict[str, Any]:
    """Example `index` of `split`: image, 5 captions, image id and attribute columns (strings).

    Example:
        >>> ex = generate_example(0, "one_object", "test", 0)
        >>> ex["image_id"], len(ex["captions"]), ex["image"].size
        ('test-00000', 5, (32, 32))
    """
    rng = example_rng(seed, config_name, split, index)
    if _num_objects(config_name) == 0:
        from . import scenes

        scene = scenes.sample_scene(rng)
        image = scenes.render_scene(scene, image_size=image_size, rng=rng)
        captions = scenes.caption_scene(scene, rng)
        return {IMAGE_COLUMN: image, CAPTIONS_COLUMN: captions, IMAGE_ID_COLUMN: f"{split}-{index:05d}"} | (
            scenes.scene_columns(scene)
        )
    objects, relation = sample_scene(_num_objects(config_name), rng)
    image = render_shapes(objects, image_size=image_size, rng=rng)
    captions = caption_shapes(objects, relation, rng=rng)
    return {
        IMAGE_COLUMN: image,
        CAPTIONS_COLUMN: captions,
        IMAGE_ID_COLUMN: f"{split}-{index:05d}",
        **scene_attributes(objects, relation),
    }


@dataclass
class CaptionedShapesConfig(datasets.BuilderConfig):
    """A captioned-shapes configuration: number of objects, seed, split sizes and image side in pixels.

    Example:
        >>> CaptionedShapesConfig(name="one_object", num_objects=1, num_train=100).num_train
        100
    """

    num_objects: int = 1
    seed: int = 0
    num_train: int = 5000
    num_val: int = 500
    num_test: int = 1000
    image_size: int = 32

    def check(self) -> None:
        """Raises `ValueError` naming the first invalid field."""
        if self.num_objects not in (0, 1, 2):
            raise ValueError(f"num_objects must be 1, 2 or 0 (scenes), got {self.num_objects!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.num_train, int) or self.num_train < 1:
            raise ValueError(f"num_train must be a positive integer, got {self.num_train!r}.")
        for name in ("num_val", "num_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {self.image_size!r}.")


def _source_hash() -> str:
    """Hash of this file: a change to the generator invalidates cached copies of the dataset."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class CaptionedShapes(datasets.GeneratorBasedBuilder):
    """The captioned-shapes dataset as a `datasets` builder, used directly (datasets >= 4 has no loading scripts).

    Configs `one_object` (default) and `two_objects`; override `seed`, `num_train`, `num_val`, `num_test`,
    `image_size` as keyword arguments (they become part of the cache folder name, so different seeds or sizes
    never share a cache). The cache folder also carries a hash of this module's source. Splits: `train`,
    `validation`, `test` (a split of size 0 is left out). Features: the normalized form (`image`, `captions`,
    `image_id`) plus ClassLabel attribute columns.

    Example:
        >>> builder = CaptionedShapes(config_name="one_object", cache_dir=tmp, seed=1, num_train=50)  # doctest: +SKIP
        >>> builder.download_and_prepare()  # doctest: +SKIP
        >>> train = builder.as_dataset(split="train")  # doctest: +SKIP
    """

    BUILDER_CONFIG_CLASS = CaptionedShapesConfig
    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIGS = [
        CaptionedShapesConfig(
            name="one_object",
            num_objects=1,
            version=VERSION,
            description="One shape on a near-black background; captions name shape, colour, size and position.",
        ),
        CaptionedShapesConfig(
            name="two_objects",
            num_objects=2,
            version=VERSION,
            description="Two shapes; captions name both objects and their spatial relation (left of, above, ...).",
        ),
        CaptionedShapesConfig(
            name="scenes",
            num_objects=0,
            version=VERSION,
            description="2-4 shapes on a 2x2 grid and a background; each caption names a part of the scene.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "one_object"
    DEFAULT_WRITER_BATCH_SIZE = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dataset_name", "captioned_shapes")
        kwargs.setdefault("hash", _source_hash())
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        self.config.check()
        features = {
            IMAGE_COLUMN: datasets.Image(),
            CAPTIONS_COLUMN: datasets.List(datasets.Value("string")),
            IMAGE_ID_COLUMN: datasets.Value("string"),
        }
        return datasets.DatasetInfo(
            description=self.config.description,
            features=datasets.Features(features | _attribute_features(self.config.num_objects)),
            license="apache-2.0",
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        sizes = {"train": self.config.num_train, "validation": self.config.num_val, "test": self.config.num_test}
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "num_examples": n})
            for split, n in sizes.items()
            if n > 0
        ]

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[int, dict[str, Any]]]:
        config_name = {n: name for name, n in CONFIG_NUM_OBJECTS.items()}[self.config.num_objects]
        for index in range(num_examples):
            yield index, generate_example(self.config.seed, config_name, split, index, self.config.image_size)


def load_captioned_shapes(
    config_name: str = "one_object",
    seed: int = 0,
    num_train: int = 5000,
    num_val: int = 500,
    num_test: int = 1000,
    cache_dir: str | Path | None = None,
    image_size: int = 32,
) -> datasets.DatasetDict:
    """Builds the captioned-shapes dataset and returns its splits (`train`, `validation`, `test`).

    With `cache_dir`, the Arrow files are written there (and reused by a later call with the same arguments);
    with `None` they are generated in a temporary folder, loaded into memory and the folder is removed.

    Example:
        >>> dsd = load_captioned_shapes(seed=0, num_train=10, num_val=2, num_test=4)
        >>> dsd["train"].num_rows, dsd["test"].features["color"].names[:3]
        (10, ['red', 'green', 'blue'])
    """
    _num_objects(config_name)
    kwargs = {"seed": seed, "num_train": num_train, "num_val": num_val, "num_test": num_test}
    kwargs["image_size"] = image_size
    if cache_dir is not None:
        builder = CaptionedShapes(config_name=config_name, cache_dir=str(cache_dir), **kwargs)
        builder.download_and_prepare()
        return builder.as_dataset()
    with tempfile.TemporaryDirectory(prefix="captioned-shapes-") as tmp:
        builder = CaptionedShapes(config_name=config_name, cache_dir=tmp, **kwargs)
        builder.download_and_prepare()
        return builder.as_dataset(in_memory=True)


def shapes_statistics(
    dataset: datasets.DatasetDict, config_name: str = "one_object", subset_size: int = 100, seed: int = 0
) -> dict[str, Any]:
    """Split sizes, attribute coverage and caption vocabulary of a captioned-shapes `DatasetDict`.

    `train_subset_combinations` counts the combinations a random `subset_size`-image subset of train covers (what a
    random coreset of that many pairs could show a student). `t2i_r1_ceiling_test` is the mean over test images of
    1 / (test images sharing its combination): the text-to-image R@1 of a model that gets every attribute right
    and breaks ties at random.

    Example:
        >>> stats = shapes_statistics(load_captioned_shapes(num_train=20, num_val=2, num_test=5))
        >>> stats["splits"]["train"]["images"], stats["possible_combinations"]
        (20, 432)
    """
    num_objects = _num_objects(config_name)
    keys = {split: _split_keys(ds, num_objects) for split, ds in dataset.items()}
    words = {w for ds in dataset.values() for caps in ds[CAPTIONS_COLUMN] for c in caps for w in c.split()}
    stats: dict[str, Any] = {"config": config_name, "possible_combinations": num_combinations(config_name)}
    stats["splits"] = {
        split: {
            "images": len(k),
            "captions": sum(len(c) for c in dataset[split][CAPTIONS_COLUMN]),
            "combinations": len(set(k)),
        }
        for split, k in keys.items()
    }
    train = keys["train"]
    chosen = np.random.default_rng(seed).choice(len(train), size=min(subset_size, len(train)), replace=False)
    stats["train_subset_size"] = len(chosen)
    stats["train_subset_combinations"] = len({train[i] for i in chosen})
    if "test" in keys:
        counts = Counter(keys["test"])
        stats["t2i_r1_ceiling_test"] = 100 * float(np.mean([1 / counts[k] for k in keys["test"]]))
    stats["vocabulary_size"] = len(caption_vocabulary(config_name))
    stats["words_used"] = len(words)
    return stats


def _split_keys(ds: datasets.Dataset, num_objects: int) -> list[tuple]:
    names = [c for c in ds.column_names if c not in (IMAGE_COLUMN, CAPTIONS_COLUMN, IMAGE_ID_COLUMN)]
    columns = {c: [ds.features[c].int2str(v) for v in ds[c]] for c in names}
    return [combination_key({c: columns[c][i] for c in names}, num_objects) for i in range(ds.num_rows)]
