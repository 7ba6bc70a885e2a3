"""The attribute judge: a small CNN that reads shape, colour, size and position off a captioned-shapes image.

It scores prompt following of a generator on the shapes data: generate from a caption, let the judge classify the
picture, compare with the attributes the caption names (`diffusers_edge.shapes.objects.parse_caption`). Such a
judge was measured >= 99.8% accurate on real test images, and checking prompt following with it proved needed
before trusting student numbers (docs/method.md, "The tiny stacks"). The trained judge ships in the shapes stack
(`shapes_stack_path("judge")`) as `model.safetensors` + `config.json`; nothing is unpickled.

Example:
    >>> from diffusers_edge.shapes.objects import ShapeObject, render_shapes
    >>> judge = load_judge()  # doctest: +SKIP
    >>> judge_images([render_shapes([ShapeObject("circle", "red", "large", "center")])], judge)  # doctest: +SKIP
    {'shape': ['circle'], 'color': ['red'], 'size': ['large'], 'position': ['center']}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

JUDGE_CONFIG_NAME = "config.json"
JUDGE_WEIGHTS_NAME = "model.safetensors"
PAIRED_ATTRIBUTES = ("shape", "color")
"""The prompt-following score the stack targets: shape and colour both right (issue 7)."""


class AttributeJudge(nn.Module):
    """A small CNN with one classification head per attribute.

    Three stages of two 3x3 convolutions (BatchNorm, ReLU) and a 2x2 max-pool, then the flattened map (position
    needs the layout, so no global pooling) through a hidden layer into one linear head per attribute. Inputs are
    RGB in [0, 1], shape `(N, 3, image_size, image_size)`; the model normalises them itself.

    Args:
        labels: attribute name -> its class names in head order, e.g. `{"shape": ["circle", ...], ...}`.
        channels: output channels of the three stages.
        hidden: width of the shared hidden layer.
        image_size: input side in pixels (a multiple of 8).

    Example:
        >>> judge = AttributeJudge({"shape": ["circle", "square"], "color": ["red", "blue"]})
        >>> {k: v.shape for k, v in judge(torch.rand(2, 3, 32, 32)).items()}
        {'shape': torch.Size([2, 2]), 'color': torch.Size([2, 2])}
    """

    def __init__(
        self,
        labels: Mapping[str, Sequence[str]],
        channels: Sequence[int] = (16, 32, 64),
        hidden: int = 128,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if not labels or any(len(names) < 2 for names in labels.values()):
            raise ValueError(f"Every judged attribute needs at least two classes, got {dict(labels)}.")
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x poolings), got {image_size}.")
        self.config = {
            "labels": {k: list(v) for k, v in labels.items()},
            "channels": list(channels),
            "hidden": hidden,
            "image_size": image_size,
        }
        layers: list[nn.Module] = []
        previous = 3
        for width in channels:
            for _ in range(2):
                layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                previous = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        flat = previous * side * side
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(names)) for name, names in labels.items()})

    @property
    def labels(self) -> dict[str, list[str]]:
        return self.config["labels"]

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for RGB `pixels` in [0, 1] of shape `(N, 3, image_size, image_size)`."""
        hidden = self.hidden(self.features(pixels * 2 - 1))
        return {name: head(hidden) for name, head in self.heads.items()}

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Writes `config.json` and `model.safetensors` into `save_directory` (created if needed)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / JUDGE_CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / JUDGE_WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AttributeJudge:
        """Loads a judge written by `save_pretrained`, in eval mode."""
        folder = Path(folder)
        for name in (JUDGE_CONFIG_NAME, JUDGE_WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"Judge folder {folder} has no {name}.")
        config = json.loads((folder / JUDGE_CONFIG_NAME).read_text(encoding="utf-8"))
        judge = cls(**config)
        judge.load_state_dict(load_file(str(folder / JUDGE_WEIGHTS_NAME)))
        return judge.eval()


def load_judge(path: str | Path | None = None, device: str | torch.device = "cpu") -> AttributeJudge:
    """Loads the attribute judge from `path` (default: the one shipped in the shapes stack), in eval mode.

    Example:
        >>> judge = load_judge()  # doctest: +SKIP
        >>> sorted(judge.labels)  # doctest: +SKIP
        ['color', 'position', 'shape', 'size']
    """
    if path is None:
        from .stack import shapes_stack_path

        path = shapes_stack_path("judge")
    return AttributeJudge.from_pretrained(path).to(device)


