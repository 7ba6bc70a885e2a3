"""The retrieval student of the MTT-VL / LoRS / EDGE protocol and its trainer (REFERENCE.md section 2).

Example:
    >>> from diffusers_edge.evaluation import evaluate_dataset, protocol_config, results_table
    >>> results = evaluate_dataset(distilled, test, protocol_config("lors"), seeds=[0, 1, 2])
    >>> print(results_table([("distilled", results)]))
"""

from .student import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_LOGIT_SCALE,
    FrozenTextEncoder,
    ProjectionHead,
    RetrievalStudent,
    build_image_encoder,
    contrastive_loss,
)
from .trainer import (
    PROTOCOLS,
    PairSet,
    ProtocolConfig,
    evaluate_dataset,
    evaluate_student,
    prepare_pairs,
    protocol_config,
    results_table,
    summarize,
    train_student,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_LOGIT_SCALE",
    "PROTOCOLS",
    "FrozenTextEncoder",
    "PairSet",
    "ProjectionHead",
    "ProtocolConfig",
    "RetrievalStudent",
    "build_image_encoder",
    "contrastive_loss",
    "evaluate_dataset",
    "evaluate_student",
    "prepare_pairs",
    "protocol_config",
    "results_table",
    "summarize",
    "train_student",
]
