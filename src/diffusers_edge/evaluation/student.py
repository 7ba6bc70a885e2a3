"""The retrieval student of the MTT-VL / LoRS / EDGE evaluation protocol (docs/method.md, "The evaluation protocol").

A distilled set is judged by the retrieval model it trains. The protocol's student has

* an image encoder from `timm` (`nfnet_l0`, ImageNet-pretrained, 2304-d pooled features), **trained**;
* a text encoder from transformers (`bert-base-uncased`), **frozen**, whose CLS feature goes through a trainable
  projection head (Linear, GELU, Linear, Dropout 0.1, residual, LayerNorm) to the image feature size;
* both embeddings L2-normalised, a **fixed** logit scale of 1/0.07, and the symmetric InfoNCE loss.

Because the text encoder is frozen, its CLS features are computed once (`FrozenTextEncoder.encode`) and cached;
an epoch then costs the image encoder and the small head only.

Example:
    >>> text_encoder = FrozenTextEncoder("bert-base-uncased")
    >>> student = RetrievalStudent.from_timm("nfnet_l0", text_dim=text_encoder.hidden_size, pretrained=True)
    >>> features = text_encoder.encode(["a dog runs on the grass"])
    >>> student.encode_text(features).shape
    torch.Size([1, 2304])
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

# The protocol's logit scale, fixed (not learned): MTT-VL / LoRS / EDGE use CLIP's initial temperature 0.07.
DEFAULT_LOGIT_SCALE = 1.0 / 0.07
# CLIP's image normalisation (openai/CLIP `clip.py`), used by the protocol for every image encoder.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_IMAGE_ENCODER = "nfnet_l0"
DEFAULT_TEXT_ENCODER = "bert-base-uncased"


class ProjectionHead(nn.Module):
    """The protocol's trainable text projection: Linear, GELU, Linear, Dropout, residual, LayerNorm.

    `out = LayerNorm(Dropout(Linear(GELU(p))) + p)` with `p = Linear(x)`; MTT-VL and LoRS map BERT's 768-d CLS
    feature to NFNet-l0's 2304-d image feature this way.

    Example:
        >>> head = ProjectionHead(768, 2304)
        >>> head(torch.zeros(2, 768)).shape
        torch.Size([2, 2304])
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.projection(features)
        hidden = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(hidden + projected)