def images_to_tensor(images: Any, image_size: int = 32) -> torch.Tensor:
    """Converts images to a float tensor `(N, 3, image_size, image_size)` in [0, 1].

    Accepts a sequence of PIL images, a uint8 array `(N, H, W, 3)`, a float array `(N, H, W, 3)` in [0, 1] (what
    `StableDiffusionPipeline(output_type="np")` returns) or a float tensor `(N, 3, H, W)` in [0, 1]. Other sizes
    are resized (bilinear, antialiased).

    Example:
        >>> images_to_tensor(np.zeros((2, 32, 32, 3), dtype=np.uint8)).shape
        torch.Size([2, 3, 32, 32])
    """
    if isinstance(images, torch.Tensor):
        pixels = images.detach().float().cpu()
    elif isinstance(images, np.ndarray):
        array = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"An image array must be (N, H, W, 3), got shape {images.shape}.")
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2)
    else:
        images = list(images)
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ValueError(f"Image {i} is a {type(image).__name__}, expected a PIL image, array or tensor.")
        array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2)
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"Image tensors must be (N, 3, H, W), got shape {tuple(pixels.shape)}.")
    if pixels.shape[-2:] != (image_size, image_size):
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", antialias=True)
    return pixels.clamp(0, 1)


@torch.no_grad()
def judge_images(images: Any, judge: AttributeJudge | None = None, batch_size: int = 256) -> dict[str, list[str]]:
    """Classifies every attribute of every image; returns attribute -> predicted class names (one per image).

    Args:
        images: anything `images_to_tensor` accepts.
        judge: a loaded judge; `None` loads the shipped one.
        batch_size: images per forward pass.

    Example:
        >>> from diffusers_edge.shapes.objects import ShapeObject, render_shapes
        >>> judge_images([render_shapes([ShapeObject("cross", "blue", "small", "top")])])  # doctest: +SKIP
        {'shape': ['cross'], 'color': ['blue'], 'size': ['small'], 'position': ['top']}
    """
    judge = load_judge() if judge is None else judge
    judge.eval()
    device = next(judge.parameters()).device
    pixels = images_to_tensor(images, judge.config["image_size"])
    predictions: dict[str, list[str]] = {name: [] for name in judge.labels}
    for start in range(0, len(pixels), batch_size):
        logits = judge(pixels[start : start + batch_size].to(device))
        for name, names in judge.labels.items():
            predictions[name] += [names[i] for i in logits[name].argmax(-1).tolist()]
    return predictions


