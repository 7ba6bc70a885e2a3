"""The one per-seed loop of the protocol: per seed, a fresh student trained on a set and scored on a fixed test set.

Every student evaluation in the library runs through `RetrievalEvaluator.run_seeds`: `evaluate_dataset` (behind
`diffusers-edge evaluate`) and the demo's `StudentEvaluator` (every row of its tables). The test images and every
test caption's frozen text feature are prepared once and shared by all seeds (in the demo, by all rows too).

Every evaluation uses `diffusers_edge.metrics.retrieval_recall_from_embeddings` on the whole test split. A run
reports the **last** evaluation and the **best** one (highest `r_mean`); the best is selected on the test split,
as LoRS does, so it is optimistic. Several seeds give mean and sample standard deviation (ddof=1).

Example:
    >>> config = protocol_config("lors", epochs=20, image_size=64)
    >>> results = evaluate_dataset(distilled, test, config, image_encoder="resnet10t", seeds=[0, 1, 2])
    >>> print(results_table([("distilled", results)]))
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from ..serialization import jsonable
from .pairs import PairSet, prepare_pairs
from .protocol import ProtocolConfig, protocol_config
from .report import BEST_IS_OPTIMISTIC, summarize_runs
from .student import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, FrozenTextEncoder, RetrievalStudent
from .trainer import evaluate_student, train_student

# What a student trains on: a normalized set, or a function of the seed returning one (e.g. a coreset drawn with it).
TrainingSet = datasets.Dataset | Callable[[int], datasets.Dataset]
# What one seed's run trains on, ready: the flattened pairs and their frozen caption features.
Draw = Callable[[int], tuple[PairSet, torch.Tensor]]


class RetrievalEvaluator:
    """A fixed test set and a student recipe: per seed, trains a fresh student on a set and scores it on the test.

    The test images and the frozen text feature of every test caption are prepared once, at construction, and
    shared by every `evaluate` / `run_seeds` call.

    Args:
        test: the test split (normalized form).
        config: the student protocol (`protocol_config`).
        image_encoder: a timm model name; `image_encoder_kwargs` its architecture arguments.
        text_encoder: the frozen text encoder, a transformers model id or folder; `text_pooling` its pooling (`cls`,
            the protocol's, or `mean`; see `FrozenTextEncoder`).
        device: where the students and the text encoder run (default: CUDA when available).
        progress: show a progress bar per run.
        image_encoder_checkpoint: a local weights file every student's image encoder starts from (overrides
            `pretrained`).
        pretrained: load timm's pretrained weights for the image encoder.

    Example:
        >>> evaluator = RetrievalEvaluator(test, protocol_config("lors", epochs=20, image_size=32), "resnet10t",
        ...                                {"channels": [16, 32, 64, 128]}, "tiny-bert", "mean", pretrained=False)
        >>> evaluator.evaluate(lambda seed: coreset, seeds=[0, 1, 2])["summary"]["last"]["r_mean"]  # doctest: +SKIP
        {'mean': ..., 'std': ...}
    """

    def __init__(
        self,
        test: datasets.Dataset,
        config: ProtocolConfig,
        image_encoder: str = DEFAULT_IMAGE_ENCODER,
        image_encoder_kwargs: dict[str, Any] | None = None,
        text_encoder: str | Path = DEFAULT_TEXT_ENCODER,
        text_pooling: str = "cls",
        device: str | None = None,
        progress: bool = True,
        image_encoder_checkpoint: str | Path | None = None,
        pretrained: bool = True,
    ) -> None:
        self.config = config
        self.image_encoder = image_encoder
        self.image_encoder_kwargs = dict(image_encoder_kwargs or {})
        self.pretrained = pretrained
        self.image_encoder_checkpoint = image_encoder_checkpoint
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.progress = progress
        self.image_features: int | None = None  # the image encoder's feature size, known once a student is built
        self.test = prepare_pairs(test, config.image_size, name="the test set")
        self.texts = FrozenTextEncoder(text_encoder, config.max_text_length, device=self.device, pooling=text_pooling)
        self.test_features = self.encode(self.test.captions)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Frozen text features of `captions` (rows in order)."""
        return self.texts.encode(list(captions), batch_size=self.config.eval_batch_size)

    def prepare(self, dataset: datasets.Dataset, name: str) -> tuple[PairSet, torch.Tensor]:
        """`dataset`'s (image, caption) pairs and their frozen caption features; `name` names it in errors."""
        pairs = prepare_pairs(dataset, self.config.image_size, name=name)
        return pairs, self.encode(pairs.captions)

    def draw(self, train: TrainingSet) -> Draw:
        """What each seed trains on: a fixed set is prepared now, once, for every seed; for a function of the seed,
        each run calls it and prepares its set (inside the run's time)."""
        if callable(train):
            return lambda seed: self.prepare(train(seed), name=f"the training set of seed {seed}")
        prepared = self.prepare(train, name="the training set")
        return lambda seed: prepared

    def new_student(self) -> RetrievalStudent:
        """A fresh student on the evaluator's device (seed the global RNG first: it draws the initial weights)."""
        student = RetrievalStudent.from_timm(
            self.image_encoder,
            text_dim=self.texts.hidden_size,
            pretrained=self.pretrained,
            checkpoint=self.image_encoder_checkpoint,
            dropout=self.config.dropout,
            logit_scale=self.config.logit_scale,
            **self.image_encoder_kwargs,
        ).to(self.device)
        self.image_features = int(student.image_encoder.num_features)
        return student

    def score(self, student: RetrievalStudent) -> dict[str, float]:
        """Recall@K (percent) of `student` on the test set."""
        return evaluate_student(student, self.test.images, self.test_features, self.test.text_to_image, self.config)

    def run_seeds(self, draw: Draw, seeds: Sequence[int]) -> list[dict[str, Any]]:
        """THE per-seed loop: per seed, `draw(seed)`, then `torch.manual_seed(seed)`, a fresh student, and
        `train_student` scoring it on the protocol's schedule.

        Returns:
            Per seed: `{"seed", "train": {"num_images", "num_pairs"}, "losses", "evaluations", "last", "best",
            "best_epoch", "seconds"}`.
        """
        runs = []
        for seed in seeds:
            started = time.perf_counter()
            pairs, features = draw(seed)
            torch.manual_seed(seed)
            student = self.new_student()
            history = train_student(
                student,
                pairs.images,
                features,
                pairs.text_to_image,
                self.config,
                seed=seed,
                evaluate=self.score,
                progress=self.progress,
            )
            sizes = {"num_images": pairs.num_images, "num_pairs": pairs.num_pairs}
            runs.append({"seed": seed, "train": sizes, **history, "seconds": time.perf_counter() - started})
        return runs

    def evaluate(self, train: TrainingSet, seeds: Sequence[int]) -> dict[str, Any]:
        """Per seed, a fresh student trained on `train` (or `train(seed)`); returns runs and mean ± std of last and
        best.

        Returns:
            `{"protocol", "seeds", "train": the first run's sizes, "runs", "summary": {"last", "best"}}`.
        """
        runs = self.run_seeds(self.draw(train), seeds)
        return {
            "protocol": self.config.to_dict(),
            "seeds": list(seeds),
            "train": runs[0]["train"],
            "runs": runs,
            "summary": summarize_runs(runs),
        }


