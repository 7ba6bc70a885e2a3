"""Moved: the `scenes` world of captioned shapes now lives in `diffusers_edge.shapes.scenes`.

This module re-exports its public names so that `diffusers_edge.data.scenes` keeps working.
"""

from ..shapes.scenes import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    CAPTION_KINDS,
    CELL_COLUMNS,
    CELL_PHRASES,
    CLAIM_KINDS,
    COUNT_NOUNS,
    COUNT_WORDS,
    GRID_CELLS,
    NONE,
    NUM_OBJECTS,
    SCENE_LABELS,
    BackgroundClaim,
    Claim,
    ColorsClaim,
    CountClaim,
    ObjectClaim,
    ObjectSpec,
    RelationClaim,
    Scene,
    caption_scene,
    claim_accuracy,
    parse_claims,
    render_scene,
    sample_scene,
    scene_columns,
    scene_from_columns,
    scenes_vocabulary,
    unsaid_variety,
)

__all__ = [
    "BACKGROUNDS", "BACKGROUND_PHRASES", "BackgroundClaim", "CAPTION_KINDS", "CELL_COLUMNS", "CELL_PHRASES",
    "CLAIM_KINDS", "COUNT_NOUNS", "COUNT_WORDS", "Claim", "ColorsClaim", "CountClaim", "GRID_CELLS", "NONE",
    "NUM_OBJECTS", "ObjectClaim", "ObjectSpec", "RelationClaim", "SCENE_LABELS", "Scene", "caption_scene",
    "claim_accuracy", "parse_claims", "render_scene", "sample_scene", "scene_columns", "scene_from_columns",
    "scenes_vocabulary", "unsaid_variety",
]
