"""Where the tiny pretrained stacks for the captioned-shapes data are installed.

`examples/shapes/train_tiny_stack.py` trains them and writes them into this package's `assets/` folder
(`shapes-stack/` for `one_object`, `scenes-stack/` for `scenes`), which setup.py ships as package
data; docs/shapes-stack.md describes every component. Each component folder loads with the same `from_pretrained`
call as the real model it stands in for.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STACK_COMPONENTS", "STACK_FOLDERS", "shapes_stack_path"]

STACK_COMPONENTS: dict[str, str] = {
    "clip": "CLIPModel + CLIPProcessor (plays openai/clip-vit-base-patch32)",
    "stable-diffusion": "StableDiffusionPipeline folder (plays stable-diffusion-v1-5)",
    "captioner": "VisionEncoderDecoderModel + ViTImageProcessor + BertTokenizer (plays the multimodal LLM)",
    "text-encoder": "BertModel + BertTokenizer pretrained with masked-LM on captions (plays bert-base-uncased)",
    "student-image-encoder": "a timm model name + kwargs in config.json, and for scenes its pretrained weights "
    "(plays nfnet_l0)",
    "judge": "attribute classifier (diffusers_edge.shapes.judge) that scores generated images (per grid cell for "
    "scenes)",
}
"""The folders of the stack and what each one plays."""


STACK_FOLDERS: dict[str, str] = {"one_object": "shapes-stack", "scenes": "scenes-stack"}
"""The captioned-shapes config each shipped stack was trained on -> its folder under this package's `assets/`."""


def shapes_stack_path(component: str | None = None, config: str = "one_object") -> Path:
    """Returns the installed stack folder of a captioned-shapes config, or one component's folder inside it.

    Args:
        component: one of `STACK_COMPONENTS` (`"clip"`, `"stable-diffusion"`, `"captioner"`, `"text-encoder"`,
            `"student-image-encoder"`, `"judge"`), or `None` for the stack folder itself.
        config: the captioned-shapes config the stack was trained on (`STACK_FOLDERS`: `one_object` or `scenes`).

    Raises:
        ValueError: `component` is not a stack component, or no stack is shipped for `config`.
        FileNotFoundError: the folder is missing (the stack was not trained or not installed with the package).

    Example:
        >>> from transformers import CLIPModel
        >>> model = CLIPModel.from_pretrained(shapes_stack_path("clip"))  # doctest: +SKIP
        >>> shapes_stack_path("judge").name
        'judge'
    """
    if config not in STACK_FOLDERS:
        raise ValueError(f"No stack is shipped for config {config!r}; choose one of {list(STACK_FOLDERS)}.")
    root = Path(__file__).resolve().parent / "assets" / STACK_FOLDERS[config]
    if component is not None and component not in STACK_COMPONENTS:
        raise ValueError(f"Unknown shapes-stack component {component!r}; choose one of {list(STACK_COMPONENTS)}.")
    path = root if component is None else root / component
    if not path.is_dir():
        raise FileNotFoundError(
            f"The shapes stack folder {path} is missing: re-train it with examples/shapes/train_tiny_stack.py "
            "or reinstall diffusers-edge with its package data."
        )
    return path
