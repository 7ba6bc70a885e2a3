"""The frozen CLIP model whose embedding space EDGE's losses, prompt selection and coresets use.

EDGE computes its contrastive and diversity losses on CLIP ViT-B/32 features (docs/method.md, "The EDGE objective");
the same model embeds captions for k-center / k-means prompt selection and pairs for the coreset baselines, so one
default serves all three.

Example:
    >>> import torch
    >>> clip_features(torch.ones(2, 4)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


def clip_features(output: Any) -> torch.Tensor:
    """The embedding from `get_image_features` / `get_text_features`.

    transformers 4 returns the tensor itself; transformers 5 returns a model output whose `pooler_output` holds it.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output
