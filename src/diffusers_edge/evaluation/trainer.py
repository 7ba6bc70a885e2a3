"""Train the retrieval student on an image-text set and measure recall@K on a test set, the protocol way.

Two presets reproduce the published protocols (REFERENCE.md section 2); every field can be overridden:

| preset | optimiser                         | epochs | lr decay        | batch | augmentation   | evaluated   |
|--------|-----------------------------------|--------|-----------------|-------|----------------|-------------|
| `lors` | SGD lr 0.1, momentum 0.9, wd 5e-4 | 100    | x0.1 after 51   | 128   | none           | every 10    |
| `edge` | SGD lr 0.1, no momentum, no wd    | 100    | none            | 64    | RRC, flip, RA  | every 5     |

(LoRS decays with `MultiStepLR([epochs // 2 + 1])`; EDGE's augmentation is RandomResizedCrop(scale 0.5-1),
horizontal flip and RandAugment(2, 5).)

Every evaluation uses `diffusers_edge.metrics.retrieval_recall_from_embeddings` on the whole test split. A run
reports the **last** evaluation and the **best** one (highest `r_mean`); the best is selected on the test split,
as LoRS does, so it is optimistic. Several seeds give mean and sample standard deviation (ddof=1).

Example:
    >>> config = protocol_config("lors", epochs=20, image_size=64)
    >>> results = evaluate_dataset(distilled, test, config, image_encoder="resnet10t", seeds=[0, 1, 2])
    >>> print(results_table([("distilled", results)]))
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from ..data.format import CAPTIONS_COLUMN, IMAGE_COLUMN, validate_normalized
from .student import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_LOGIT_SCALE,
    DEFAULT_TEXT_ENCODER,
    FrozenTextEncoder,
    RetrievalStudent,
    images_to_uint8,
    normalize_images,
)

BEST_IS_OPTIMISTIC = (
    "best = the evaluation with the highest r_mean, selected on the test split (as LoRS does): optimistic; "
    "last = the final epoch, the honest number."
)
# The six recall numbers in the papers' column order: IR = text->image, TR = image->text.
TABLE_COLUMNS = (
    ("IR@1", "t2i_R@1"),
    ("IR@5", "t2i_R@5"),
    ("IR@10", "t2i_R@10"),
    ("TR@1", "i2t_R@1"),
    ("TR@5", "i2t_R@5"),
    ("TR@10", "i2t_R@10"),
    ("r_mean", "r_mean"),
)


@dataclass
class ProtocolConfig:
    """Every knob of a student training run. Build one with `protocol_config(name, **overrides)`.

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


# LoRS (silicx/LoRS_Distill, src/epoch.py `evaluate_synset`): SGD lr 0.1 for the image encoder and the text head,
# momentum 0.9, weight decay 5e-4, MultiStepLR(milestones=[epochs // 2 + 1], gamma=0.1), evaluated 11 times.
# EDGE (ichbill/EDGE evaluation script): SGD lr 0.1, no momentum or weight decay, batch 32-64, augmentation,
# evaluated every 5 epochs.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "lors": {
        "name": "lors",
        "epochs": 100,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_milestones": [51],
        "lr_gamma": 0.1,
        "augment": False,
        "eval_every": 10,
    },
    "edge": {
        "name": "edge",
        "epochs": 100,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "lr_milestones": [],
        "lr_gamma": 0.1,
        "augment": True,
        "eval_every": 5,
    },
}