def build_image_encoder(
    name: str = DEFAULT_IMAGE_ENCODER,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Creates a `timm` image encoder with its classifier removed (`num_classes=0`: it returns pooled features).

    Args:
        name: a `timm` model name (`timm.list_models()`), e.g. `nfnet_l0` (the protocol's), `nf_resnet50`,
            `resnet50`, `vit_tiny_patch16_224`, or a small one such as `resnet10t` / `test_resnet`.
        pretrained: load timm's pretrained weights (ImageNet; downloads from the Hub unless cached).
        checkpoint: a local weights file (`.safetensors` or `.pth`) to load instead, through timm's own loader
            (`pretrained_cfg_overlay=dict(file=...)`); a classifier in it is dropped.
        **kwargs: architecture arguments passed to `timm.create_model` (e.g. `channels=(16, 32, 64, 128)` for a
            narrow ResNet).

    Returns:
        The model; `model.num_features` is its feature size.

    Raises:
        ValueError: `name` is not a timm model (close names are listed).
        FileNotFoundError: `checkpoint` does not exist.

    Example:
        >>> encoder = build_image_encoder("resnet10t", channels=(8, 16, 32, 64), stem_width=8)
        >>> encoder.num_features
        64
    """
    import timm

    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=8, cutoff=0.5)
        hint = f" Close names: {close}." if close else " See timm.list_models()."
        raise ValueError(f"Unknown image encoder {name!r}: timm has no model of that name.{hint}")
    overlay = None
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"Image encoder checkpoint {str(checkpoint)!r} does not exist.")
        overlay = {"file": str(checkpoint)}
        pretrained = True
    return timm.create_model(name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay, **kwargs)


TEXT_POOLINGS = ("cls", "mean")


class FrozenTextEncoder:
    """A frozen transformers text encoder; its CLS feature (`last_hidden_state[:, 0]`) is the caption feature.

    `pooling="cls"` is the protocol's. `pooling="mean"` (the mean of the last hidden states over real tokens) is
    for encoders that were never pretrained: a randomly initialised BERT gives nearly the same CLS feature for every
    caption (measured on the tiny test BERT: cosine similarity 1.0000 between all shapes captions, versus 0.95 on
    average for mean pooling), so a student trained on it can learn nothing from the text side.

    Args:
        name_or_path: a model id or local folder for `AutoModel` / `AutoTokenizer` (default `bert-base-uncased`).
        max_length: captions are truncated to this many tokens (the protocol cuts captions to 30 words first).
        device: where the encoder runs.
        pooling: `cls` (the protocol) or `mean`.

    Example:
        >>> encoder = FrozenTextEncoder("bert-base-uncased")
        >>> encoder.encode(["a red circle", "a blue square"]).shape
        torch.Size([2, 768])
    """

    def __init__(
        self,
        name_or_path: str | Path = DEFAULT_TEXT_ENCODER,
        max_length: int = 77,
        device: str | None = None,
        pooling: str = "cls",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if pooling not in TEXT_POOLINGS:
            raise ValueError(f"Unknown text pooling {pooling!r}; choose one of {TEXT_POOLINGS}.")
        from ..paths import check_model_reference

        check_model_reference(name_or_path, "text_encoder")
        self.pooling = pooling
        self.name_or_path = str(name_or_path)
        self.device = torch.device(device or "cpu")
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        self.model = AutoModel.from_pretrained(self.name_or_path).to(self.device).eval().requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Pooled features of `captions` as a float32 CPU tensor of shape (len(captions), hidden_size)."""
        chunks = []
        for start in range(0, len(captions), batch_size):
            tokens = self.tokenizer(
                list(captions[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**tokens).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = tokens["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
            chunks.append(pooled.cpu())
        if not chunks:
            return torch.zeros(0, self.hidden_size)
        return torch.cat(chunks)


class RetrievalStudent(nn.Module):
    """Image encoder (trained) + text projection head over cached frozen text features; both outputs L2-normalised.

    Args:
        image_encoder: a module mapping normalised images (B, 3, H, W) to features (B, D), e.g. from
            `build_image_encoder`; it must expose `num_features`.
        text_dim: the frozen text encoder's feature size (768 for `bert-base-uncased`).
        dropout: the projection head's dropout (0.1 in the protocol).
        logit_scale: the fixed inverse temperature (1/0.07 in the protocol).

    Example:
        >>> student = RetrievalStudent.from_timm("resnet10t", text_dim=32, channels=(8, 16, 32, 64), stem_width=8)
        >>> images, texts = student.encode_image(torch.randn(4, 3, 32, 32)), student.encode_text(torch.randn(4, 32))
        >>> float(student.loss(images, texts)) > 0
        True
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_dim: int,
        dropout: float = 0.1,
        logit_scale: float = DEFAULT_LOGIT_SCALE,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_projection = ProjectionHead(text_dim, int(image_encoder.num_features), dropout)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=False)

    @classmethod
    def from_timm(
        cls,
        name: str = DEFAULT_IMAGE_ENCODER,
        text_dim: int = 768,
        pretrained: bool = False,
        checkpoint: str | Path | None = None,
        dropout: float = 0.1,
        logit_scale: float = DEFAULT_LOGIT_SCALE,
        **kwargs: Any,
    ) -> RetrievalStudent:
        """A student whose image encoder is `build_image_encoder(name, pretrained, checkpoint, **kwargs)`."""
        encoder = build_image_encoder(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
        return cls(encoder, text_dim=text_dim, dropout=dropout, logit_scale=logit_scale)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(pixel_values), dim=-1)

    def encode_text(self, text_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(text_features), dim=-1)

    def loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch: pair i is the positive of row and column i."""
        return contrastive_loss(image_embeds, text_embeds, float(self.logit_scale))

    def forward(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch of (image, caption feature) pairs."""
        return self.loss(self.encode_image(pixel_values), self.encode_text(text_features))


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies of `logit_scale * image_embeds @ text_embeds.T`.

    Example:
        >>> e = torch.eye(3)
        >>> round(float(contrastive_loss(e, e, 1 / 0.07)), 6)
        0.0
    """
    logits = logit_scale * image_embeds @ text_embeds.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def images_to_uint8(images: Sequence[PIL.Image.Image], image_size: int) -> torch.Tensor:
    """Resizes (shorter side, bicubic) and centre-crops PIL images to `image_size`; returns uint8 (N, 3, S, S).

    Example:
        >>> images_to_uint8([PIL.Image.new("RGB", (64, 48))], 32).shape
        torch.Size([1, 3, 32, 32])
    """
    out = torch.empty(len(images), 3, image_size, image_size, dtype=torch.uint8)
    for i, image in enumerate(images):
        tensor = TF.pil_to_tensor(image.convert("RGB"))
        tensor = TF.resize(tensor, image_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        out[i] = TF.center_crop(tensor, image_size)
    return out


def normalize_images(
    images: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1], then `(x - mean) / std` per channel (CLIP's statistics).

    Example:
        >>> normalize_images(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))[0, 0, 0, 0].item() < 0
        True
    """
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t
