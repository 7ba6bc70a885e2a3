"""Moved: the `scenes` world of captioned shapes now lives in `diffusers_edge.shapes.scenes`.

This module re-exports its public names so that `diffusers_edge.data.scenes` keeps working.
"""

from ..shapes import scenes as _scenes
from ..shapes.scenes import *  # noqa: F403

__all__ = list(_scenes.__all__)
