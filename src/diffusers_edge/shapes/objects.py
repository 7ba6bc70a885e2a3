"""One or two shapes on a near-black background: the attribute space, rendering, captions and parsing.

The captioned-shapes configs `one_object` and `two_objects` (`diffusers_edge.shapes.dataset`) are drawn from here;
the `scenes` world (`diffusers_edge.shapes.scenes`) reuses the attribute space, the words and the renderer.

Every image gets 5 different captions from varied templates and synonyms (lower-case words, no punctuation), and
every caption word is a single token of
`diffusers_edge.shapes.tokenization.build_clip_tokenizer(caption_vocabulary())`. Colours are chosen far apart in RGB
(no cyan next to blue: an early tiny generator drifted between those; docs/method.md, "The tiny stacks"). Small
seeded jitter in position, size, colour and background keeps every image distinct.

Example:
    >>> objects, relation = sample_scene(1, np.random.default_rng(0))
    >>> parse_caption(caption_shapes(objects, relation)[0]) == scene_attributes(objects, relation)
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_NAMES", "COLORS", "SIZES", "POSITIONS", "RELATIONS", "POSITION_JITTER", "BRIGHTNESS_RANGE", "COLOR_JITTER",
    "BACKGROUND_MAX", "SIZE_WORDS", "SHAPE_WORDS", "POSITION_PHRASES", "RELATION_PHRASES", "BACKGROUND_WORDS",
    "CAPTIONS_PER_IMAGE", "ShapeObject", "render_shapes", "caption_shapes", "parse_caption", "sample_scene",
    "scene_attributes",
]

# ----------------------------------------------------------------------------------------------- attribute space

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# RGB at full brightness; pairwise at least ~145 apart in one channel (no cyan/blue pair: docs/method.md, "The tiny
# stacks").
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
            ("shape", self.shape, SHAPE_NAMES),
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


# ---------------------------------------------------------------------------------------------------- sampling


def sample_scene(num_objects: int, rng: np.random.Generator) -> tuple[list[ShapeObject], str | None]:
    """Draws the objects of one scene (and their relation when there are two), uniformly over the attribute space.

    Example:
        >>> objects, relation = sample_scene(2, np.random.default_rng(0))
        >>> len(objects), relation in RELATIONS
        (2, True)
    """
    def draw_object() -> tuple[str, str, str]:
        return _pick(rng, SHAPE_NAMES), _pick(rng, list(COLORS)), _pick(rng, list(SIZES))

    if num_objects == 1:
        return [ShapeObject(*draw_object(), position=_pick(rng, list(POSITIONS)))], None
    first = draw_object()
    second = draw_object()
    while second == first:  # two identical objects would make "a left of b" and "b left of a" the same caption
        second = draw_object()
    relation = _pick(rng, RELATIONS)
    pos_1, pos_2 = _LAYOUTS[relation][int(rng.integers(3))]
    return [ShapeObject(*first, position=pos_1), ShapeObject(*second, position=pos_2)], relation


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
