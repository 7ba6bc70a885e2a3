"""Moved: the captioned-shapes dataset now lives in `diffusers_edge.shapes.dataset` (the builder, its configs,
`load_captioned_shapes`, statistics) and `diffusers_edge.shapes.objects` (one or two shapes: attribute space,
rendering, captions, parsing).

This module re-exports their public names so that `diffusers_edge.data.shapes` keeps working. `SHAPES` is the old
name of `SHAPE_NAMES` (the tuple of shape names; "shapes" is also a source name).
"""

from ..shapes.dataset import (
    CONFIG_NUM_OBJECTS,
    CONFIGS,
    SPLITS,
    CaptionedShapes,
    CaptionedShapesConfig,
    caption_vocabulary,
    combination_key,
    example_rng,
    generate_example,
    load_captioned_shapes,
    num_combinations,
    shapes_statistics,
)
from ..shapes.objects import (
    BACKGROUND_MAX,
    BACKGROUND_WORDS,
    BRIGHTNESS_RANGE,
    CAPTIONS_PER_IMAGE,
    COLOR_JITTER,
    COLORS,
    POSITION_JITTER,
    POSITION_PHRASES,
    POSITIONS,
    RELATION_PHRASES,
    RELATIONS,
    SHAPE_NAMES,
    SHAPE_WORDS,
    SIZE_WORDS,
    SIZES,
    ShapeObject,
    caption_shapes,
    parse_caption,
    render_shapes,
    sample_scene,
    scene_attributes,
)

SHAPES = SHAPE_NAMES

__all__ = [
    "BACKGROUND_MAX", "BACKGROUND_WORDS", "BRIGHTNESS_RANGE", "CAPTIONS_PER_IMAGE", "COLORS", "COLOR_JITTER",
    "CONFIGS", "CONFIG_NUM_OBJECTS", "CaptionedShapes", "CaptionedShapesConfig", "POSITIONS", "POSITION_JITTER",
    "POSITION_PHRASES", "RELATIONS", "RELATION_PHRASES", "SHAPES", "SHAPE_NAMES", "SHAPE_WORDS", "SIZES", "SIZE_WORDS",
    "SPLITS", "ShapeObject", "caption_shapes", "caption_vocabulary", "combination_key", "example_rng",
    "generate_example", "load_captioned_shapes", "num_combinations", "parse_caption", "render_shapes", "sample_scene",
    "scene_attributes", "shapes_statistics",
]
