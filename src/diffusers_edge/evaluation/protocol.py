"""The student protocol: every knob of a training run, and the two published presets, each written once.

Two presets reproduce the published protocols (docs/method.md, "The evaluation protocol"); every field can be
overridden:

| preset | optimiser                         | epochs | lr decay        | batch | augmentation   | evaluated   |
|--------|-----------------------------------|--------|-----------------|-------|----------------|-------------|
| `lors` | SGD lr 0.1, momentum 0.9, wd 5e-4 | 100    | x0.1 after 51   | 128   | none           | every 10    |
| `edge` | SGD lr 0.1, no momentum, no wd    | 100    | none            | 64    | RRC, flip, RA  | every 5     |

(LoRS decays with `MultiStepLR([epochs // 2 + 1])`; EDGE's augmentation is RandomResizedCrop(scale 0.5-1),
horizontal flip and RandAugment(2, 5).) The `ProtocolConfig` defaults ARE the `lors` preset; the `edge` preset
lists only what differs from it.

Example:
    >>> config = protocol_config("lors", epochs=20, image_size=64)
    >>> config.momentum, protocol_config("edge").momentum
    (0.9, 0.0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .student import CLIP_MEAN, CLIP_STD, DEFAULT_LOGIT_SCALE


@dataclass
class ProtocolConfig:
    """Every knob of a student training run. Build one with `protocol_config(name, **overrides)`.

    The defaults are the `lors` preset (LoRS: silicx/LoRS_Distill, src/epoch.py `evaluate_synset`: SGD lr 0.1 for
    the image encoder and the text head, momentum 0.9, weight decay 5e-4, MultiStepLR(milestones=[epochs // 2 + 1],
    gamma=0.1)).

    Attributes:
        name: the preset it started from (`lors` or `edge`).
        epochs: training epochs over all (image, caption) pairs.
        batch_size: pairs per step (a last batch of one pair is merged into the previous one).
        lr: learning rate of the image encoder.
        text_lr: learning rate of the text projection head (`None`: same as `lr`; LoRS uses 0.1 for both).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_milestones: epochs after which the learning rate is multiplied by `lr_gamma` (`MultiStepLR`, stepped
            once per epoch).
        lr_gamma: the decay factor.
        augment: train-time augmentation: RandomResizedCrop(scale 0.5-1), horizontal flip, RandAugment(2, 5).
        eval_every: evaluate after every `eval_every`-th epoch; the last epoch is always evaluated.
        image_size: images are resized (shorter side) and centre-cropped to this side.
        image_mean: per-channel normalisation mean (CLIP's).
        image_std: per-channel normalisation std (CLIP's).
        dropout: the projection head's dropout.
        logit_scale: the fixed inverse temperature of the InfoNCE loss.
        max_text_length: tokens kept per caption by the frozen text encoder.
        eval_batch_size: images per forward pass at evaluation (and text encoding).
        ks: the K of recall@K.

    Example:
        >>> ProtocolConfig() == protocol_config("lors")
        True
    """

    name: str = "lors"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    text_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list[int] = field(default_factory=lambda: [51])
    lr_gamma: float = 0.1
    augment: bool = False
    eval_every: int = 10
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    dropout: float = 0.1
    logit_scale: float = DEFAULT_LOGIT_SCALE
    max_text_length: int = 77
    eval_batch_size: int = 256
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "image_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ProtocolConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.batch_size < 2:
            raise ValueError("ProtocolConfig.batch_size must be >= 2: InfoNCE needs negatives in the batch.")
        for name in ("lr_milestones", "image_mean", "image_std", "ks"):
            setattr(self, name, list(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# LoRS: the `ProtocolConfig` defaults (evaluated 11 times by its script; see docs/evaluation.md for how ours
# differs). EDGE (ichbill/EDGE evaluation script): SGD lr 0.1, no momentum or weight decay, batch 32-64,
# augmentation, evaluated every 5 epochs; everything else as LoRS.
PROTOCOLS: dict[str, ProtocolConfig] = {
    "lors": ProtocolConfig(),
    "edge": ProtocolConfig(
        name="edge", batch_size=64, momentum=0.0, weight_decay=0.0, lr_milestones=[], augment=True, eval_every=5
    ),
}


def protocol_config(name: str = "lors", **overrides: Any) -> ProtocolConfig:
    """The preset `name` (`lors` or `edge`) with `overrides` applied (`None` values are ignored).

    Returns a new `ProtocolConfig`: changing it leaves the preset in `PROTOCOLS` as it was.

    Example:
        >>> protocol_config("edge", epochs=10).momentum
        0.0
    """
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}.")
    fields = {f.name for f in dataclasses.fields(ProtocolConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown protocol field(s) {unknown}; the fields are {sorted(fields)}.")
    return dataclasses.replace(PROTOCOLS[name], **{k: v for k, v in overrides.items() if v is not None})
