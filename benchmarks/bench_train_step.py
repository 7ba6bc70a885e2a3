"""Time and memory of one EDGE optimisation step against a plain LoRA denoising step on the same UNet and batch.

Both steps run the same `EDGEObjective` (diffusers_edge.training) on the same LoRA-adapted UNet, batch and
resolution, interleaved in one process: the plain step has the contrastive and diversity weights at 0 (so the
objective never decodes), the EDGE step has the defaults with every sample in the CLIP losses (`loss_max_timestep
999`, the most expensive case; the default 500 sends about half of them). A step is forward, backward and an AdamW
update. The extra time of EDGE is split into the forward passes measured alone (VAE decode of x0 with autograd on,
CLIP image tower on the decoded images, CLIP text tower) and the rest, which is the backward pass through CLIP and
the VAE decoder. Memory: on CPU the bytes autograd saves for backward (activations, the part that grows with the
batch); on CUDA the peak allocated memory. Times are medians of interleaved repeats: wall seconds on CUDA, process
CPU seconds on CPU (one thread by default), because wall time on a shared CPU mostly measures the other jobs.

Configurations (random weights, built offline):
- tiny: `diffusers_edge.testing` components (32 px, 16x16x4 latents, ViT patch 8 at 32 px).
- mid: a 3-level UNet (64/128/256 channels) and a 3-level VAE at 128 px (32x32x4 latents), a 4-layer CLIP at 112 px.
- sd15 (CUDA only): Stable Diffusion v1.5 shapes (UNet 860M, VAE 84M, text 123M) and CLIP ViT-B/32 at 512 px, bf16.

With `--clip_loss_inputs rollout` the EDGE step computes its CLIP losses on 4-step DDIM rollouts from noise
(guidance 3) instead of one-step x0 (docs/training.md); the forward-pass split then leaves the rollout's UNet passes
in the rest.

Usage:
    python benchmarks/bench_train_step.py                       # tiny and mid on CPU
    python benchmarks/bench_train_step.py --configs tiny --batch_sizes 32 --clip_loss_inputs one_step rollout
    python benchmarks/bench_train_step.py --configs sd15 --batch_sizes 1 4 8 --gradient_checkpointing both
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel

from diffusers_edge.shapes.dataset import caption_vocabulary
from diffusers_edge.shapes.tokenization import build_clip_tokenizer
from diffusers_edge.testing import save_tiny_clip, save_tiny_stable_diffusion
from diffusers_edge.training import (
    CLIP_LOSS_INPUTS,
    LORA_TARGET_MODULES,
    EDGECollator,
    EDGELossConfig,
    EDGEObjective,
    add_trainable_parameters,
    clip_pixel_values,
    empty_caption_states,
)

CAPTIONS = ["a big red circle", "a small blue square on the left", "a green triangle", "a white cross"]


def _scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)


def build(name: str) -> dict[str, Any]:
    """Random components of one configuration, with the resolution to train at."""
    if name == "tiny":
        root = tempfile.mkdtemp()
        pipe = StableDiffusionPipeline.from_pretrained(save_tiny_stable_diffusion(f"{root}/sd"))
        clip_dir = save_tiny_clip(f"{root}/clip")
        return {
            "unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
            "clip": CLIPModel.from_pretrained(clip_dir), "processor": CLIPProcessor.from_pretrained(clip_dir),
            "resolution": 32,
        }  # fmt: skip
    tokenizer = build_clip_tokenizer(caption_vocabulary())
    ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    torch.manual_seed(0)
    if name == "mid":
        unet = UNet2DConditionModel(
            sample_size=32, block_out_channels=(64, 128, 256), layers_per_block=1, cross_attention_dim=128,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, norm_num_groups=16,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(32, 64, 128), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=16, sample_size=128,
        )  # fmt: skip
        text = CLIPTextConfig(
            **ids, vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=77,
        )  # fmt: skip
        vision = {"image_size": 112, "patch_size": 16, "hidden_size": 128, "intermediate_size": 512,
                  "num_hidden_layers": 4, "num_attention_heads": 4}  # fmt: skip
        clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=128))
        processor = CLIPImageProcessor(size={"shortest_edge": 112}, crop_size=112)
        resolution = 128
    elif name == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        )  # fmt: skip
        text = CLIPTextConfig(
            **ids, vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77,
        )  # fmt: skip
        clip = CLIPModel(CLIPConfig())  # the defaults are ViT-B/32's shapes
        processor = CLIPImageProcessor()  # 224 px, OpenAI mean and std
        resolution = 512
    else:
        raise ValueError(f"unknown configuration {name!r}; choose tiny, mid or sd15.")
    return {
        "unet": unet, "vae": vae, "text_encoder": CLIPTextModel(text), "tokenizer": tokenizer, "clip": clip,
        "processor": CLIPProcessor(image_processor=processor, tokenizer=tokenizer), "resolution": resolution,
    }  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds on CUDA; on CPU the process's CPU seconds, which other jobs on a shared machine barely move."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


@contextlib.contextmanager
def _saved_bytes(counter: list[int]):
    def pack(tensor: torch.Tensor) -> torch.Tensor:
        counter[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def prepare(name: str, device: torch.device) -> dict[str, Any]:
    """Builds a configuration once, adds the LoRA adapter and puts everything on `device` (bf16 on CUDA)."""
    with torch.device(device) if name != "tiny" else contextlib.nullcontext():
        parts = build(name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args = argparse.Namespace(
        finetune="lora", rank=4, lora_alpha=4, use_dora=False, lora_layers=",".join(LORA_TARGET_MODULES)
    )
    parts["params"] = add_trainable_parameters(parts["unet"], args)
    for key in ("unet", "vae", "text_encoder", "clip"):
        parts[key].to(device, dtype=dtype)
    cast_training_params(parts["unet"], torch.float32)
    parts["unet"].train()
    parts.update(name=name, dtype=dtype, optimizer=torch.optim.AdamW(parts["params"], lr=1e-4))
    return parts


def measure(
    parts: dict[str, Any],
    batch_size: int,
    repeats: int,
    device: torch.device,
    checkpointing: bool,
    clip_loss_inputs: str = "one_step",
) -> dict:
    """Medians (seconds) of both steps and of the extra forward passes, plus memory, for one batch size."""
    unet, vae, clip, dtype, optimizer = parts["unet"], parts["vae"], parts["clip"], parts["dtype"], parts["optimizer"]
    for module in (unet, vae):
        if checkpointing:
            module.enable_gradient_checkpointing()
        else:
            module.disable_gradient_checkpointing()
    collate = EDGECollator(parts["tokenizer"], parts["processor"].tokenizer)
    res = parts["resolution"]
    gen = torch.Generator().manual_seed(0)
    batch = collate(
        [{"pixel_values": torch.rand(3, res, res, generator=gen) * 2 - 1, "caption": CAPTIONS[i % 4],
          "unet_caption": CAPTIONS[i % 4], "keep": True} for i in range(batch_size)]
    )  # fmt: skip
    batch["caption_groups"] = torch.arange(batch_size)
    image_processor = parts["processor"].image_processor
    uncond = empty_caption_states(parts["tokenizer"], parts["text_encoder"])
    make = lambda config: EDGEObjective(  # noqa: E731
        unet, vae, parts["text_encoder"], clip, image_processor, _scheduler(), config, uncond
    )
    plain = make(EDGELossConfig(contrastive_weight=0.0, diversity_weight=0.0))
    edge = make(EDGELossConfig(loss_max_timestep=999, clip_loss_inputs=clip_loss_inputs))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step(objective: EDGEObjective, counter: list[int] | None = None) -> None:
        with autocast, _saved_bytes(counter) if counter is not None else contextlib.nullcontext():
            loss = objective(batch, torch.Generator().manual_seed(1)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    latent = res // 2 ** (len(vae.config.block_out_channels) - 1)
    x0 = torch.randn(batch_size, 4, latent, latent, device=device, dtype=dtype, requires_grad=True)

    def decode() -> torch.Tensor:
        with autocast:
            return vae.decode(x0 / vae.config.scaling_factor).sample

    decoded = decode().detach().float()

    def clip_image() -> None:
        with autocast:
            pixels = clip_pixel_values(decoded.requires_grad_(), image_processor).to(dtype)
            clip.get_image_features(pixel_values=pixels)

    def clip_text() -> None:
        with torch.no_grad(), autocast:
            ids = batch["clip_input_ids"].to(device)
            clip.get_text_features(input_ids=ids, attention_mask=batch["clip_attention_mask"].to(device))

    timings: dict[str, list[float]] = {k: [] for k in ("plain", "edge", "decode", "clip_image", "clip_text")}
    step(plain), step(edge)  # warm-up
    for _ in range(repeats):
        timings["plain"].append(_timed(lambda: step(plain), device))
        timings["edge"].append(_timed(lambda: step(edge), device))
        timings["decode"].append(_timed(decode, device))
        timings["clip_image"].append(_timed(clip_image, device))
        timings["clip_text"].append(_timed(clip_text, device))
    result = {k: statistics.median(v) for k, v in timings.items()}
    if device.type == "cuda":
        for key, objective in (("plain_mem", plain), ("edge_mem", edge)):
            torch.cuda.reset_peak_memory_stats()
            step(objective)
            result[key] = torch.cuda.max_memory_allocated() / 2**20
    else:
        for key, objective in (("plain_mem", plain), ("edge_mem", edge)):
            counter = [0]
            step(objective, counter)
            result[key] = counter[0] / 2**20
    result.update(config=parts["name"], batch=batch_size, resolution=res, checkpointing=checkpointing,
                  clip_loss_inputs=clip_loss_inputs)
    return result


def table(rows: list[dict[str, Any]], device: torch.device) -> str:
    memory = "peak GPU MiB" if device.type == "cuda" else "saved activations MiB"
    head = (
        "| config | px | batch | ckpt | CLIP losses on | plain step ms | EDGE step ms | ratio | VAE decode fwd ms "
        "| CLIP image fwd ms "
        f"| CLIP text ms | backward through decoder+CLIP ms | {memory} plain / EDGE |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        rest = r["edge"] - r["plain"] - r["decode"] - r["clip_image"] - r["clip_text"]
        lines.append(
            f"| {r['config']} | {r['resolution']} | {r['batch']} | {'yes' if r['checkpointing'] else 'no'} "
            f"| {r['clip_loss_inputs']} "
            f"| {1e3 * r['plain']:.0f} | {1e3 * r['edge']:.0f} | {r['edge'] / r['plain']:.2f} "
            f"| {1e3 * r['decode']:.0f} | {1e3 * r['clip_image']:.0f} | {1e3 * r['clip_text']:.0f} | {1e3 * rest:.0f} "
            f"| {r['plain_mem']:.0f} / {r['edge_mem']:.0f} |"
        )
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid", "sd15"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[4])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per step kind (medians reported)")
    parser.add_argument("--gradient_checkpointing", choices=["no", "yes", "both"], default="no")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU time is then ~ wall time)")
    parser.add_argument("--clip_loss_inputs", nargs="+", default=["one_step"], choices=CLIP_LOSS_INPUTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    checkpointing = {"no": [False], "yes": [True], "both": [False, True]}[args.gradient_checkpointing]
    print(f"device {device}, torch threads {torch.get_num_threads()}, repeats {args.repeats} (medians)")
    rows = []
    for name in args.configs:
        parts = prepare(name, device)
        for batch_size in args.batch_sizes:
            for ckpt in checkpointing:
                for inputs in args.clip_loss_inputs:
                    rows.append(measure(parts, batch_size, args.repeats, device, ckpt, inputs))
                    print(table(rows[-1:], device).splitlines()[-1], flush=True)
    print()
    print(table(rows, device))


if __name__ == "__main__":
    main()
