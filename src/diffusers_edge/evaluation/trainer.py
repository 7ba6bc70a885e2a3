"""Training one retrieval student on (image, caption-feature) pairs and measuring its recall@K, the protocol way.

`train_student` runs the protocol's SGD schedule (`ProtocolConfig`) over seeded batches, with EDGE's augmentation
when the protocol asks for it, and evaluates on the protocol's schedule; `evaluate_student` embeds a test set with
the student and computes recall@K with `diffusers_edge.metrics.retrieval_recall_from_embeddings` on the whole test
split. The per-seed loop around them is `diffusers_edge.evaluation.evaluator`.

Example:
    >>> config = protocol_config("lors", epochs=20, image_size=32)
    >>> history = train_student(
    ...     student, train.images, train_features, train.text_to_image, config, seed=0,
    ...     evaluate=lambda s: evaluate_student(s, test.images, test_features, test.text_to_image, config),
    ... )
    >>> history["last"]["r_mean"], history["best_epoch"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .protocol import ProtocolConfig
from .student import RetrievalStudent, normalize_images


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
