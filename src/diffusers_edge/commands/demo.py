"""`diffusers-edge demo`: EDGE end to end, offline, on the embedded captioned-shapes data with the tiny stack.

Fine-tunes the tiny Stable Diffusion with the EDGE objective (LoRA), distills sets at each budget (plain
generation, EDGE with and without caption synthesis, EDGE with k-center prompts), judges them claim by claim,
trains the retrieval student on them and on real-pair baselines, and writes `report.md`, `results.json`,
`samples.png` and the distilled sets. The world is `scenes` (`--shapes_config one_object` for the first one).
About 7 minutes on a 2-core CPU by default; `--quick` is a smoke run of about 1 minute; `--full_study` (three
generation seeds and the loss ablations) about 20 minutes. See docs/demo.md.

Examples:
    $ diffusers-edge demo
    $ diffusers-edge demo --quick --output_dir edge-demo-quick
    $ diffusers-edge demo --full_study
    $ diffusers-edge demo --budgets 100 --seeds 0 1 2 3 4 --max_train_steps 200
"""

from __future__ import annotations

import argparse
import sys

HELP = "run EDGE end to end offline on the embedded shapes data with the tiny stack (about 7 min on a CPU)"


def build_parser() -> argparse.ArgumentParser:
    """The flags of `diffusers-edge demo`; a flag left unset keeps the `DemoConfig` default (or the `--quick` value).

    The defaults quoted in the help are read from `DemoConfig`, where they are written.
    """
    from ..shapes.demo.config import DemoConfig

    default = DemoConfig()

    def quoted(name: str) -> str:
        value = getattr(default, name)
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    parser = argparse.ArgumentParser(
        prog="diffusers-edge demo",
        description="EDGE end to end on the embedded captioned-shapes data with the tiny pretrained stack, offline. "
        "Unset flags take the defaults of the full run (or of --quick).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 pairs, 1 seed, few steps (< 3 min)")
    parser.add_argument("--full_study", action="store_true",
                        help="generation seeds 0 1 2 and the ablation fine-tunes (w/o L_C, w/o L_D): the numbers of "
                        "docs/demo.md; see there for its run time")
    parser.add_argument("--output_dir", default=default.output_dir, help="where report.md, results.json, ... go")
    parser.add_argument("--shapes_config", choices=["scenes", "one_object"],
                        help=f"the captioned-shapes world and its stack (default {quoted('shapes_config')})")
    parser.add_argument("--cache_dir", default=None, help="data and cached embeddings (default: OUTPUT_DIR/cache)")
    parser.add_argument("--pretrained_model_name_or_path", default=None,
                        help="Stable Diffusion folder the generators start from (default: the stack's)")
    parser.add_argument("--budgets", type=int, nargs="+",
                        help=f"distilled-set sizes in pairs (default {quoted('budgets')})")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"student seeds (default {quoted('seeds')})")
    parser.add_argument("--generation_seeds", type=int, nargs="+",
                        help="one fine-tune, prompt draw and image set per seed "
                        f"(default {quoted('generation_seeds')})")
    parser.add_argument("--ablations", action="store_true", default=None,
                        help="also fine-tune without L_C and without L_D (rows 'EDGE w/o L_C', 'EDGE w/o L_D')")
    # the fine-tune's settings carry the training flags' names; the demo's earlier names stay accepted
    parser.add_argument("--max_train_steps", "--train_steps", dest="max_train_steps", type=int,
                        help=f"EDGE fine-tuning steps (default {quoted('max_train_steps')})")
    parser.add_argument("--train_batch_size", type=int,
                        help=f"fine-tuning batch (default {quoted('train_batch_size')})")
    parser.add_argument("--learning_rate", type=float,
                        help=f"LoRA learning rate (default {quoted('learning_rate')})")
    parser.add_argument("--rank", "--lora_rank", dest="rank", type=int, help=f"LoRA rank (default {quoted('rank')})")
    parser.add_argument("--lora_layers", help="UNet modules LoRA adapts, comma-separated (default: every attention "
                        "projection; attn2.to_k,attn2.to_v: cross-attention keys and values)")
    parser.add_argument("--contrastive_weight", type=float,
                        help=f"weight of L_C (default {quoted('contrastive_weight')})")
    parser.add_argument("--diversity_weight", type=float,
                        help=f"weight of L_D (default {quoted('diversity_weight')})")
    parser.add_argument("--denoise_weight", type=float,
                        help=f"weight of the denoising MSE (default {quoted('denoise_weight')})")
    parser.add_argument("--loss_max_timestep", type=int,
                        help=f"timesteps entering L_C/L_D (default {quoted('loss_max_timestep')})")
    parser.add_argument("--clip_loss_inputs", choices=["one_step", "rollout"],
                        help="what L_C/L_D see: one-step x0 of noisy train latents (default) or 4-step samples")
    parser.add_argument("--clip_batch_size", type=int, help="samples per batch in L_C/L_D at most (default: all)")
    parser.add_argument("--rollout_guidance_scale", type=float,
                        help=f"classifier-free guidance of the fine-tune's rollouts (with --clip_loss_inputs "
                        f"rollout; default {quoted('rollout_guidance_scale')})")
    parser.add_argument("--num_inference_steps", "--inference_steps", dest="num_inference_steps", type=int,
                        help=f"DDIM steps per generated image (default {quoted('num_inference_steps')})")
    parser.add_argument("--guidance_scale", type=float,
                        help=f"classifier-free guidance of the generators (default {quoted('guidance_scale')})")
    parser.add_argument("--captions_per_image", type=int,
                        help=f"captions per EDGE image (default {quoted('captions_per_image')})")
    parser.add_argument("--student_epochs", type=int,
                        help=f"student epochs on budget-size sets (default {quoted('student_epochs')})")
    parser.add_argument("--student_batch_size", type=int,
                        help=f"student batch (default {quoted('student_batch_size')})")
    parser.add_argument("--student_eval_every", type=int,
                        help=f"evaluate every N epochs (default {quoted('student_eval_every')})")
    parser.add_argument("--student_lr", type=float,
                        help=f"student SGD learning rate (default {quoted('student_lr')})")
    parser.add_argument("--student_channels", type=int, nargs=4,
                        help="resnet10t widths of a randomly initialised student "
                        f"(default {quoted('student_channels')})")
    parser.add_argument("--no_student_pretrained", dest="student_pretrained", action="store_false", default=None,
                        help="start the student's image encoder from random weights instead of the stack's "
                        "pretrained one (scenes ships one; one_object does not)")
    parser.add_argument("--test_images", type=int,
                        help=f"test images scored (first N of 1000; default {quoted('test_images')})")
    parser.add_argument("--full_images", type=int,
                        help=f"train images of the full-split reference (default {quoted('full_images')})")
    parser.add_argument("--full_epochs", type=int,
                        help=f"epochs of the full-split reference (default {quoted('full_epochs')})")
    parser.add_argument("--num_threads", type=int,
                        help=f"torch CPU threads (default {quoted('num_threads')}: fastest on a loaded CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars (stage lines stay)")
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:  # noqa: F821 - imported lazily below
    """The `DemoConfig` the parsed flags describe (unset flags keep the preset's value)."""
    from ..shapes.demo.config import DemoConfig

    overrides = {
        key: value
        for key, value in vars(args).items()
        if key not in ("quick", "no_progress", "full_study") and value is not None
    }
    overrides["progress"] = not args.no_progress
    if args.full_study:
        overrides = {"generation_seeds": [0, 1, 2], "ablations": True} | overrides
    return DemoConfig.quick_preset(**overrides) if args.quick else DemoConfig(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `diffusers-edge demo`; prints where the report is and the EDGE-vs-plain line per budget."""
    from ..shapes.demo.run import run_demo

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    results = run_demo(config_from_args(args))
    for budget, c in results["comparison"].items():
        edge, plain = c["EDGE r_mean (last)"], c["plain generation r_mean (last)"]
        print(
            f"{budget} pairs: EDGE r_mean {edge['mean']:.1f} ± {edge['std']:.1f} vs plain generation "
            f"{plain['mean']:.1f} ± {plain['std']:.1f}"
        )
    print(f"Report: {args.output_dir}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
