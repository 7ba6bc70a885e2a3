"""Resumable checkpoints of an EDGE fine-tune: what `checkpoint-N` holds, which are complete, which one a run resumes
from, and how accelerate saves and loads them (only the trainable weights, plus its optimizer and RNG states).

Example:
    >>> resolve_checkpoint(None, "edge-lora") is None
    True
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.logging import get_logger
from safetensors.torch import load_file

from .adapters import (
    DIFFFIT_WEIGHT_NAME,
    LORA_WEIGHT_NAME,
    load_difffit_weights,
    load_lora_into_unet,
    save_difffit,
    save_lora,
)

if TYPE_CHECKING:
    from .config import TrainingConfig

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_SUFFIX = ".partial"
# the files accelerate's `save_state` writes for one optimizer and one scheduler
CHECKPOINT_STATE_FILES = ("optimizer.bin", "scheduler.bin")


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete, readable checkpoint (naming the file), or None if it is.

    A checkpoint holds the trainable weights and accelerate's optimizer and scheduler states. The zip archives torch
    writes and the safetensors files are checked for truncation and damage without unpickling anything.

    Example:
        >>> checkpoint_problem("edge-lora/checkpoint-500") is None
        True
    """
    folder = Path(folder)
    if folder.name.endswith(PARTIAL_SUFFIX):
        return "a save that did not finish"
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    weights = names & {LORA_WEIGHT_NAME, DIFFFIT_WEIGHT_NAME}
    missing = [] if weights else [f"{LORA_WEIGHT_NAME} or {DIFFFIT_WEIGHT_NAME}"]
    missing += [name for name in CHECKPOINT_STATE_FILES if name not in names]
    if missing:
        return f"incomplete: no {', '.join(missing)}"
    for name in sorted(names):
        path = folder / name
        try:
            if name.endswith(".safetensors"):
                load_file(str(path))
            elif name.endswith(".bin"):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad!r} fails its CRC check")
        except Exception as error:  # safetensors and zipfile raise several types for damaged files
            return f"{name} is damaged ({type(error).__name__}: {error})"
    return None


def list_checkpoints(output_dir: str | Path) -> tuple[list[Path], list[str]]:
    """The complete `checkpoint-N` folders of `output_dir` by step, and a note for each `checkpoint-*` left out.

    Example:
        >>> complete, skipped = list_checkpoints("edge-lora")
        >>> [p.name for p in complete], skipped
        (['checkpoint-500', 'checkpoint-1000'], ['checkpoint-1500.partial (a save that did not finish)'])
    """
    output_dir = Path(output_dir)
    complete, skipped = [], []
    folders = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None and not CHECKPOINT_PATTERN.match(folder.name):
            problem = "not named checkpoint-<step>, so its step is unknown"
        if problem is None:
            complete.append(folder)
        else:
            skipped.append(f"{folder.name} ({problem})")
    complete.sort(key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))
    return complete, skipped


def checkpoint_step(folder: str | Path, flag: str = "--resume_from_checkpoint") -> int:
    """The optimiser step a `checkpoint-N` folder was saved at (`ValueError` naming the folder otherwise).

    Example:
        >>> checkpoint_step("edge-lora/checkpoint-500")
        500
    """
    match = CHECKPOINT_PATTERN.match(Path(folder).name)
    if match is None:
        raise ValueError(
            f"{flag} {str(folder)!r}: a checkpoint folder must be named checkpoint-<step> (the step the run resumes "
            "at is read from its name); rename it, e.g. to checkpoint-500."
        )
    return int(match.group(1))


def resolve_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder `--resume_from_checkpoint` names; `None` for a fresh start.

    `latest` picks the highest complete `checkpoint-N` in `output_dir` (or `None` if there is none); folders it
    skips (a save interrupted by a kill, a damaged file, a name without a step) are named in a warning. Any other
    value is a folder (absolute, or relative to `output_dir`) that must exist, be named `checkpoint-N` and be
    complete; otherwise `ValueError` / `FileNotFoundError` names the problem before any model is loaded.

    Example:
        >>> resolve_checkpoint(None, "edge-lora") is None
        True
    """
    if resume is None:
        return None
    output_dir = Path(output_dir)
    if resume == "latest":
        complete, skipped = list_checkpoints(output_dir)
        if skipped:
            chosen = f"resuming from {complete[-1].name}" if complete else "starting a new run"
            warnings.warn(
                f"--resume_from_checkpoint latest skipped {'; '.join(skipped)} in {str(output_dir)!r}; {chosen}.",
                stacklevel=2,
            )
        return complete[-1] if complete else None
    for candidate in (Path(resume), output_dir / resume):
        if candidate.is_dir():
            checkpoint_step(candidate)
            problem = checkpoint_problem(candidate)
            if problem is not None:
                raise ValueError(
                    f"--resume_from_checkpoint {str(candidate)!r} cannot be resumed from: {problem}. Resume from an "
                    "earlier checkpoint (or `latest`, which skips such folders)."
                )
            return candidate
    raise FileNotFoundError(
        f"--resume_from_checkpoint {resume!r} is neither a folder nor a folder inside "
        f"--output_dir {str(output_dir)!r}."
    )


def register_checkpoint_hooks(accelerator: Any, config: TrainingConfig) -> None:
    """Checkpoints hold only the trainable weights (LoRA or DiffFit), plus accelerate's optimizer and RNG states."""

    def save_hook(models: list, weights: list, directory: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                unet = accelerator.unwrap_model(model)
                if config.finetune == "lora":
                    save_lora(unet, directory)
                else:
                    save_difffit(unet, Path(directory) / DIFFFIT_WEIGHT_NAME, config.pretrained_model_name_or_path)
        weights.clear()

    def load_hook(models: list, directory: str) -> None:
        while models:
            unet = accelerator.unwrap_model(models.pop())
            if config.finetune == "lora":
                load_lora_into_unet(unet, directory)
            else:
                load_difffit_weights(unet, Path(directory) / DIFFFIT_WEIGHT_NAME)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Any, config: TrainingConfig, output_dir: Path, step: int) -> None:
    """Saves to `checkpoint-N.partial`, then renames it to `checkpoint-N`: a kill mid-save leaves no `checkpoint-N`
    that `--resume_from_checkpoint latest` could pick (it skips the partial folder and says so)."""
    final, partial = output_dir / f"checkpoint-{step}", output_dir / f"checkpoint-{step}{PARTIAL_SUFFIX}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted save of the same step
        if config.checkpoints_total_limit is not None:
            existing, _ = list_checkpoints(output_dir)
            for old in existing[: max(0, len(existing) - config.checkpoints_total_limit + 1)]:
                logger.info("removing old checkpoint %s", old)
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # an incomplete or earlier save of the same step (e.g. a run resumed from before it)
            logger.info("replacing %s", final)
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
