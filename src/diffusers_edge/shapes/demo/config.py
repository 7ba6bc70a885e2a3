"""The demo's settings: every knob of `run_demo` in one dataclass, and the rows its report holds.

Where a demo setting is also a training flag it has the flag's name (`max_train_steps`, `rank`, ...); where its
default is the training default it is read from `TrainingConfig` / `EDGELossConfig`, so it is written once.

Example:
    >>> config = DemoConfig.quick_preset(output_dir="edge-demo-quick")
    >>> config.budgets, config.loss_max_timestep
    ([20], 500)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...evaluation.protocol import ProtocolConfig, protocol_config
from ...flags import flag
from ...training.config import TrainingConfig
from ...training.objective import CLIP_LOSS_INPUTS, EDGELossConfig
from ..stack import STACK_FOLDERS, shapes_stack_path

REAL_ROWS = ("random coreset", "herding", "k-center")
GENERATED_ROWS = ("plain generation", "EDGE w/o caption synthesis", "EDGE", "EDGE + k-center selection")
ABLATION_ROWS = ("EDGE w/o L_C", "EDGE w/o L_D")
SPLIT_ROW = "random coreset at EDGE's split"
FULL_ROW = "full train split"
ROW_NOTES = {
    "random coreset": "real train pairs drawn at random (1 caption per image; each student seed draws its own)",
    "herding": "real train pairs chosen by herding in the tiny CLIP's joint image+text space (1 caption per image)",
    "k-center": "real train pairs chosen by greedy k-center in the same space (1 caption per image; seeded start)",
    SPLIT_ROW: "real train pairs drawn at random, split like the EDGE rows: N / captions_per_image images with "
    "captions_per_image captions each (what EDGE's sets would score if its images were real ones)",
    "plain generation": "the untuned tiny SD, prompts = randomly chosen original captions, 1 caption per image",
    "EDGE w/o caption synthesis": "the EDGE-tuned SD (LoRA, L_C + L_D), same prompts and seeds, 1 caption per image",
    "EDGE": "the EDGE-tuned SD, N/2 images, each with its prompt + 1 caption by the tiny captioner",
    "EDGE + k-center selection": "as EDGE, prompts chosen by k-center over the tiny CLIP's caption embeddings",
    "EDGE w/o L_C": "as EDGE, from a fine-tune without the contrastive loss (its weight 0; same seed and steps)",
    "EDGE w/o L_D": "as EDGE, from a fine-tune without the diversity loss (its weight 0; same seed and steps)",
    FULL_ROW: "every train image with all its captions: the upper reference",
}

@dataclass
class DemoConfig:
    """Every setting of the demo (the defaults are the ~7-minute CPU run; `quick_preset` the smoke run).

    Each field but `quick` is a flag of `diffusers-edge demo` (`diffusers_edge.flags`: its help text rides on the
    field, and `diffusers-edge demo --help` quotes the defaults written here).

    Attributes:
        output_dir: where `report.md`, `results.json`, `samples.png` and `sets/` go.
        shapes_config: the captioned-shapes world and its stack (`scenes`, the default, or `one_object`).
        cache_dir: datasets cache and cached pool embeddings / full-split reference (default `output_dir/cache`).
        pretrained_model_name_or_path: the Stable Diffusion folder both generators start from (default: the
            stack's `stable-diffusion/`); it must draw 32 px shapes with the stack's CLIP tokenizer.
        budgets: distilled-set sizes in (image, caption) pairs.
        seeds: one student run per seed and generated set (coresets draw their pairs with the student seed).
        generation_seeds: one fine-tune, prompt selection and set of generated images per seed; every generated
            row is measured over generation seeds x student seeds.
        ablations: also fine-tune without L_C and without L_D (rows `ABLATION_ROWS`, distilled as the EDGE row).
        max_train_steps: EDGE fine-tuning steps (LoRA).
        train_batch_size: images per fine-tuning step.
        learning_rate: LoRA learning rate.
        rank: LoRA rank.
        lora_layers: comma-separated UNet modules LoRA adapts (`None`: the training default, every attention
            projection; `"attn2.to_k,attn2.to_v"`: cross-attention keys and values only).
        contrastive_weight, diversity_weight, denoise_weight: the EDGE objective's weights.
        loss_max_timestep: only timesteps <= this enter L_C / L_D (see docs/training.md).
        clip_loss_inputs: what L_C / L_D see: `"one_step"` (x0 of noisy train latents, the paper) or `"rollout"`
            (the generator's own 4-step DDIM samples at `rollout_guidance_scale`; docs/demo.md measures both).
        clip_batch_size: at most this many samples per batch enter L_C / L_D (`None`: all eligible).
        rollout_guidance_scale: classifier-free guidance of the fine-tune's rollouts (`clip_loss_inputs="rollout"`;
            the fine-tune's `--rollout_guidance_scale`). Its default, the training default, equals
            `guidance_scale`'s, the guidance the distilled sets are generated with; set both to keep them equal.
        num_inference_steps: DDIM steps per generated image.
        guidance_scale: classifier-free guidance of every generator.
        captions_per_image: captions per EDGE image (the prompt + synthesized ones; EDGE's best: 2).
        student_epochs: student training epochs on every budget-size set.
        student_batch_size: student batch size.
        student_eval_every: evaluate the student every N epochs (the last epoch always).
        student_lr: SGD learning rate of the student.
        student_channels: stage widths of the student's timm `resnet10t` when it starts from random weights.
        student_pretrained: start the student's image encoder from the stack's pretrained one (its architecture and
            weights, `student-image-encoder/`); `None`: when the stack ships weights (`scenes` does).
        test_images: test images used for recall@K (the first N of the 1000-image test split).
        full_images: train images of the full-split reference (5000 = all of them).
        full_epochs: epochs of the full-split reference (an epoch there is 25000 pairs).
        num_threads: torch CPU threads (1 measured fastest on a loaded 2-core machine).
        device: `cpu` or `cuda` (default: CUDA when available).
        progress: show progress bars.
        quick: marks a smoke run in the report.
    """

    output_dir: str = flag(default="edge-demo", help="where report.md, results.json, ... go")
    shapes_config: str = flag(
        default="scenes", help="the captioned-shapes world and its stack", choices=tuple(STACK_FOLDERS)
    )
    cache_dir: str | None = flag(default=None, help="data and cached embeddings (default: OUTPUT_DIR/cache)")
    pretrained_model_name_or_path: str | None = flag(
        default=None, help="Stable Diffusion folder the generators start from (default: the stack's)"
    )
    budgets: list[int] = flag(default_factory=lambda: [100, 200], help="distilled-set sizes in pairs")
    seeds: list[int] = flag(default_factory=lambda: [0, 1, 2], help="student seeds")
    generation_seeds: list[int] = flag(
        default_factory=lambda: [0], help="one fine-tune, prompt draw and image set per seed"
    )
    ablations: bool = flag(
        default=False, help="also fine-tune without L_C and without L_D (rows 'EDGE w/o L_C', 'EDGE w/o L_D')"
    )
    # the fine-tune's settings carry the training flags' names; the demo's earlier names stay accepted
    max_train_steps: int = flag(default=100, help="EDGE fine-tuning steps", aliases=["--train_steps"])
    train_batch_size: int = flag(default=32, help="fine-tuning batch")
    learning_rate: float = flag(default=5e-4, help="LoRA learning rate")
    rank: int = flag(default=TrainingConfig.rank, help="LoRA rank", aliases=["--lora_rank"])
    lora_layers: str | None = flag(
        default=None,
        help="UNet modules LoRA adapts, comma-separated (default: every attention projection; "
        "attn2.to_k,attn2.to_v: cross-attention keys and values)",
    )
    contrastive_weight: float = flag(default=EDGELossConfig.contrastive_weight, help="weight of L_C")
    diversity_weight: float = flag(default=EDGELossConfig.diversity_weight, help="weight of L_D")
    denoise_weight: float = flag(default=EDGELossConfig.denoise_weight, help="weight of the denoising MSE")
    loss_max_timestep: int = flag(default=EDGELossConfig.loss_max_timestep, help="timesteps entering L_C/L_D")
    clip_loss_inputs: str = flag(
        default=EDGELossConfig.clip_loss_inputs,
        help="what L_C/L_D see: one-step x0 of noisy train latents or 4-step samples",
        choices=CLIP_LOSS_INPUTS,
    )
    clip_batch_size: int | None = flag(default=None, help="samples per batch in L_C/L_D at most (default: all)")
    rollout_guidance_scale: float = flag(
        default=TrainingConfig.rollout_guidance_scale,
        help="classifier-free guidance of the fine-tune's rollouts (with --clip_loss_inputs rollout)",
    )
    num_inference_steps: int = flag(default=10, help="DDIM steps per generated image", aliases=["--inference_steps"])
    guidance_scale: float = flag(default=3.0, help="classifier-free guidance of the generators")
    captions_per_image: int = flag(default=2, help="captions per EDGE image")
    student_epochs: int = flag(default=20, help="student epochs on budget-size sets")
    student_batch_size: int = flag(default=32, help="student batch")
    student_eval_every: int = flag(default=5, help="evaluate every N epochs")
    student_lr: float = flag(default=0.1, help="student SGD learning rate")
    student_channels: list[int] = flag(
        default_factory=lambda: [16, 32, 64, 128], help="resnet10t widths of a randomly initialised student", nargs=4
    )
    student_pretrained: bool | None = flag(
        default=None,
        help="start the student's image encoder from random weights instead of the stack's pretrained one (scenes "
        "ships one; one_object does not)",
        off_flag="--no_student_pretrained",
    )
    test_images: int = flag(default=500, help="test images scored (first N of 1000)")
    full_images: int = flag(default=5000, help="train images of the full-split reference")
    full_epochs: int = flag(default=1, help="epochs of the full-split reference")
    num_threads: int | None = flag(default=1, help="torch CPU threads (1: fastest on a loaded CPU)")
    device: str | None = flag(default=None, help="cpu or cuda (default: cuda when available)")
    progress: bool = flag(default=True, help="hide progress bars (stage lines stay)", off_flag="--no_progress")
    quick: bool = False

    def __post_init__(self) -> None:
        positive = ["max_train_steps", "train_batch_size", "num_inference_steps", "student_epochs"]
        positive += ["student_eval_every", "test_images", "full_images", "full_epochs", "captions_per_image", "rank"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.student_batch_size < 2:
            raise ValueError("DemoConfig.student_batch_size must be >= 2: InfoNCE needs negatives in the batch.")
        if not self.budgets or any(int(b) < 2 for b in self.budgets):
            raise ValueError(f"DemoConfig.budgets must be pair counts >= 2, got {self.budgets!r}.")
        if self.clip_batch_size is not None and self.clip_batch_size < 1:
            raise ValueError(f"DemoConfig.clip_batch_size must be >= 1 when given, got {self.clip_batch_size}.")
        if not self.seeds or not self.generation_seeds:
            raise ValueError("DemoConfig.seeds and DemoConfig.generation_seeds need at least one seed each.")
        if self.shapes_config not in STACK_FOLDERS:
            raise ValueError(f"DemoConfig.shapes_config must be in {list(STACK_FOLDERS)}, got {self.shapes_config!r}.")
        if self.clip_loss_inputs not in CLIP_LOSS_INPUTS:
            raise ValueError(
                f"DemoConfig.clip_loss_inputs must be one of {CLIP_LOSS_INPUTS}, got {self.clip_loss_inputs!r}."
            )
        if self.test_images > 1000 or self.full_images > 5000:
            raise ValueError(
                f"The shapes test split has 1000 images and the train split 5000; got test_images={self.test_images}"
                f", full_images={self.full_images}."
            )
        self.budgets = [int(b) for b in self.budgets]
        self.seeds = [int(s) for s in self.seeds]
        self.generation_seeds = [int(s) for s in self.generation_seeds]
        self.student_channels = [int(c) for c in self.student_channels]

    @classmethod
    def quick_preset(cls, **overrides: Any) -> DemoConfig:
        """The smoke run (under 3 minutes on a 2-core CPU): one budget of 20 pairs, 1 seed, few steps and epochs.

        Example:
            >>> DemoConfig.quick_preset(output_dir="x").budgets
            [20]
        """
        values: dict[str, Any] = {
            "budgets": [20],
            "seeds": [0],
            "max_train_steps": 4,
            "train_batch_size": 16,
            "num_inference_steps": 4,
            "student_epochs": 4,
            "student_eval_every": 2,
            "test_images": 200,
            "full_images": 300,
            "full_epochs": 1,
            "quick": True,
        }
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stable_diffusion(self) -> str:
        """The Stable Diffusion folder the generators start from (the stack's unless set)."""
        return self.pretrained_model_name_or_path or str(self.stack("stable-diffusion"))

    def stack(self, component: str) -> Path:
        """A component folder of the stack of `shapes_config`."""
        return shapes_stack_path(component, config=self.shapes_config)

    def student_encoder(self) -> tuple[str, dict[str, Any], Path | None]:
        """The student's timm image encoder: model name, architecture arguments and the weights it starts from."""
        spec = json.loads((self.stack("student-image-encoder") / "config.json").read_text(encoding="utf-8"))
        pretrained = self.student_pretrained
        if pretrained is None:
            pretrained = bool(spec.get("checkpoint"))
        if not pretrained:
            return "resnet10t", {"channels": self.student_channels, "stem_width": 16}, None
        if not spec.get("checkpoint"):
            raise ValueError(f"The {self.shapes_config} stack ships no pretrained student image encoder; "
                             "set student_pretrained=False (--no_student_pretrained).")
        return spec["model_name"], spec["kwargs"], self.stack("student-image-encoder") / spec["checkpoint"]

    def training_config(
        self, output_dir: str | Path, seed: int | None = None, weights: dict[str, float] | None = None
    ) -> TrainingConfig:
        """The `TrainingConfig` of the demo's EDGE fine-tune, built from these settings (no flags in between).

        Args:
            output_dir: where the LoRA weights go.
            seed: the fine-tune's seed (default: the first generation seed).
            weights: loss weights that replace this config's, e.g. `{"contrastive_weight": 0.0}` for an ablation.

        Example:
            >>> training = DemoConfig().training_config("edge-lora", seed=7, weights={"contrastive_weight": 0.0})
            >>> training.max_train_steps, training.seed, training.contrastive_weight, training.loss_max_timestep
            (100, 7, 0.0, 500)
        """
        weights = {
            "contrastive_weight": self.contrastive_weight,
            "diversity_weight": self.diversity_weight,
            "denoise_weight": self.denoise_weight,
        } | (weights or {})
        optional = {"lora_layers": self.lora_layers, "clip_batch_size": self.clip_batch_size}
        return TrainingConfig(
            pretrained_model_name_or_path=self.stable_diffusion(),
            clip_model_name_or_path=str(self.stack("clip")),
            output_dir=str(output_dir),
            resolution=32,
            train_batch_size=self.train_batch_size,
            max_train_steps=self.max_train_steps,
            learning_rate=self.learning_rate,
            rank=self.rank,
            **weights,
            loss_max_timestep=self.loss_max_timestep,
            clip_loss_inputs=self.clip_loss_inputs,
            **{name: value for name, value in optional.items() if value},  # unset: the training default
            rollout_guidance_scale=self.rollout_guidance_scale,
            seed=self.generation_seeds[0] if seed is None else seed,
            checkpointing_steps=10**9,
            report_to="none",
        )

    def student_protocol(self, epochs: int) -> ProtocolConfig:
        """The student's protocol for a run of `epochs`: the LoRS schedule (x0.1 after epoch `epochs // 2 + 1`), no
        augmentation, with batch, learning rate and 32 px images sized for the CPU."""
        return protocol_config(
            "lors",
            epochs=epochs,
            batch_size=self.student_batch_size,
            lr=self.student_lr,
            eval_every=min(self.student_eval_every, epochs),
            lr_milestones=[epochs // 2 + 1],
            image_size=32,
        )
