"""What an EDGE fine-tune tunes (a LoRA on the UNet's attention projections, or DiffFit's biases and norms) and how
those weights are saved and loaded.

Example:
    >>> sorted(difffit_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))))
    ['0.bias', '1.bias', '1.weight']
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from .config import TrainingConfig

# the weight files a fine-tune writes (and each checkpoint holds)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DIFFFIT_WEIGHT_NAME = "difffit_weights.safetensors"
# The attention projections that diffusers' own LoRA scripts adapt (docs/method.md,
# "Library conventions we rely on").
LORA_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]


def add_trainable_parameters(unet: torch.nn.Module, config: TrainingConfig) -> list[torch.nn.Parameter]:
    """Freezes the UNet, then adds a LoRA adapter or unfreezes DiffFit's parameters; returns the trainable list.

    The list (not a `filter` object) is what the optimizer and gradient clipping both receive (docs/method.md,
    "Library conventions we rely on").

    Example:
        >>> params = add_trainable_parameters(unet, parse_args([...]))  # doctest: +SKIP
    """
    unet.requires_grad_(False)
    if config.finetune == "lora":
        from peft import LoraConfig

        lora_config = LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha if config.lora_alpha is not None else config.rank,
            use_dora=config.use_dora,
            init_lora_weights="gaussian",
            target_modules=[name.strip() for name in config.lora_layers.split(",")],
        )
        unet.add_adapter(lora_config)
    else:
        for parameter in difffit_parameters(unet).values():
            parameter.requires_grad_(True)
    return [p for p in unet.parameters() if p.requires_grad]


def difffit_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """DiffFit-style trainable set of the released EDGE code: every bias and every norm layer's affine weights.

    Example:
        >>> sorted(difffit_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))))
        ['0.bias', '1.bias', '1.weight']
    """
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    chosen = {}
    for module_name, module in unet.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, norms):
                chosen[f"{module_name}.{name}" if module_name else name] = parameter
    return chosen


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raises `FloatingPointError` naming the first tensor with a NaN or infinite value (nothing is written).

    Example:
        >>> check_finite({"w": torch.ones(2)}, "edge-lora")
    """
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise FloatingPointError(
                f"Refusing to write {where!r}: weight {name!r} holds NaN or infinite values (the training diverged)."
            )


def save_lora(unet: torch.nn.Module, save_directory: str | Path) -> Path:
    """Writes the UNet's LoRA in diffusers format, with the adapter metadata so `lora_alpha` survives reload.

    Example:
        >>> save_lora(unet, "edge-lora")  # doctest: +SKIP
        PosixPath('edge-lora/pytorch_lora_weights.safetensors')
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    check_finite(state, str(save_directory))
    metadata = unet.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        save_directory, unet_lora_layers=state, unet_lora_adapter_metadata=metadata, safe_serialization=True
    )
    return Path(save_directory) / LORA_WEIGHT_NAME


def load_lora_into_unet(unet: torch.nn.Module, directory: str | Path) -> None:
    """Loads a LoRA saved by `save_lora` into a UNet that already carries the same adapter (resuming)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(str(directory))
    state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{directory}: LoRA keys that the UNet does not have: {result.unexpected_keys[:5]}")


def save_difffit(unet: torch.nn.Module, path: str | Path, base_model: str) -> Path:
    """Writes the DiffFit parameters (biases and norms) to a safetensors file keyed by UNet parameter name."""
    tensors = {name: p.detach().cpu().contiguous() for name, p in difffit_parameters(unet).items()}
    check_finite(tensors, str(path))
    save_file(tensors, str(path), metadata={"format": "pt", "finetune": "difffit", "base_model": base_model})
    return Path(path)


def load_difffit_weights(unet: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Loads a `--finetune difffit` file into a Stable Diffusion UNet (in place) and returns the UNet.

    Raises `ValueError` if the file names a parameter the UNet lacks or has a different shape.

    Example:
        >>> pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
        ... # doctest: +SKIP
        >>> load_difffit_weights(pipe.unet, "edge-difffit/difffit_weights.safetensors")  # doctest: +SKIP
    """
    tensors = load_file(str(path))
    own = dict(unet.named_parameters())
    for name, tensor in tensors.items():
        if name not in own:
            raise ValueError(f"{path}: parameter {name!r} is not in this UNet (a different base model?).")
        if own[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: {name!r} has shape {tuple(tensor.shape)}, the UNet's is {tuple(own[name].shape)}."
            )
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].dtype))
    return unet
