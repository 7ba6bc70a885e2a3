"""The embedded captioned-shapes dataset: procedurally drawn 32x32 images with 5 captions each, like Flickr30K.

It is the default data of diffusers-edge: small enough that a tiny CLIP, a tiny diffusion model and a retrieval
student learn it on a laptop CPU in minutes (such a stack was measured early on; docs/method.md, "The tiny stacks"),
structured enough that retrieval numbers mean something (a random 100-pair subset cannot cover the attribute space),
and fully deterministic from a seed.

Three builder configs:

- `one_object` (default): one shape on a near-black background. Attributes: shape (4) x colour (6) x size (2) x
  position (3x3 grid, 9) = 432 combinations. Captions mention all four attributes.
- `two_objects`: two shapes side by side or one above the other; captions describe both objects (shape, colour,
  size) and their spatial relation ("a big red circle left of a small blue square"): 48 x 47 x 2 = 4512 scenes.
- `scenes`: 2-4 shapes on a 2x2 grid and a background; each caption names a part of the scene
  (`diffusers_edge.shapes.scenes`).

The objects, their rendering, captions and parsing live in `diffusers_edge.shapes.objects`.

Instance-level ties: images with the same attribute combination get interchangeable captions, so even a model that
gets every attribute right scores at most about `mean(1 / images sharing the combination)` text-to-image R@1
(43% in the early tiny-stack measurements; docs/method.md, "The tiny stacks"); `shapes_statistics` reports that
ceiling for the test split.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..data.format import CAPTIONS_COLUMN, IMAGE_COLUMN, IMAGE_ID_COLUMN
from . import objects, scenes
from .objects import (
    _ONE_OBJECT_TEMPLATES,
    _TWO_OBJECT_TEMPLATES,
    BACKGROUND_WORDS,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    RELATION_PHRASES,
    RELATIONS,
    SHAPE_NAMES,
    SHAPE_WORDS,
    SIZE_WORDS,
    SIZES,
    caption_shapes,
    render_shapes,
    sample_scene,
    scene_attributes,
)

__all__ = [
    "CONFIG_NUM_OBJECTS", "CONFIGS", "SPLITS", "num_combinations", "example_rng", "caption_vocabulary",
    "combination_key", "generate_example", "CaptionedShapesConfig", "CaptionedShapes", "load_captioned_shapes",
    "shapes_statistics", "SOURCE_NAME", "load_shapes_split",
]

# ------------------------------------------------------------------------------------------------- the dataset

CONFIG_NUM_OBJECTS = {"one_object": 1, "two_objects": 2, "scenes": 0}
"""Objects per image of each config; 0 marks `scenes` (2-4 objects on a grid, `diffusers_edge.shapes.scenes`)."""
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
    objects = len(SHAPE_NAMES) * len(COLORS) * len(SIZES)
    if _num_objects(config_name) == 0:
        layouts = sum(math.comb(len(scenes.GRID_CELLS), n) * objects**n for n in scenes.NUM_OBJECTS)
        return layouts * len(scenes.BACKGROUNDS)
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
            texts += scenes.scenes_vocabulary()
        elif num_objects == 1:
            texts += list(_ONE_OBJECT_TEMPLATES) + [p for ps in POSITION_PHRASES.values() for p in ps]
        else:
            texts += list(_TWO_OBJECT_TEMPLATES) + [p for ps in RELATION_PHRASES.values() for p in ps]
    words = {w for text in texts for w in re.sub(r"\{\w+\}", " ", text).split()}
    return sorted(words)


def combination_key(example: dict[str, Any], num_objects: int = 1) -> tuple:
    """The attributes captions can tell apart, as a hashable key; ties in retrieval are images with equal keys.

    `example` holds attribute names (as strings). Two objects: the scene read left-to-right or top-to-bottom, so
    "a left of b" and "b right of a" give the same key (row/column of the pair is not captioned).

    Example:
        >>> combination_key({"shape": "circle", "color": "red", "size": "small", "position": "top"})
        ('circle', 'red', 'small', 'top')
    """
    if num_objects == 0:
        return tuple(example[k] for k in scenes.SCENE_LABELS)
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
        return {k: datasets.ClassLabel(names=list(v)) for k, v in scenes.SCENE_LABELS.items()}
    labels = {"shape": SHAPE_NAMES, "color": tuple(COLORS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
    if num_objects == 1:
        return {k: datasets.ClassLabel(names=list(v)) for k, v in labels.items()}
    features = {f"{k}_{i}": datasets.ClassLabel(names=list(v)) for i in (1, 2) for k, v in labels.items()}
    return features | {"relation": datasets.ClassLabel(names=list(RELATIONS))}


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
    """Hash of the generator's sources (this module, `objects`, `scenes`): a change to any of them invalidates cached
    copies of the dataset."""
    sources = b"".join(Path(path).read_bytes() for path in (__file__, objects.__file__, scenes.__file__))
    return hashlib.sha256(sources).hexdigest()[:16]


class CaptionedShapes(datasets.GeneratorBasedBuilder):
    """The captioned-shapes dataset as a `datasets` builder, used directly (datasets >= 4 has no loading scripts).

    Configs `one_object` (default), `two_objects` and `scenes`; override `seed`, `num_train`, `num_val`, `num_test`,
    `image_size` as keyword arguments (they become part of the cache folder name, so different seeds or sizes
    never share a cache). The cache folder also carries a hash of the generator's sources. Splits: `train`,
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


SOURCE_NAME = "shapes"
"""What `diffusers-edge distill --source` and `evaluate --train_source / --test_source` call the embedded data."""


def load_shapes_split(
    split: str,
    config_name: str = "one_object",
    seed: int = 0,
    num_train: int = 5000,
    num_test: int = 1000,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """One split of the captioned-shapes data (no validation split is built), as the commands read the source
    `shapes`; an unknown split raises naming the ones there are.

    Example:
        >>> load_shapes_split("test", num_train=4, num_test=3).num_rows
        3
    """
    shapes = load_captioned_shapes(
        config_name, seed=seed, num_train=num_train, num_val=0, num_test=num_test, cache_dir=cache_dir
    )
    if split not in shapes:
        raise ValueError(f"The shapes data has splits {list(shapes)}; {split!r} is not one of them.")
    return shapes[split]


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
