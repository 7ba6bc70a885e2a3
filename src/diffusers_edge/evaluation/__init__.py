"""The retrieval student of the MTT-VL / LoRS / EDGE protocol, its trainer and its evaluation loop (docs/method.md,
"The evaluation protocol").

One concept per module: `protocol` (`ProtocolConfig`, the `lors` / `edge` presets), `student` (the model),
`pairs` (a normalized set flattened into (image, caption) pairs), `trainer` (training and scoring one student),
`evaluator` (the one per-seed loop, `evaluate_dataset`), `report` (mean ± std and the papers' table).

Example:
    >>> from diffusers_edge.evaluation import evaluate_dataset, protocol_config, results_table
    >>> results = evaluate_dataset(distilled, test, protocol_config("lors"), seeds=[0, 1, 2])
    >>> print(results_table([("distilled", results)]))
"""

from .evaluator import RetrievalEvaluator, evaluate_dataset
from .pairs import PairSet, prepare_pairs
from .protocol import PROTOCOLS, ProtocolConfig, protocol_config
from .report import results_table, summarize
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
from .trainer import evaluate_student, train_student

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_LOGIT_SCALE",
    "PROTOCOLS",
    "FrozenTextEncoder",
    "PairSet",
    "ProjectionHead",
    "ProtocolConfig",
    "RetrievalEvaluator",
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
