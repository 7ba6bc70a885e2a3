"""Moved: where the shipped tiny stacks are installed now lives in `diffusers_edge.shapes.stack` (the stacks
themselves in `diffusers_edge/shapes/assets/`).

This module re-exports its public names so that `diffusers_edge.data.stack` keeps working.
"""

from ..shapes.stack import STACK_COMPONENTS, STACK_FOLDERS, shapes_stack_path

__all__ = ["STACK_COMPONENTS", "STACK_FOLDERS", "shapes_stack_path"]
