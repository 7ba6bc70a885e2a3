"""The `scenes` world of captioned shapes: several objects per image, captions that each describe a part.

A miniature of Flickr30K / COCO as EDGE meets them (docs/demo.md says why each choice is there):

- **Scenes**: 2 to 4 objects on a 2x2 grid (one object per cell), each with a shape (4), colour (6) and size (2),
  on one of three backgrounds (black, gray, brown). Objects keep the sizes of the `one_object` world
  (small 6.5-7.5 px, large 13-14 px at 32 px), which the shapes judge reads at 100%, and a 16 px cell holds a
  large object with a pixel to spare on each side, so every object is recognisable at the stack's 32 px.
- **Captions the Flickr way**: five per image, each naming a part of the scene: one object with some of its
  attributes (and perhaps its cell or the background); two objects and their relation ("a red circle left of a
  small box"); how many objects and which colours ("three shapes in red and blue"); a list of the objects. No
  caption describes the whole scene; the five together cover most of it.
- **Claims**: `parse_claims` reads every claim back from a caption, and `Claim.holds(scene)` decides it against a
  scene. This is the ground truth for the scene judge (`diffusers_edge.shapes.judge.score_claims`) and for captioners.

Relations are direct: "left of" / "right of" hold for two objects in one row, "above" / "below" for two objects in
one column; two objects on a diagonal are only captioned with "and". A claim about an object holds when some
object of the scene has every attribute the phrase names ("a circle" holds for any circle).

Example:
    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng)
    >>> captions = caption_scene(scene, rng)
    >>> all(claim.holds(scene) for caption in captions for claim in parse_claims(caption))
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .objects import (
    COLORS,
    RELATION_PHRASES,
    SHAPE_NAMES,
    SHAPE_WORDS,
    SIZE_WORDS,
    SIZES,
    ShapeObject,
    _lookup,
    _pick,
    render_shapes,
)

__all__ = [
    "GRID_CELLS", "NUM_OBJECTS", "BACKGROUNDS", "NONE", "CELL_PHRASES", "BACKGROUND_PHRASES", "COUNT_WORDS",
    "COUNT_NOUNS", "CAPTION_KINDS", "CELL_COLUMNS", "SCENE_LABELS", "Scene", "ObjectSpec", "ObjectClaim",
    "RelationClaim", "CountClaim", "ColorsClaim", "BackgroundClaim", "Claim", "CLAIM_KINDS", "parse_claims",
    "claim_accuracy", "unsaid_variety", "sample_scene", "render_scene", "caption_scene", "scenes_vocabulary",
    "scene_columns", "scene_from_columns",
]

GRID_CELLS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
"""The 2x2 grid, row by row; the names are `one_object` positions, so `render_shapes` places objects there."""
_ROW = {"top left": 0, "top right": 0, "bottom left": 1, "bottom right": 1}
_COLUMN = {"top left": 0, "top right": 1, "bottom left": 0, "bottom right": 1}
NUM_OBJECTS = (2, 3, 4)
"""How many objects a scene holds (uniform)."""
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (80, 80, 80), "brown": (85, 55, 25)}
"""Background base colours (the renderer adds up to 20 per channel): far from every object colour."""
NONE = "none"
"""The class of an empty cell in every per-cell attribute column."""

CELL_PHRASES = {
    "top left": ("at the top left", "in the top left corner", "in the upper left corner", "at the upper left"),
    "top right": ("at the top right", "in the top right corner", "in the upper right corner", "at the upper right"),
    "bottom left": (
        "at the bottom left",
        "in the bottom left corner",
        "in the lower left corner",
        "at the lower left",
    ),
    "bottom right": (
        "at the bottom right",
        "in the bottom right corner",
        "in the lower right corner",
        "at the lower right",
    ),
}
BACKGROUND_PHRASES = {"black": ("black", "dark"), "gray": ("gray", "grey"), "brown": ("brown",)}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
COUNT_NOUNS = ("shapes", "objects")
CAPTION_KINDS = ("object", "pair", "count", "list", "object")
"""The kind of each of an image's five captions (in shuffled order)."""