def protocol_config(name: str = "lors", **overrides: Any) -> ProtocolConfig:
    """The preset `name` (`lors` or `edge`) with `overrides` applied (`None` values are ignored).

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
    values = {**PROTOCOLS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return ProtocolConfig(**values)


@dataclass
class PairSet:
    """A normalized dataset flattened for training/evaluation: decoded images and one entry per (image, caption).

    Attributes:
        images: uint8 (num_images, 3, S, S).
        captions: every caption, image by image, in dataset order.
        text_to_image: for each caption, the row of its image.
    """

    images: torch.Tensor
    captions: list[str]
    text_to_image: torch.Tensor

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_pairs(self) -> int:
        return len(self.captions)


def prepare_pairs(dataset: datasets.Dataset, image_size: int, name: str = "dataset", batch_size: int = 256) -> PairSet:
    """Validates a normalized dataset, decodes and resizes its images, and lists every (image, caption) pair.

    Raises:
        ValueError: the dataset has no rows, or is not in the normalized form (a row without captions, a missing
            column, a repeated image id); the row is named.

    Example:
        >>> pairs = prepare_pairs(test_split, image_size=224, name="test")
        >>> pairs.num_images, pairs.num_pairs
        (1000, 5000)
    """
    if dataset.num_rows == 0:
        raise ValueError(f"{name} is empty: it has no image-caption rows.")
    validate_normalized(dataset, name=name)
    captions = [list(c) for c in dataset[CAPTIONS_COLUMN]]
    images = dataset.select_columns([IMAGE_COLUMN])
    chunks = []
    for start in range(0, dataset.num_rows, batch_size):
        rows = images[start : start + batch_size][IMAGE_COLUMN]
        for offset, image in enumerate(rows):
            if image is None:
                raise ValueError(f"{name} row {start + offset} has no image.")
        chunks.append(images_to_uint8(rows, image_size))
    text_to_image = torch.tensor([row for row, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    return PairSet(torch.cat(chunks), [c for caps in captions for c in caps], text_to_image)


def _augmenter(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """EDGE's train-time augmentation, applied image by image (each image draws its own parameters)."""
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=2, magnitude=5),
        ]
    )
    return lambda batch: torch.stack([transform(image) for image in batch])


