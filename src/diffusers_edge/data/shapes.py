"""Moved: the captioned-shapes dataset now lives in `diffusers_edge.shapes.dataset` (the builder, its configs,
`load_captioned_shapes`, statistics) and `diffusers_edge.shapes.objects` (one or two shapes: attribute space,
rendering, captions, parsing).

This module re-exports their public names so that `diffusers_edge.data.shapes` keeps working. `SHAPES` is the old
name of `SHAPE_NAMES` (the tuple of shape names; "shapes" is also a source name).
"""

from ..shapes import dataset as _dataset
from ..shapes import objects as _objects
from ..shapes.dataset import *  # noqa: F403
from ..shapes.objects import *  # noqa: F403

SHAPES = _objects.SHAPE_NAMES

__all__ = [*_dataset.__all__, *_objects.__all__, "SHAPES"]