_OBJECT_TEMPLATES = ("{obj}{pos}", "there is {obj}{pos}", "a picture of {obj}{pos}", "{obj}{pos} on a {bg} background")
_PAIR_TEMPLATES = ("{a} {rel} {b}", "there is {a} {rel} {b}", "{a} is {rel} {b}")
_UNRELATED_PAIR_TEMPLATES = ("{a} and {b}", "there is {a} and {b}")
_COUNT_TEMPLATES = ("{n} {noun}", "{n} {noun} on a {bg} background", "{n} {noun} in {colors}")
_LIST_TEMPLATES = ("{list}", "{list} on a {bg} background")


CELL_COLUMNS: dict[str, str] = {cell: cell.replace(" ", "_") for cell in GRID_CELLS}
"""Each grid cell -> the suffix of its attribute columns (`shape_top_left`, `color_top_left`, ...)."""

SCENE_LABELS: dict[str, tuple[str, ...]] = {"background": tuple(BACKGROUNDS)}
for _column in CELL_COLUMNS.values():
    SCENE_LABELS[f"shape_{_column}"] = (NONE, *SHAPE_NAMES)
    SCENE_LABELS[f"color_{_column}"] = (NONE, *COLORS)
    SCENE_LABELS[f"size_{_column}"] = (NONE, *SIZES)
"""The attribute columns of a scene (the dataset's ClassLabels and the scene judge's heads) -> their classes."""


@dataclass(frozen=True)
class Scene:
    """Objects on distinct cells of the 2x2 grid (their `position` is the cell) and a background.

    Example:
        >>> Scene((ShapeObject("circle", "red", "large", "top left"),), "gray").background
        'gray'
    """

    objects: tuple[ShapeObject, ...]
    background: str

    def __post_init__(self) -> None:
        cells = [obj.position for obj in self.objects]
        if any(cell not in GRID_CELLS for cell in cells) or len(set(cells)) != len(cells):
            raise ValueError(f"Scene objects need distinct cells among {list(GRID_CELLS)}, got {cells}.")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Unknown background {self.background!r}; choose one of {list(BACKGROUNDS)}.")

    def at(self, cell: str) -> ShapeObject | None:
        """The object on `cell`, or `None` when the cell is empty."""
        return next((obj for obj in self.objects if obj.position == cell), None)


# ------------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says of one object: its shape, and optionally colour, size and cell.

    Example:
        >>> ObjectSpec("circle", color="red").matches(ShapeObject("circle", "red", "small", "top left"))
        True
    """

    shape: str
    color: str | None = None
    size: str | None = None
    cell: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        said = {"shape": self.shape, "color": self.color, "size": self.size, "position": self.cell}
        return all(value is None or getattr(obj, name) == value for name, value in said.items())


@dataclass(frozen=True)
class ObjectClaim:
    """Some object of the scene fits `spec`."""

    spec: ObjectSpec
    kind = "object"

    def holds(self, scene: Scene) -> bool:
        return any(self.spec.matches(obj) for obj in scene.objects)


@dataclass(frozen=True)
class RelationClaim:
    """Two different objects fit `first` and `second`, and the first is directly `relation` the second."""

    first: ObjectSpec
    relation: str
    second: ObjectSpec
    kind = "relation"

    def holds(self, scene: Scene) -> bool:
        return any(
            self.first.matches(a) and self.second.matches(b) and _related(a.position, self.relation, b.position)
            for a in scene.objects
            for b in scene.objects
            if a is not b
        )


@dataclass(frozen=True)
class CountClaim:
    """The scene holds exactly `count` objects."""

    count: int
    kind = "count"

    def holds(self, scene: Scene) -> bool:
        return len(scene.objects) == self.count


@dataclass(frozen=True)
class ColorsClaim:
    """The colours of the scene's objects are exactly `colors`."""

    colors: frozenset[str]
    kind = "colors"

    def holds(self, scene: Scene) -> bool:
        return {obj.color for obj in scene.objects} == self.colors


