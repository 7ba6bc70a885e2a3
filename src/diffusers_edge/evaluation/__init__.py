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

from typing import TYPE_CHECKING

from ..lazy_imports import lazy_exports

# submodule -> the names this package hands on from it (imported at first use)
_SUBMODULES = {
    ".evaluator": ("RetrievalEvaluator", "evaluate_dataset"),
    ".pairs": ("PairSet", "prepare_pairs"),
    ".protocol": ("PROTOCOLS", "ProtocolConfig", "protocol_config"),
    ".report": ("results_table", "summarize"),
    ".student": (
        "CLIP_MEAN", "CLIP_STD", "DEFAULT_LOGIT_SCALE", "FrozenTextEncoder", "ProjectionHead", "RetrievalStudent",
        "build_image_encoder", "contrastive_loss",
    ),
    ".trainer": ("evaluate_student", "train_student"),
}
_EXPORTS = {name: module for module, names in _SUBMODULES.items() for name in names}
__all__ = [*_EXPORTS]
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
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