def evaluate_dataset(
    train: TrainingSet,
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
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("Give at least one seed.")
    started = time.perf_counter()
    evaluator = RetrievalEvaluator(
        test,
        config,
        image_encoder,
        image_encoder_kwargs,
        text_encoder,
        text_pooling,
        pretrained=pretrained,
        image_encoder_checkpoint=image_encoder_checkpoint,
        device=device,
        progress=progress,
    )
    draw = evaluator.draw(train)
    prepare_seconds = time.perf_counter() - started
    runs = evaluator.run_seeds(draw, seeds)
    return {
        "protocol": config.to_dict(),
        "student": {
            "image_encoder": image_encoder,
            "image_encoder_pretrained": bool(pretrained or image_encoder_checkpoint is not None),
            "image_encoder_checkpoint": None if image_encoder_checkpoint is None else str(image_encoder_checkpoint),
            "image_encoder_kwargs": jsonable(image_encoder_kwargs or {}),
            "image_features": evaluator.image_features,
            "text_encoder": str(text_encoder),
            "text_pooling": text_pooling,
            "text_features": evaluator.texts.hidden_size,
        },
        "seeds": seeds,
        "train": runs[0]["train"],
        "test": {"num_images": evaluator.test.num_images, "num_texts": evaluator.test.num_pairs},
        "runs": runs,
        "summary": summarize_runs(runs),
        "note": BEST_IS_OPTIMISTIC + " std is the sample standard deviation over seeds (ddof=1).",
        "environment": {
            "device": evaluator.device,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "prepare_seconds": prepare_seconds,
        },
    }