@dataclass(frozen=True)
class BackgroundClaim:
    """The background is `background`."""

    background: str
    kind = "background"

    def holds(self, scene: Scene) -> bool:
        return scene.background == self.background


Claim = ObjectClaim | RelationClaim | CountClaim | ColorsClaim | BackgroundClaim
CLAIM_KINDS = ("object", "relation", "count", "colors", "background")


def _related(first: str, relation: str, second: str) -> bool:
    if relation in ("left of", "right of"):
        step = _COLUMN[second] - _COLUMN[first]
        return _ROW[first] == _ROW[second] and step == (1 if relation == "left of" else -1)
    step = _ROW[second] - _ROW[first]
    return _COLUMN[first] == _COLUMN[second] and step == (1 if relation == "above" else -1)


def _alternatives(table: Mapping[str, Sequence[str]]) -> str:
    phrases = sorted((p for ps in table.values() for p in ps), key=len, reverse=True)
    return "|".join(re.escape(p) for p in phrases)


_COLOR_TABLE = {c: (c,) for c in COLORS}
_OBJECT = (
    rf"\ba (?:({_alternatives(SIZE_WORDS)}) )?(?:({_alternatives(_COLOR_TABLE)}) )?({_alternatives(SHAPE_WORDS)})"
    rf"(?: ({_alternatives(CELL_PHRASES)}))?(?= |$)"
)
_OBJECT_RE = re.compile(_OBJECT)
_RELATION_RE = re.compile(rf"^(?:is )?({_alternatives(RELATION_PHRASES)})$")
_COUNT_RE = re.compile(rf"\b({'|'.join(COUNT_WORDS.values())}) ({'|'.join(COUNT_NOUNS)})\b")
_COLOR = "|".join(COLORS)
_COLORS_RE = re.compile(rf"\b(?:{'|'.join(COUNT_NOUNS)}) in ((?:{_COLOR})(?: (?:and )?(?:{_COLOR}))*)")
_BACKGROUND_RE = re.compile(rf"\bon a ({_alternatives(BACKGROUND_PHRASES)}) background$")


def parse_claims(caption: str) -> list[Claim]:
    """Reads every claim a `scenes` caption makes (the inverse of `caption_scene`).

    Raises:
        ValueError: the caption makes no claim this grammar knows, or two object phrases are joined by words that
            are neither a relation nor "and".

    Example:
        >>> parse_claims("a big red circle left of a box on a gray background")  # doctest: +NORMALIZE_WHITESPACE
        [RelationClaim(first=ObjectSpec(shape='circle', color='red', size='large', cell=None), relation='left of',
                       second=ObjectSpec(shape='square', color=None, size=None, cell=None)),
         BackgroundClaim(background='gray')]
    """
    claims: list[Claim] = []
    text = caption
    if match := _BACKGROUND_RE.search(text):
        text = text[: match.start()].rstrip()
        background = BackgroundClaim(_lookup(match.group(1), BACKGROUND_PHRASES))
    else:
        background = None
    if match := _COUNT_RE.search(text):
        claims.append(CountClaim(next(n for n, w in COUNT_WORDS.items() if w == match.group(1))))
    if match := _COLORS_RE.search(text):
        claims.append(ColorsClaim(frozenset(match.group(1).replace(" and ", " ").split())))
    matches = list(_OBJECT_RE.finditer(text))
    specs = [
        ObjectSpec(
            shape=_lookup(m.group(3), SHAPE_WORDS),
            color=m.group(2),
            size=None if m.group(1) is None else _lookup(m.group(1), SIZE_WORDS),
            cell=None if m.group(4) is None else _lookup(m.group(4), CELL_PHRASES),
        )
        for m in matches
    ]
    related: set[int] = set()
    for i in range(len(matches) - 1):
        between = text[matches[i].end() : matches[i + 1].start()].strip()
        if relation := _RELATION_RE.match(between):
            claims.append(RelationClaim(specs[i], _lookup(relation.group(1), RELATION_PHRASES), specs[i + 1]))
            related |= {i, i + 1}
        elif between not in ("", "and"):
            raise ValueError(f"Caption {caption!r} joins two objects with {between!r}, not a relation or 'and'.")
    claims += [ObjectClaim(spec) for i, spec in enumerate(specs) if i not in related]
    if background is not None:
        claims.append(background)
    if not claims:
        raise ValueError(f"Caption {caption!r} makes no claim about a scene.")
    return claims