def score_prompt_following(
    images: Any,
    targets: Sequence[Mapping[str, str]],
    judge: AttributeJudge | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Percent of images whose judged attributes match the requested ones.

    Returns one accuracy per attribute the targets name, `"shape+color"` (both right, the stack's target), and
    `"all"` (every requested attribute right).

    Args:
        images: the generated images (anything `images_to_tensor` accepts).
        targets: per image, attribute -> requested class name, e.g. `parse_caption(prompt)`.
        judge: a loaded judge; `None` loads the shipped one.
        batch_size: images per forward pass.

    Example:
        >>> from diffusers_edge.shapes.objects import parse_caption
        >>> prompts = ["a big red disk in the middle"]
        >>> score_prompt_following(images, [parse_caption(p) for p in prompts])  # doctest: +SKIP
        {'shape': 100.0, 'color': 100.0, 'size': 100.0, 'position': 100.0, 'shape+color': 100.0, 'all': 100.0}
    """
    judge = load_judge() if judge is None else judge
    predictions = judge_images(images, judge, batch_size)
    count = len(next(iter(predictions.values())))
    if len(targets) != count:
        raise ValueError(f"Got {count} images but {len(targets)} targets.")
    if count == 0:
        raise ValueError("No images to score.")
    names = list(targets[0])
    for i, target in enumerate(targets):
        unknown = [k for k in target if k not in judge.labels]
        if list(target) != names or unknown:
            raise ValueError(f"Target {i} names {list(target)}; expected {names}, all among {list(judge.labels)}.")
    correct = {k: np.array([predictions[k][i] == t[k] for i, t in enumerate(targets)]) for k in names}
    scores = {k: 100.0 * float(v.mean()) for k, v in correct.items()}
    if all(k in correct for k in PAIRED_ATTRIBUTES):
        scores["shape+color"] = 100.0 * float(np.logical_and(*(correct[k] for k in PAIRED_ATTRIBUTES)).mean())
    scores["all"] = 100.0 * float(np.logical_and.reduce(list(correct.values())).mean())
    return scores


@torch.no_grad()
def read_scenes(images: Any, judge: AttributeJudge, batch_size: int = 256) -> tuple[list[Any], np.ndarray]:
    """Reads the scene of every image with a scene judge (one head per `diffusers_edge.shapes.scenes.SCENE_LABELS`).

    A cell is empty when its shape head says `"none"`; otherwise its colour and size are the most likely classes
    other than `"none"`, so every reading is a valid `Scene`. The confidence of a reading is the lowest probability
    among the classes read (over every head it used): how sure the judge is of its least certain decision.

    Returns:
        The scenes and their confidences, an array of `len(images)` values in (0, 1].

    Example:
        >>> judge = load_judge(shapes_stack_path("judge", config="scenes"))  # doctest: +SKIP
        >>> scenes, confidence = read_scenes(images, judge)  # doctest: +SKIP
    """
    from .scenes import CELL_COLUMNS, NONE, SCENE_LABELS, scene_from_columns

    if set(judge.labels) != set(SCENE_LABELS):
        raise ValueError(f"This judge reads {sorted(judge.labels)}, not the scene columns; load a scenes judge.")
    judge.eval()
    device = next(judge.parameters()).device
    pixels = images_to_tensor(images, judge.config["image_size"])
    scenes, confidences = [], []
    for start in range(0, len(pixels), batch_size):
        logits = judge(pixels[start : start + batch_size].to(device))
        probabilities = {name: values.softmax(-1).cpu() for name, values in logits.items()}
        for i in range(len(probabilities["background"])):
            readings = {"background": _most_likely(probabilities["background"][i], judge.labels["background"])}
            for cell in CELL_COLUMNS.values():
                shape = _most_likely(probabilities[f"shape_{cell}"][i], judge.labels[f"shape_{cell}"])
                readings[f"shape_{cell}"] = shape
                for name in (f"color_{cell}", f"size_{cell}"):
                    if shape[0] == NONE:
                        readings[name] = (NONE, 1.0)
                    else:
                        readings[name] = _most_likely(probabilities[name][i], judge.labels[name], exclude=NONE)
            scenes.append(scene_from_columns({name: value for name, (value, _) in readings.items()}))
            confidences.append(min(p for _, p in readings.values()))
    return scenes, np.asarray(confidences)


def _most_likely(probabilities: torch.Tensor, names: Sequence[str], exclude: str | None = None) -> tuple[str, float]:
    """The most likely class name (other than `exclude`) and its probability."""
    if exclude is not None:
        probabilities = probabilities.clone()
        probabilities[list(names).index(exclude)] = 0.0
    best = int(probabilities.argmax())
    return names[best], float(probabilities[best])


def score_claims(
    images: Any, captions: Sequence[str], judge: AttributeJudge, confident: float = 0.9, batch_size: int = 256
) -> dict[str, float]:
    """Claim accuracy of `captions[i]` on `images[i]` as the scene judge reads the images.

    Returns `diffusers_edge.shapes.scenes.claim_accuracy` of the captions against the judged scenes (percent,
    overall and per claim kind), plus `confident` (percent of images the judge read with confidence at least
    `confident`) and `all_confident` (claim accuracy on those images only).

    Example:
        >>> score_claims(images, ["a red circle left of a blue box"], judge)  # doctest: +SKIP
        {'all': 100.0, 'relation': 100.0, 'confident': 100.0, 'all_confident': 100.0}
    """
    from .scenes import claim_accuracy

    scenes, confidences = read_scenes(images, judge, batch_size)
    if len(captions) != len(scenes):
        raise ValueError(f"Got {len(scenes)} images but {len(captions)} captions.")
    scores = claim_accuracy(captions, scenes)
    sure = confidences >= confident
    scores["confident"] = 100.0 * float(sure.mean())
    if sure.any():
        kept = np.flatnonzero(sure)
        scores["all_confident"] = claim_accuracy([captions[i] for i in kept], [scenes[i] for i in kept])["all"]
    return scores