def _batches(num_pairs: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(num_pairs, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:  # a one-pair batch has no negatives (and breaks BatchNorm)
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


@torch.inference_mode()
def embed_pairs(
    student: RetrievalStudent, images: torch.Tensor, text_features: torch.Tensor, config: ProtocolConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised student embeddings of every image (uint8) and every text feature, in eval mode."""
    student.eval()
    device = next(student.parameters()).device
    image_embeds, text_embeds = [], []
    for start in range(0, images.shape[0], config.eval_batch_size):
        batch = images[start : start + config.eval_batch_size].to(device)
        batch = normalize_images(batch, config.image_mean, config.image_std)
        image_embeds.append(student.encode_image(batch).float())
    for start in range(0, text_features.shape[0], config.eval_batch_size):
        text_embeds.append(student.encode_text(text_features[start : start + config.eval_batch_size].to(device)))
    return torch.cat(image_embeds), torch.cat(text_embeds).float()


def evaluate_student(
    student: RetrievalStudent,
    images: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    config: ProtocolConfig,
) -> dict[str, float]:
    """Recall@K (percent) of the student on a test set, computed by `retrieval_recall_from_embeddings`.

    Example:
        >>> metrics = evaluate_student(student, test.images, test_features, test.text_to_image, config)
        >>> sorted(metrics)[:2]
        ['i2t_R@1', 'i2t_R@10']
    """
    from ..metrics.retrieval import retrieval_recall_from_embeddings

    image_embeds, text_embeds = embed_pairs(student, images, text_features, config)
    metrics = retrieval_recall_from_embeddings(
        image_embeds, text_embeds, text_to_image.to(image_embeds.device), ks=tuple(config.ks), normalize=False
    )
    return {key: float(value) for key, value in metrics.items()}


def train_student(
    student: RetrievalStudent,
    images: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    config: ProtocolConfig,
    seed: int = 0,
    evaluate: Callable[[RetrievalStudent], dict[str, float]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains `student` in place on every (image, caption-feature) pair, evaluating on the protocol's schedule.

    Args:
        student: the student to train (its parameters' device is used).
        images: uint8 training images (N, 3, S, S).
        text_features: frozen caption features, one row per pair.
        text_to_image: for each pair, the row of its image in `images`.
        config: the protocol.
        seed: seeds batch order, dropout and augmentation.
        evaluate: called with the student after each scheduled epoch; returns recall metrics.
        progress: show a tqdm bar over epochs.

    Returns:
        `{"losses": [mean loss per epoch], "evaluations": [{"epoch": e, **metrics}], "last": ..., "best": ...,
        "best_epoch": ...}` (the last three only when `evaluate` is given).
    """
    if text_features.shape[0] < 2:
        raise ValueError(f"Training needs at least 2 (image, caption) pairs; got {text_features.shape[0]}.")
    device = next(student.parameters()).device
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    text_lr = config.lr if config.text_lr is None else config.text_lr
    optimizer = torch.optim.SGD(
        [
            {"params": list(student.image_encoder.parameters()), "lr": config.lr},
            {"params": list(student.text_projection.parameters()), "lr": text_lr},
        ],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_milestones, gamma=config.lr_gamma)
    augment = _augmenter(config.image_size) if config.augment else None
    history: dict[str, Any] = {"losses": [], "evaluations": []}
    bar = tqdm(range(1, config.epochs + 1), desc=f"seed {seed}", disable=not progress, leave=False)
    for epoch in bar:
        student.train()
        total, count = 0.0, 0
        for batch in _batches(text_features.shape[0], config.batch_size, generator):
            pixels = images[text_to_image[batch]]
            if augment is not None:
                pixels = augment(pixels)
            pixels = normalize_images(pixels.to(device), config.image_mean, config.image_std)
            loss = student(pixels, text_features[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        scheduler.step()
        history["losses"].append(total / count)
        bar.set_postfix(loss=f"{total / count:.4f}")
        if evaluate is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
            history["evaluations"].append({"epoch": epoch, **evaluate(student)})
    if history["evaluations"]:
        best = max(history["evaluations"], key=lambda row: row["r_mean"])
        history["last"] = _metrics_only(history["evaluations"][-1])
        history["best"] = _metrics_only(best)
        history["best_epoch"] = best["epoch"]
    return history


def _metrics_only(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "epoch"}


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: mean and sample standard deviation (ddof=1; 0 for a single run) over runs.

    Example:
        >>> summarize([{"r_mean": 10.0}, {"r_mean": 12.0}])
        {'r_mean': {'mean': 11.0, 'std': 1.4142135623730951}}
    """
    out = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def evaluate_dataset(
    train: datasets.Dataset | Callable[[int], datasets.Dataset],
    test: datasets.Dataset,
    config: ProtocolConfig | None = None,
    *,
    image_encoder: str = DEFAULT_IMAGE_ENCODER,
    text_encoder: str | Path = DEFAULT_TEXT_ENCODER,
    text_pooling: str = "cls",
    pretrained: bool = True,
    image_encoder_checkpoint: str | Path | None = None,
    image_encoder_kwargs: dict[str, Any] | None = None,
    seeds: Sequence[int] = (0,),
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains a fresh student on `train` for each seed and reports recall@K on `test` (last and best, mean ± std).

    `train` and `test` are normalized-form datasets (a distilled set, a coreset, a real split). A row with several
    captions contributes every (image, caption) pair to training; at test time every caption is a text query.
    Frozen text features are computed once and shared by all seeds.

    Args:
        train: the set to train on, or a function of the seed that returns it (e.g. a random coreset drawn with
            that seed, so that the spread over seeds includes the draw).
        test: the set to measure on (e.g. the Flickr30K Karpathy test split: 1000 images, 5000 captions).
        config: the protocol (default: the `lors` preset).
        image_encoder: a timm model name.
        text_encoder: a transformers model id or folder.
        text_pooling: `cls` (the protocol) or `mean` (for a text encoder that was never pretrained; see
            `FrozenTextEncoder`).
        pretrained: load timm's pretrained weights for the image encoder (the protocol does).
        image_encoder_checkpoint: a local weights file for the image encoder (overrides `pretrained`).
        image_encoder_kwargs: architecture arguments for `timm.create_model`.
        seeds: one run per seed.
        device: `cuda`, `cpu`, ... (default: CUDA when available).
        progress: show progress bars.

    Returns:
        A JSON-ready dict: `protocol`, `student`, `train`/`test` sizes, `runs` (per seed: losses, evaluations, last,
        best, best_epoch, seconds), `summary` (`last` and `best`: metric -> mean/std), `note`, `environment`.

    Example:
        >>> results = evaluate_dataset(distilled, test, protocol_config("lors"), seeds=[0, 1, 2, 3, 4])
        >>> results["summary"]["last"]["r_mean"]
        {'mean': ..., 'std': ...}
    """
    config = config or protocol_config("lors")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("Give at least one seed.")
    started = time.perf_counter()
    test_pairs = prepare_pairs(test, config.image_size, name="the test set")
    texts = FrozenTextEncoder(text_encoder, config.max_text_length, device=device, pooling=text_pooling)
    test_features = texts.encode(test_pairs.captions, batch_size=config.eval_batch_size)
    if not callable(train):
        train_pairs = prepare_pairs(train, config.image_size, name="the training set")
        train_features = texts.encode(train_pairs.captions, batch_size=config.eval_batch_size)
    prepare_seconds = time.perf_counter() - started
    runs = []
    for seed in seeds:
        run_started = time.perf_counter()
        if callable(train):
            train_pairs = prepare_pairs(train(seed), config.image_size, name=f"the training set of seed {seed}")
            train_features = texts.encode(train_pairs.captions, batch_size=config.eval_batch_size)
        torch.manual_seed(seed)
        student = RetrievalStudent.from_timm(
            image_encoder,
            text_dim=texts.hidden_size,
            pretrained=pretrained,
            checkpoint=image_encoder_checkpoint,
            dropout=config.dropout,
            logit_scale=config.logit_scale,
            **(image_encoder_kwargs or {}),
        ).to(device)
        history = train_student(
            student,
            train_pairs.images,
            train_features,
            train_pairs.text_to_image,
            config,
            seed=seed,
            evaluate=lambda s: evaluate_student(s, test_pairs.images, test_features, test_pairs.text_to_image, config),
            progress=progress,
        )
        sizes = {"num_images": train_pairs.num_images, "num_pairs": train_pairs.num_pairs}
        runs.append({"seed": seed, "train": sizes, **history, "seconds": time.perf_counter() - run_started})
    return {
        "protocol": config.to_dict(),
        "student": {
            "image_encoder": image_encoder,
            "image_encoder_pretrained": bool(pretrained or image_encoder_checkpoint is not None),
            "image_encoder_checkpoint": None if image_encoder_checkpoint is None else str(image_encoder_checkpoint),
            "image_encoder_kwargs": _jsonable(image_encoder_kwargs or {}),
            "image_features": int(student.image_encoder.num_features),
            "text_encoder": str(text_encoder),
            "text_pooling": text_pooling,
            "text_features": texts.hidden_size,
        },
        "seeds": seeds,
        "train": runs[0]["train"],
        "test": {"num_images": test_pairs.num_images, "num_texts": test_pairs.num_pairs},
        "runs": runs,
        "summary": {
            "last": summarize([run["last"] for run in runs]),
            "best": summarize([run["best"] for run in runs]),
        },
        "note": BEST_IS_OPTIMISTIC + " std is the sample standard deviation over seeds (ddof=1).",
        "environment": {
            "device": device,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "prepare_seconds": prepare_seconds,
        },
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def mean_std_cell(stats: dict[str, float]) -> str:
    """Formats `{"mean": m, "std": s}` as a table cell, `"m ± s"` with one decimal."""
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def results_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table like the papers' (IR = text->image, TR = image->text), a `last` and a `best` row per set.

    Args:
        rows: (label, results of `evaluate_dataset`) pairs.

    Example:
        >>> print(results_table([("random 100", results)]).splitlines()[0])
        | set | epoch | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | r_mean |
    """
    header = "| set | epoch | " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for label, results in rows:
        seeds = len(results["runs"])
        for which in ("last", "best"):
            stats = results["summary"][which]
            cells = " | ".join(mean_std_cell(stats[key]) for _, key in TABLE_COLUMNS)
            lines.append(f"| {label} ({seeds} seed{'s' if seeds != 1 else ''}) | {which} | {cells} |")
    return "\n".join(lines)