def claim_accuracy(captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """Percent of the claims of `captions[i]` that hold for `scenes[i]`: overall (`"all"`) and per claim kind.

    A caption that does not parse counts as one false claim (kind `"unparsed"`).

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "large", "top left"),), "black")
        >>> claim_accuracy(["a red circle on a gray background"], [scene])
        {'all': 50.0, 'object': 100.0, 'background': 0.0}
    """
    if len(captions) != len(scenes):
        raise ValueError(f"Got {len(captions)} captions but {len(scenes)} scenes.")
    verdicts: dict[str, list[bool]] = {}
    for caption, scene in zip(captions, scenes):
        try:
            for claim in parse_claims(caption):
                verdicts.setdefault(claim.kind, []).append(claim.holds(scene))
        except ValueError:
            verdicts.setdefault("unparsed", []).append(False)
    if not verdicts:
        raise ValueError("No captions to score.")
    everything = [v for vs in verdicts.values() for v in vs]
    kinds = sorted(verdicts, key=lambda k: (CLAIM_KINDS + ("unparsed",)).index(k))
    return {"all": 100.0 * float(np.mean(everything))} | {k: 100.0 * float(np.mean(verdicts[k])) for k in kinds}


def unsaid_variety(prompts: Sequence[str], generated: Sequence[Scene], real: Sequence[Scene]) -> dict[str, float]:
    """How varied what prompts leave unsaid is in `generated[i]` (made from `prompts[i]`), next to `real[i]`.

    Entropy in bits of the background over the prompts that do not name it, and of the number of objects over the
    prompts that do not count them, for the generated scenes and for the real scenes the prompts were written for;
    the mean number of distinct colours per scene over the prompts that do not list the colours (a generator that
    paints unnamed objects in the named colour has fewer); and the percent of distinct scenes. A generator that
    fills unsaid content with stereotypes scores below the real images of the same prompts.

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "large", "top left"),), "black")
        >>> unsaid_variety(["a circle", "a circle"], [scene, scene], [scene, Scene(scene.objects, "gray")])
        ... # doctest: +NORMALIZE_WHITESPACE
        {'background_entropy_generated': 0.0, 'background_entropy_real': 1.0, 'count_entropy_generated': 0.0,
         'count_entropy_real': 0.0, 'colors_per_scene_generated': 1.0, 'colors_per_scene_real': 1.0,
         'distinct_scenes_generated': 50.0, 'distinct_scenes_real': 100.0}
    """
    if not len(prompts) == len(generated) == len(real) > 0:
        raise ValueError(f"Need as many prompts, generated and real scenes (> 0): {len(prompts)}, "
                         f"{len(generated)}, {len(real)}.")
    kinds = [{claim.kind for claim in parse_claims(p)} for p in prompts]
    no_background = [i for i, k in enumerate(kinds) if "background" not in k]
    no_count = [i for i, k in enumerate(kinds) if "count" not in k]
    no_colors = [i for i, k in enumerate(kinds) if "colors" not in k]
    return {
        "background_entropy_generated": _entropy([generated[i].background for i in no_background]),
        "background_entropy_real": _entropy([real[i].background for i in no_background]),
        "count_entropy_generated": _entropy([len(generated[i].objects) for i in no_count]),
        "count_entropy_real": _entropy([len(real[i].objects) for i in no_count]),
        "colors_per_scene_generated": _mean_colors([generated[i] for i in no_colors]),
        "colors_per_scene_real": _mean_colors([real[i] for i in no_colors]),
        "distinct_scenes_generated": 100.0 * len(set(generated)) / len(generated),
        "distinct_scenes_real": 100.0 * len(set(real)) / len(real),
    }


def _mean_colors(scenes: Sequence[Scene]) -> float:
    return float(np.mean([len({obj.color for obj in scene.objects}) for scene in scenes])) if scenes else 0.0


def _entropy(values: Sequence) -> float:
    """Entropy in bits of the empirical distribution of `values` (0.0 for none or one distinct value)."""
    if not values:
        return 0.0
    _, counts = np.unique(np.asarray(values), return_counts=True)
    shares = counts / counts.sum()
    return float(-(shares * np.log2(shares)).sum()) + 0.0  # + 0.0: a single value gives 0.0, not -0.0


# ----------------------------------------------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draws a scene: 2-4 objects on distinct cells, each attribute uniform, and a background.

    Example:
        >>> len(sample_scene(np.random.default_rng(0)).objects) in NUM_OBJECTS
        True
    """
    count = NUM_OBJECTS[int(rng.integers(len(NUM_OBJECTS)))]
    cells = sorted(rng.choice(len(GRID_CELLS), size=count, replace=False).tolist())
    objects = tuple(
        ShapeObject(
            shape=SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))],
            color=list(COLORS)[int(rng.integers(len(COLORS)))],
            size=list(SIZES)[int(rng.integers(len(SIZES)))],
            position=GRID_CELLS[cell],
        )
        for cell in cells
    )
    return Scene(objects, list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))])


def render_scene(scene: Scene, image_size: int = 32, rng: np.random.Generator | None = None) -> Image.Image:
    """Draws `scene` with `render_shapes` on its background colour (jittered from `rng` when given).

    Example:
        >>> scene = Scene((ShapeObject("square", "red", "large", "top left"),), "gray")
        >>> image = render_scene(scene)
        >>> image.getpixel((8, 8)), image.getpixel((24, 24))
        ((220, 40, 40), (80, 80, 80))
    """
    return render_shapes(scene.objects, image_size=image_size, rng=rng, background=BACKGROUNDS[scene.background])


# ----------------------------------------------------------------------------------------------------- captions


def _object_phrase(obj: ShapeObject, rng: np.random.Generator, p_color: float, p_size: float) -> str:
    words = ["a"]
    if rng.random() < p_size:
        words.append(_pick(rng, SIZE_WORDS[obj.size]))
    if rng.random() < p_color:
        words.append(obj.color)
    words.append(_pick(rng, SHAPE_WORDS[obj.shape]))
    return " ".join(words)


def _caption(kind: str, scene: Scene, rng: np.random.Generator) -> str:
    bg = _pick(rng, BACKGROUND_PHRASES[scene.background])
    objects = list(scene.objects)
    if kind == "object":
        obj = objects[int(rng.integers(len(objects)))]
        pos = f" {_pick(rng, CELL_PHRASES[obj.position])}" if rng.random() < 0.7 else ""
        obj_phrase = _object_phrase(obj, rng, p_color=0.85, p_size=0.6)
        return _pick(rng, _OBJECT_TEMPLATES).format(obj=obj_phrase, pos=pos, bg=bg)
    if kind == "pair":
        a, b = (objects[i] for i in rng.choice(len(objects), size=2, replace=False))
        words = {"a": _object_phrase(a, rng, 0.75, 0.4), "b": _object_phrase(b, rng, 0.75, 0.4)}
        relation = next((r for r in RELATION_PHRASES if _related(a.position, r, b.position)), None)
        if relation is None:
            return _pick(rng, _UNRELATED_PAIR_TEMPLATES).format(**words)
        return _pick(rng, _PAIR_TEMPLATES).format(rel=_pick(rng, RELATION_PHRASES[relation]), **words)
    if kind == "count":
        colors = list(dict.fromkeys(objects[i].color for i in rng.permutation(len(objects))))
        listed = colors[0] if len(colors) == 1 else " ".join(colors[:-1]) + f" and {colors[-1]}"
        template = _pick(rng, _COUNT_TEMPLATES)
        return template.format(n=COUNT_WORDS[len(objects)], noun=_pick(rng, COUNT_NOUNS), bg=bg, colors=listed)
    phrases = [_object_phrase(objects[i], rng, 0.75, 0.3) for i in rng.permutation(len(objects))]
    listed = " ".join(phrases[:-1]) + f" and {phrases[-1]}"
    return _pick(rng, _LIST_TEMPLATES).format(list=listed, bg=bg)


def caption_scene(scene: Scene, rng: np.random.Generator, num_captions: int = 5) -> list[str]:
    """Writes `num_captions` different captions of `scene`, one per kind of `CAPTION_KINDS` (shuffled).

    Each caption names a part of the scene (see the module docstring); all of its claims hold for the scene. A kind
    that keeps repeating an earlier caption (a small scene has few distinct ones) gives way to a random kind.

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "large", "top left"),
        ...                ShapeObject("cross", "blue", "small", "top right")), "black")
        >>> len(set(caption_scene(scene, np.random.default_rng(0))))
        5
    """
    if not 1 <= num_captions <= len(CAPTION_KINDS):
        raise ValueError(f"num_captions must be in [1, {len(CAPTION_KINDS)}], got {num_captions}.")
    captions: list[str] = []
    for i in rng.permutation(len(CAPTION_KINDS))[:num_captions]:
        kind = CAPTION_KINDS[int(i)]
        for attempt in range(100):
            caption = _caption(kind if attempt < 10 else _pick(rng, CAPTION_KINDS), scene, rng)
            if caption not in captions:
                break
        else:
            raise RuntimeError(f"Could not write {num_captions} different captions of {scene}.")
        captions.append(caption)
    return captions


def scenes_vocabulary() -> list[str]:
    """Every word a `scenes` caption can contain, sorted.

    Example:
        >>> {"grey", "three", "objects", "above"} <= set(scenes_vocabulary())
        True
    """
    texts = [*COLORS, *COUNT_WORDS.values(), *COUNT_NOUNS, "a", "and", "is", "in"]
    for table in (SIZE_WORDS, SHAPE_WORDS, CELL_PHRASES, BACKGROUND_PHRASES, RELATION_PHRASES):
        texts += [p for ps in table.values() for p in ps]
    texts += list(_OBJECT_TEMPLATES + _PAIR_TEMPLATES + _UNRELATED_PAIR_TEMPLATES + _COUNT_TEMPLATES + _LIST_TEMPLATES)
    return sorted({w for text in texts for w in re.sub(r"\{\w+\}", " ", text).split()})


# ------------------------------------------------------------------------------------------------------ columns


def scene_columns(scene: Scene) -> dict[str, str]:
    """The attribute columns of `scene` (`SCENE_LABELS`' keys), as class names; empty cells are `"none"`.

    Example:
        >>> columns = scene_columns(Scene((ShapeObject("circle", "red", "large", "top left"),), "black"))
        >>> columns["shape_top_left"], columns["shape_top_right"], columns["background"]
        ('circle', 'none', 'black')
    """
    columns = {"background": scene.background}
    for cell in GRID_CELLS:
        obj = scene.at(cell)
        for name in ("shape", "color", "size"):
            columns[f"{name}_{CELL_COLUMNS[cell]}"] = NONE if obj is None else getattr(obj, name)
    return columns


def scene_from_columns(columns: Mapping[str, str]) -> Scene:
    """The scene whose attribute columns are `columns` (the inverse of `scene_columns`).

    A cell counts as empty when its shape is `"none"`; a non-empty cell whose colour or size is `"none"` (a judge
    can read that) raises `ValueError`.

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "large", "bottom right"),), "brown")
        >>> scene_from_columns(scene_columns(scene)) == scene
        True
    """
    objects = []
    for cell in GRID_CELLS:
        values = {name: columns[f"{name}_{CELL_COLUMNS[cell]}"] for name in ("shape", "color", "size")}
        if values["shape"] == NONE:
            continue
        if NONE in values.values():
            raise ValueError(f"Cell {cell!r} holds a {values['shape']} without a colour or size: {values}.")
        objects.append(ShapeObject(position=cell, **values))
    return Scene(tuple(objects), columns["background"])
