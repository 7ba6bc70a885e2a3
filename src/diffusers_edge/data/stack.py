"""Moved: where the shipped tiny stacks are installed now lives in `diffusers_edge.shapes.stack` (the stacks
themselves in `diffusers_edge/shapes/assets/`).

This module re-exports its public names so that `diffusers_edge.data.stack` keeps working.
"""

from ..shapes import stack as _stack
from ..shapes.stack import *  # noqa: F403

__all__ = list(_stack.__all__)
