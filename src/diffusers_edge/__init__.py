"""diffusers-edge: multimodal dataset distillation with generative models (EDGE, arXiv 2509.15472).

Public names are imported lazily so that `import diffusers_edge` stays cheap: heavy libraries (diffusers,
transformers, datasets) load only when a name that needs them is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy_imports import lazy_exports

__version__ = "0.1.0.dev0"

# public name -> submodule that defines it
_LAZY_NAMES: dict[str, str] = {
    "NORMALIZED_FEATURES": "diffusers_edge.data.format",
    "validate_normalized": "diffusers_edge.data.format",
    "load_source": "diffusers_edge.data.sources",
    "load_karpathy_json": "diffusers_edge.data.sources",
    "load_hub_source": "diffusers_edge.data.sources",
    "load_imagefolder_source": "diffusers_edge.data.sources",
    "load_streamed_source": "diffusers_edge.data.sources",
    "pre_caption": "diffusers_edge.data.sources",
    "CaptionedShapes": "diffusers_edge.shapes.dataset",
    "CaptionedShapesConfig": "diffusers_edge.shapes.dataset",
    "load_captioned_shapes": "diffusers_edge.shapes.dataset",
    "render_shapes": "diffusers_edge.shapes.objects",
    "caption_shapes": "diffusers_edge.shapes.objects",
    "caption_vocabulary": "diffusers_edge.shapes.dataset",
    "parse_caption": "diffusers_edge.shapes.objects",
    "ShapeObject": "diffusers_edge.shapes.objects",
    "Captioner": "diffusers_edge.captioning",
    "retrieval_recall": "diffusers_edge.metrics.retrieval",
    "retrieval_recall_from_embeddings": "diffusers_edge.metrics.retrieval",
    "image_text_recall_path": "diffusers_edge.metrics",
    "bidirectional_contrastive_loss": "diffusers_edge.losses",
    "diversity_loss": "diffusers_edge.losses",
    "EDGEObjective": "diffusers_edge.training.objective",
    "EDGELossConfig": "diffusers_edge.training.objective",
    "TrainingConfig": "diffusers_edge.training.config",
    "load_difffit_weights": "diffusers_edge.training.adapters",
    "EDGEPipeline": "diffusers_edge.pipeline_edge",
    "DistillProgress": "diffusers_edge.distillation",
    "item_seed": "diffusers_edge.distillation",
    "select_captions": "diffusers_edge.selection",
    "kcenter_greedy": "diffusers_edge.selection",
    "kmeans_nearest": "diffusers_edge.selection",
    "embed_captions": "diffusers_edge.selection",
    "load_distilled": "diffusers_edge.data.distilled",
    "push_distilled": "diffusers_edge.data.distilled",
    "to_flat_pairs": "diffusers_edge.data.distilled",
    "export_blip_json": "diffusers_edge.data.distilled",
    "DistilledBuilder": "diffusers_edge.data.distilled",
    "DISTILLED_FEATURES": "diffusers_edge.data.distilled",
    "evaluate_dataset": "diffusers_edge.evaluation",
    "protocol_config": "diffusers_edge.evaluation",
    "ProtocolConfig": "diffusers_edge.evaluation",
    "PROTOCOLS": "diffusers_edge.evaluation",
    "RetrievalStudent": "diffusers_edge.evaluation",
    "train_student": "diffusers_edge.evaluation",
    "evaluate_student": "diffusers_edge.evaluation",
    "results_table": "diffusers_edge.evaluation",
    "select_coreset": "diffusers_edge.selection.coreset",
    "embed_pool": "diffusers_edge.selection.coreset",
    "shapes_stack_path": "diffusers_edge.shapes.stack",
    "STACK_COMPONENTS": "diffusers_edge.shapes.stack",
    "AttributeJudge": "diffusers_edge.shapes.judge",
    "load_judge": "diffusers_edge.shapes.judge",
    "judge_images": "diffusers_edge.shapes.judge",
    "score_prompt_following": "diffusers_edge.shapes.judge",
    "DemoConfig": "diffusers_edge.shapes.demo.config",
    "run_demo": "diffusers_edge.shapes.demo.run",
    "build_clip_tokenizer": "diffusers_edge.shapes.tokenization",
    "build_bert_tokenizer": "diffusers_edge.shapes.tokenization",
}

__all__ = ["__version__", *_LAZY_NAMES]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY_NAMES)


if TYPE_CHECKING:
    from .captioning import Captioner
    from .data.distilled import (
        DISTILLED_FEATURES,
        DistilledBuilder,
        export_blip_json,
        load_distilled,
        push_distilled,
        to_flat_pairs,
    )
    from .data.format import NORMALIZED_FEATURES, validate_normalized
    from .data.sources import (
        load_hub_source,
        load_imagefolder_source,
        load_karpathy_json,
        load_source,
        load_streamed_source,
        pre_caption,
    )
    from .distillation import DistillProgress, item_seed
    from .evaluation import (
        PROTOCOLS,
        ProtocolConfig,
        RetrievalStudent,
        evaluate_dataset,
        evaluate_student,
        protocol_config,
        results_table,
        train_student,
    )
    from .losses import bidirectional_contrastive_loss, diversity_loss
    from .metrics import image_text_recall_path
    from .metrics.retrieval import retrieval_recall, retrieval_recall_from_embeddings
    from .pipeline_edge import EDGEPipeline
    from .selection import embed_captions, kcenter_greedy, kmeans_nearest, select_captions
    from .selection.coreset import embed_pool, select_coreset
    from .shapes.dataset import CaptionedShapes, CaptionedShapesConfig, caption_vocabulary, load_captioned_shapes
    from .shapes.demo.config import DemoConfig
    from .shapes.demo.run import run_demo
    from .shapes.judge import AttributeJudge, judge_images, load_judge, score_prompt_following
    from .shapes.objects import ShapeObject, caption_shapes, parse_caption, render_shapes
    from .shapes.stack import STACK_COMPONENTS, shapes_stack_path
    from .shapes.tokenization import build_bert_tokenizer, build_clip_tokenizer
    from .training.adapters import load_difffit_weights
    from .training.config import TrainingConfig
    from .training.objective import EDGELossConfig, EDGEObjective
