#!/usr/bin/env python
"""Trains a tiny pretrained stack for the captioned-shapes data (docs/shapes-stack.md).

Every component stands in for a real model and loads through the same `from_pretrained` call:

- `judge/`: attribute CNN (diffusers_edge.shapes.judge) trained on real shapes; scores prompt following;
- `clip/`: CLIPModel + CLIPProcessor, contrastive on the train split; plays openai/clip-vit-base-patch32;
- `text-encoder/`: BertModel + BertTokenizer, masked-LM on train captions; plays bert-base-uncased;
- `captioner/`: VisionEncoderDecoderModel (ViT encoder, BERT decoder); plays the multimodal LLM captioner;
- `stable-diffusion/`: AutoencoderKL + UNet2DConditionModel + CLIP text tower + DDIM; plays stable-diffusion-v1-5;
- `student-image-encoder/`: a timm model name + kwargs; for `scenes` also weights pretrained without captions;
  plays nfnet_l0.

`--config scenes` (the default) trains the stack of the `scenes` world into `src/diffusers_edge/shapes/assets/
scenes-stack/`, `--config one_object` the first stack into `.../assets/shapes-stack/` (docs/shapes-stack.md describes
both).

An early experiment of ours (docs/shapes-stack.md) measured on this 2-core CPU that a pixel-space 32x32 UNet is too
slow to bind colour to shape in 30 minutes; so the generator here is a latent model: a small VAE maps 32x32x3
images to 8x8x4 latents and the UNet (cross-attention at 8x8 and 4x4) denoises those, conditioned on the frozen
text tower of the tiny CLIP, with 10% empty captions (classifier-free guidance) and an EMA of its weights (diffusers'
`EMAModel`). The CLIP recipe (ViT patch 8, hidden 128, 4+3 layers, projection 128, AdamW 1e-3 OneCycle, batch 256,
25 epochs) is the one measured there.

Time on this project's 2-core CPU with `--num_threads 1`: 78.9 minutes for `one_object`, 82 CPU-minutes for
`scenes` (docs/shapes-stack.md has the per-stage tables); the `one_object` stack took about 4 minutes on an H200.

Usage:
    python examples/shapes/train_tiny_stack.py                      # the shipped scenes stack (seed 0)
    python examples/shapes/train_tiny_stack.py --config one_object  # the shipped one_object stack
    python examples/shapes/train_tiny_stack.py --quick --output_dir /tmp/stack   # minutes-long smoke run
    python examples/shapes/train_tiny_stack.py --components unet eval  # re-train the UNet on the saved VAE/CLIP

Components run in dependency order; one trained in an earlier run is loaded from `--output_dir` (the UNet needs
the VAE and the CLIP; evaluation of samples needs the judge). Wall and CPU time of each stage and every measured
number go to `<output_dir>/training_log.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from diffusers_edge.clip_features import clip_features
from diffusers_edge.metrics.retrieval import retrieval_recall
from diffusers_edge.shapes import scenes
from diffusers_edge.shapes.dataset import caption_vocabulary, load_captioned_shapes
from diffusers_edge.shapes.judge import AttributeJudge, load_judge, read_scenes, score_claims, score_prompt_following
from diffusers_edge.shapes.objects import COLORS, SHAPE_NAMES, parse_caption
from diffusers_edge.shapes.stack import STACK_FOLDERS
from diffusers_edge.shapes.tokenization import build_bert_tokenizer, build_clip_tokenizer

ASSETS = Path(__file__).resolve().parents[2] / "src" / "diffusers_edge" / "shapes" / "assets"
COMPONENTS = ("judge", "clip", "text-encoder", "captioner", "student-image-encoder", "vae", "unet", "eval")
ATTRIBUTES = ("shape", "color", "size", "position")  # the one_object columns
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, as CLIPImageProcessor defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_MAX_LENGTH = 32  # captions are at most ~16 tokens; shorter context = cheaper text tower and cross-attention


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=list(STACK_FOLDERS), default="scenes",
                        help="the captioned-shapes world the stack is trained on")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="default: the package's assets/<config's stack folder> (what ships)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every component (and nothing else)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the captioned-shapes dataset")
    parser.add_argument("--num_train", type=int, default=5000)
    parser.add_argument("--num_test", type=int, default=1000)
    parser.add_argument("--data_cache", type=Path, default=None,
                        help="an .npz of the decoded splits: read if it exists, else written after generation")
    parser.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    parser.add_argument("--quick", action="store_true", help="a minutes-long smoke run (tiny step counts)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num_threads", type=int, default=2, help="torch CPU threads (1 is faster under load)")
    parser.add_argument("--judge_epochs", type=int, default=None, help="default 15 (one_object), 40 (scenes)")
    parser.add_argument("--student_epochs", type=int, default=15, help="pretraining of the scenes student encoder")
    parser.add_argument("--clip_epochs", type=int, default=25)
    parser.add_argument("--bert_epochs", type=int, default=12)
    parser.add_argument("--captioner_epochs", type=int, default=None, help="default 6 (one_object), 25 (scenes)")
    parser.add_argument("--captioner_patch_size", type=int, default=None, help="ViT patch: 4 (one_object), 8 (scenes)")
    parser.add_argument("--captioner_layers", type=int, default=2, help="ViT encoder and BERT decoder layers, each")
    parser.add_argument("--vae_steps", type=int, default=1500)
    parser.add_argument("--vae_channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--unet_steps", type=int, default=None, help="default 1500 (one_object), 3000 (scenes)")
    parser.add_argument("--unet_batch_size", type=int, default=64)
    parser.add_argument("--unet_lr", type=float, default=1e-3)
    parser.add_argument("--unet_channels", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--prediction_type", choices=["epsilon", "v_prediction"], default="epsilon")
    parser.add_argument("--snr_gamma", type=float, default=5.0, help="min-SNR loss weighting (0: plain MSE)")
    parser.add_argument("--caption_dropout", type=float, default=0.1, help="share of empty captions (CFG)")
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--eval_samples", type=int, default=500, help="test captions generated from")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    parser.add_argument("--inference_steps", type=int, default=25)
    args = parser.parse_args(argv)
    if args.output_dir is None:
        args.output_dir = ASSETS / STACK_FOLDERS[args.config]
    if args.judge_epochs is None:
        args.judge_epochs = 40 if args.config == "scenes" else 15
    if args.unet_steps is None:
        args.unet_steps = 3000 if args.config == "scenes" else 1500
    if args.captioner_epochs is None:
        args.captioner_epochs = 25 if args.config == "scenes" else 6
    if args.captioner_patch_size is None:
        args.captioner_patch_size = 8 if args.config == "scenes" else 4
    if args.quick:
        args.num_train, args.num_test = min(args.num_train, 600), min(args.num_test, 200)
        args.judge_epochs, args.clip_epochs, args.bert_epochs, args.captioner_epochs = 2, 2, 1, 1
        args.student_epochs = 1
        args.vae_steps, args.unet_steps, args.eval_samples = 30, 30, 32
        args.guidance_scales, args.inference_steps = [3.0], 4
    return args


# ------------------------------------------------------------------------------------------------ small helpers


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True):
    """Index batches over a fresh random permutation of range(n)."""
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float = 0.1):
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 20),
                                               pct_start=pct_start)


def optimisation_step(loss: torch.Tensor, optimizer, scheduler, progress, /, **postfix: str) -> None:
    """One update (the one-cycle schedule advances with it), then the progress bar's step and its loss line."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    progress.update()
    progress.set_postfix(**postfix)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@contextmanager
def stage(log: dict, name: str):
    """Times a stage (wall and this process's CPU seconds) into `log[name]`."""
    print(f"\n=== {name} ===", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    entry = log[name] = {"run": len(log.get("runs", [])) - 1}
    yield entry
    entry["wall_s"] = round(time.perf_counter() - wall, 1)
    entry["cpu_s"] = round(time.process_time() - cpu, 1)
    print(f"=== {name}: {json.dumps(entry)}", flush=True)


class ShapesTensors:
    """One split decoded once: uint8 images (N, 3, 32, 32), 5 captions each, attribute label ids and names.

    The attributes are the dataset's ClassLabel columns: shape / color / size / position for `one_object`, the
    per-cell columns and background of `diffusers_edge.shapes.scenes.SCENE_LABELS` for `scenes`.
    """

    def __init__(self, images: torch.Tensor, captions: list[list[str]], labels: dict, names: dict) -> None:
        self.images, self.captions, self.labels, self.names = images, captions, labels, names

    @classmethod
    def from_dataset(cls, dataset) -> ShapesTensors:
        images = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in dataset["image"]]))
        columns = [k for k, feature in dataset.features.items() if hasattr(feature, "names")]
        labels = {k: torch.tensor(list(dataset[k])) for k in columns}
        names = {k: dataset.features[k].names for k in columns}
        captions = [list(c) for c in dataset["captions"]]
        return cls(images.permute(0, 3, 1, 2).contiguous(), captions, labels, names)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}images": self.images.numpy(), f"{prefix}meta": np.array(json.dumps(
            {"captions": self.captions, "names": self.names}))}
        return arrays | {f"{prefix}{k}": v.numpy() for k, v in self.labels.items()}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> ShapesTensors:
        meta = json.loads(str(arrays[f"{prefix}meta"]))
        labels = {k: torch.from_numpy(arrays[f"{prefix}{k}"]) for k in meta["names"]}
        return cls(torch.from_numpy(arrays[f"{prefix}images"]), meta["captions"], labels, meta["names"])

    def __len__(self) -> int:
        return len(self.images)

    def floats(self, index=slice(None)) -> torch.Tensor:
        return self.images[index].float() / 255.0

    def random_captions(self, index: torch.Tensor, generator: torch.Generator) -> list[str]:
        picks = torch.randint(0, 5, (len(index),), generator=generator).tolist()
        return [self.captions[i][j] for i, j in zip(index.tolist(), picks)]

    def attributes(self, i: int) -> dict[str, str]:
        return {k: self.names[k][int(self.labels[k][i])] for k in self.names}

    def scene(self, i: int) -> scenes.Scene:
        return scenes.scene_from_columns(self.attributes(i))


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


# ------------------------------------------------------------------------------------------------------- judge


def judge_augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Robustness to generated images: slight blur, a faint background tint and pixel noise (colours kept)."""
    n = len(pixels)
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=generator).to(pixels.device) * 0.5
    pixels = pixels * (1 - mix) + blurred * mix
    tint = torch.rand(n, 3, 1, 1, generator=generator).to(pixels.device) * 0.06
    noise = torch.randn(pixels.shape, generator=generator).to(pixels.device)
    noise = noise * torch.rand(n, 1, 1, 1, generator=generator).to(pixels.device) * 0.04
    return (pixels + tint + noise).clamp(0, 1)


@torch.no_grad()
def judge_accuracy(judge: AttributeJudge, pixels: torch.Tensor, data: ShapesTensors, device: str) -> dict[str, float]:
    judge.eval()
    logits = {k: [] for k in data.names}
    for start in range(0, len(pixels), 500):
        out = judge(pixels[start : start + 500].to(device))
        for k in data.names:
            logits[k].append(out[k].argmax(-1).cpu())
    correct = {k: torch.cat(v) == data.labels[k] for k, v in logits.items()}
    scores = {k: round(100 * float(v.float().mean()), 2) for k, v in correct.items()}
    scores["all"] = round(100 * float(torch.stack(list(correct.values())).all(0).float().mean()), 2)
    cells = [k.split("_", 1)[1] for k in data.names if k.startswith("shape_")]
    if cells:  # scenes: a cell is read right when its shape, colour and size all are
        per_cell = [correct[f"shape_{c}"] & correct[f"color_{c}"] & correct[f"size_{c}"] for c in cells]
        scores["cell"] = round(100 * float(torch.stack(per_cell).float().mean()), 2)
    return scores


def train_judge(args, train: ShapesTensors, test: ShapesTensors, log: dict) -> AttributeJudge:
    generator = seed_everything(args.seed + 1)
    hidden = 256 if args.config == "scenes" else 128  # 13 heads (4 cells x 3 + background) share the hidden layer
    judge = AttributeJudge(dict(train.names), hidden=hidden).to(args.device)
    batch_size = 256
    steps = args.judge_epochs * (len(train) // batch_size)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = one_cycle(optimizer, steps)
    train_cpu = time.process_time()
    progress = tqdm(total=steps, desc="judge")
    for _ in range(args.judge_epochs):
        judge.train()
        for index in batches(len(train), batch_size, generator):
            pixels = judge_augment(train.floats(index).to(args.device), generator)
            logits = judge(pixels)
            loss = sum(F.cross_entropy(logits[k], train.labels[k][index].to(args.device)) for k in train.names)
            optimisation_step(loss, optimizer, scheduler, progress, loss=f"{loss.item():.3f}")
    progress.close()
    log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
    judge.eval()
    log["params"], log["steps"] = num_params(judge), steps
    log["test_accuracy"] = judge_accuracy(judge, test.floats(), test, args.device)
    judge.cpu().save_pretrained(args.output_dir / "judge")
    return judge.to(args.device)


# -------------------------------------------------------------------------------------------------------- CLIP


def clip_tokenizer(config: str):
    return build_clip_tokenizer(caption_vocabulary(config), model_max_length=CLIP_MAX_LENGTH)


def train_clip(args, train: ShapesTensors, test: ShapesTensors, log: dict):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    generator = seed_everything(args.seed + 2)
    tokenizer = clip_tokenizer(args.config)
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": CLIP_MAX_LENGTH,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=128)
    model = CLIPModel(config).to(args.device)
    batch_size = 256
    steps = args.clip_epochs * (len(train) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    scheduler = one_cycle(optimizer, steps)
    train_cpu = time.process_time()
    progress = tqdm(total=steps, desc="clip")
    for _ in range(args.clip_epochs):
        model.train()
        for index in batches(len(train), batch_size, generator):
            tokens = tokenizer(train.random_captions(index, generator), padding="max_length",
                               max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt").to(args.device)
            pixels = clip_normalize(train.floats(index).to(args.device))
            out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels,
                        return_loss=True)
            optimisation_step(out.loss, optimizer, scheduler, progress, loss=f"{out.loss.item():.3f}")
    progress.close()
    log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
    model.eval()
    log["params"], log["steps"] = num_params(model), steps
    log["test_retrieval"] = clip_retrieval(model, tokenizer, test, args.device)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.cpu().save_pretrained(args.output_dir / "clip")
    processor.save_pretrained(args.output_dir / "clip")
    return model.to(args.device), tokenizer


@torch.no_grad()
def clip_retrieval(model, tokenizer, data: ShapesTensors, device: str) -> dict[str, float]:
    texts = [c for caps in data.captions for c in caps]
    image_of_text = torch.tensor([i for i, caps in enumerate(data.captions) for _ in caps])
    image_features, text_features = [], []
    for start in range(0, len(data), 500):
        pixels = clip_normalize(data.floats(slice(start, start + 500)).to(device))
        image_features.append(F.normalize(clip_features(model.get_image_features(pixel_values=pixels)), dim=-1))
    for start in range(0, len(texts), 500):
        tokens = tokenizer(texts[start : start + 500], padding="max_length", max_length=CLIP_MAX_LENGTH,
                           truncation=True, return_tensors="pt").to(device)
        text_features.append(F.normalize(clip_features(model.get_text_features(**tokens)), dim=-1))
    similarity = (torch.cat(image_features) @ torch.cat(text_features).t()).cpu()
    recall = retrieval_recall(similarity, image_of_text)  # hit@K with pessimistic ties (docs/metrics.md)
    return {key: round(value, 2) for key, value in recall.items() if "_R@" in key}


# -------------------------------------------------------------------------------------------------------- BERT


def mask_tokens(input_ids: torch.Tensor, tokenizer, special: torch.Tensor, generator: torch.Generator):
    """BERT's masking: 15% of non-special tokens are targets; of those 80% [MASK], 10% random, 10% kept."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < 0.15) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator)
    replace = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[replace] = random_ids[replace]
    return inputs, labels


def caption_pairs(data: ShapesTensors, generator: torch.Generator, count: int) -> tuple[list[str], list[str]]:
    """Two different captions of each of `count` distinct random images (the two views of the contrastive task)."""
    images = torch.randperm(len(data), generator=generator)[:count].tolist()
    first = torch.randint(0, 5, (count,), generator=generator)
    second = (first + torch.randint(1, 5, (count,), generator=generator)) % 5
    a = [data.captions[i][j] for i, j in zip(images, first.tolist())]
    b = [data.captions[i][j] for i, j in zip(images, second.tolist())]
    return a, b


def train_text_encoder(args, train: ShapesTensors, test: ShapesTensors, log: dict) -> None:
    """BERT pre-training on train captions, text only: masked LM + a sentence-level task on [CLS].

    The sentence task (bert-base-uncased's is next-sentence prediction) is contrastive here: the [CLS] states of
    two different captions of one image are positives, other images' captions in the batch negatives (InfoNCE,
    temperature 0.05, as SimCSE's supervised form). Masked LM alone left the [CLS] feature weak (linear probe 51%
    on shape), and a binary same-image pair head (NSP-style) stayed at chance in 776 steps.
    """
    from transformers import BertConfig, BertForMaskedLM, BertModel

    generator = seed_everything(args.seed + 3)
    tokenizer = build_bert_tokenizer(caption_vocabulary(args.config))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForMaskedLM(config).to(args.device)
    batch_size = 128  # images per step, two captions each: 256 captions
    steps = args.bert_epochs * (5 * len(train) // (2 * batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = one_cycle(optimizer, steps)
    model.train()
    train_cpu = time.process_time()
    progress = tqdm(total=steps, desc="text-encoder (masked LM + [CLS] contrastive)")
    for _ in range(steps):
        a, b = caption_pairs(train, generator, batch_size)
        encoded = tokenizer(a + b, padding=True, return_tensors="pt", return_special_tokens_mask=True)
        special = encoded.special_tokens_mask.bool() | (encoded.attention_mask == 0)
        inputs, labels = mask_tokens(encoded.input_ids, tokenizer, special, generator)
        out = model(input_ids=inputs.to(args.device), attention_mask=encoded.attention_mask.to(args.device),
                    labels=labels.to(args.device), output_hidden_states=True)
        cls = F.normalize(out.hidden_states[-1][:, 0], dim=-1)
        logits = cls[:batch_size] @ cls[batch_size:].t() / 0.05
        targets = torch.arange(batch_size, device=args.device)
        contrastive = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        loss = out.loss + contrastive
        optimisation_step(loss, optimizer, scheduler, progress, mlm=f"{out.loss.item():.3f}",
                          cls=f"{contrastive.item():.3f}")
    progress.close()
    log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
    model.eval()
    bert = BertModel(config)  # the pooler stays randomly initialised: the protocol reads the CLS hidden state
    missing, unexpected = bert.load_state_dict(model.bert.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"BERT weights did not transfer: missing {missing}, unexpected {unexpected}")
    bert.eval()
    log["params"], log["steps"] = num_params(bert), steps
    log["test_masked_lm"] = masked_lm_eval(model, tokenizer, test, args.device, generator)
    bert.to(args.device)
    log["test_caption_to_caption_R@1"] = caption_retrieval(bert, tokenizer, test, args.device)
    log["cls_linear_probe"] = cls_probe(bert, tokenizer, train, test, args.device, args.seed)
    bert.cpu().save_pretrained(args.output_dir / "text-encoder")
    tokenizer.save_pretrained(args.output_dir / "text-encoder")


@torch.no_grad()
def masked_lm_eval(model, tokenizer, test: ShapesTensors, device: str, generator: torch.Generator) -> dict:
    captions = [c for caps in test.captions for c in caps]
    encoded = tokenizer(captions, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    special = encoded.special_tokens_mask.bool() | (encoded.attention_mask == 0)
    inputs, labels = mask_tokens(encoded.input_ids, tokenizer, special, generator)
    logits = model(input_ids=inputs.to(device), attention_mask=encoded.attention_mask.to(device)).logits.cpu()
    chosen = labels != -100
    accuracy = (logits.argmax(-1)[chosen] == labels[chosen]).float().mean()
    return {"masked_token_accuracy": round(100 * float(accuracy), 2), "targets": int(chosen.sum())}


@torch.no_grad()
def caption_retrieval(bert, tokenizer, test: ShapesTensors, device: str) -> float:
    """Percent of test images whose first caption's nearest [CLS] among another caption of every image belongs
    to an image with the same attributes (ties between equal combinations count as right)."""
    a = [caps[0] for caps in test.captions]
    b = [caps[1 + i % 4] for i, caps in enumerate(test.captions)]
    fa = F.normalize(cls_features(bert, tokenizer, a, device), dim=-1)
    fb = F.normalize(cls_features(bert, tokenizer, b, device), dim=-1)
    nearest = (fa @ fb.t()).argmax(-1)
    keys = torch.stack([test.labels[k] for k in test.names], 1)
    return round(100 * float((keys[nearest] == keys).all(1).float().mean()), 2)


def cls_features(bert, tokenizer, captions: list[str], device: str) -> torch.Tensor:
    chunks = []
    with torch.no_grad():
        for start in range(0, len(captions), 1000):
            tokens = tokenizer(captions[start : start + 1000], padding=True, return_tensors="pt").to(device)
            chunks.append(bert(**tokens).last_hidden_state[:, 0].cpu())
    return torch.cat(chunks)


def cls_probe(bert, tokenizer, train: ShapesTensors, test: ShapesTensors, device: str, seed: int) -> dict:
    """Linear-probe accuracy of the frozen CLS feature per attribute: what a trainable head can read off it."""
    torch.manual_seed(seed)
    train_x = cls_features(bert, tokenizer, [caps[0] for caps in train.captions], device)
    test_x = cls_features(bert, tokenizer, [caps[0] for caps in test.captions], device)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    scores = {}
    for k in train.names:
        probe = torch.nn.Linear(train_x.shape[1], len(train.names[k]))
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            loss = F.cross_entropy(probe(train_x), train.labels[k])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scores[k] = round(100 * float((probe(test_x).argmax(-1) == test.labels[k]).float().mean()), 2)
    return scores


# --------------------------------------------------------------------------------------------------- captioner


def train_captioner(args, train: ShapesTensors, test: ShapesTensors, log: dict) -> None:
    from transformers import (
        BertConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    generator = seed_everything(args.seed + 4)
    tokenizer = build_bert_tokenizer(caption_vocabulary(args.config))
    encoder = ViTConfig(image_size=32, patch_size=args.captioner_patch_size, hidden_size=128, intermediate_size=256,
                        num_hidden_layers=args.captioner_layers, num_attention_heads=4)
    decoder = BertConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=args.captioner_layers,
                         num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, is_decoder=True,
                         add_cross_attention=True, pad_token_id=tokenizer.pad_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    special = {"decoder_start_token_id": tokenizer.cls_token_id, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.sep_token_id}
    for name, value in special.items():
        setattr(config, name, value)
    model = VisionEncoderDecoderModel(config)
    for name, value in special.items():
        setattr(model.generation_config, name, value)
    model.to(args.device)
    batch_size = 256
    steps = args.captioner_epochs * (len(train) // batch_size) * 5  # each epoch sees each image 5 times
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = one_cycle(optimizer, steps)
    train_cpu = time.process_time()
    progress = tqdm(total=steps, desc="captioner")
    model.train()
    for _ in range(args.captioner_epochs * 5):
        for index in batches(len(train), batch_size, generator):
            tokens = tokenizer(train.random_captions(index, generator), padding=True, return_tensors="pt")
            labels = tokens.input_ids[:, 1:].clone()  # drop [CLS]: the model prepends decoder_start_token_id
            labels[tokens.attention_mask[:, 1:] == 0] = -100
            pixels = train.floats(index).to(args.device) * 2 - 1  # ViTImageProcessor: mean 0.5, std 0.5
            out = model(pixel_values=pixels, labels=labels.to(args.device))
            optimisation_step(out.loss, optimizer, scheduler, progress, loss=f"{out.loss.item():.3f}")
    progress.close()
    log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
    model.eval()
    log["params"], log["steps"] = num_params(model), steps
    log["test_captions"] = captioner_eval(model, tokenizer, test, args.device, args.config)
    model.cpu().save_pretrained(args.output_dir / "captioner")
    tokenizer.save_pretrained(args.output_dir / "captioner")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(args.output_dir / "captioner")


@torch.no_grad()
def generate_captions(model, tokenizer, pixels: torch.Tensor, device: str, do_sample: bool = False, seed: int = 0):
    """Captions of images in [0, 1]: greedy, or sampled (temperature 1) from a seeded generator."""
    captions = []
    torch.manual_seed(seed)
    for start in range(0, len(pixels), 250):
        batch = pixels[start : start + 250].to(device) * 2 - 1
        ids = model.generate(pixel_values=batch, do_sample=do_sample, max_length=40)
        captions += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return captions


@torch.no_grad()
def captioner_eval(model, tokenizer, test: ShapesTensors, device: str, config: str) -> dict:
    """Captions of test images read back and checked against the drawn scene.

    `one_object`: greedy captions parsed with `parse_caption`, per attribute. `scenes`: claim accuracy
    (`diffusers_edge.shapes.scenes.claim_accuracy`) of greedy captions and of sampled ones (what caption synthesis
    writes), against each image's true scene.
    """
    captions = generate_captions(model, tokenizer, test.floats(), device)
    if config == "scenes":
        truth = [test.scene(i) for i in range(len(test))]
        sampled = generate_captions(model, tokenizer, test.floats(), device, do_sample=True)
        return {
            "greedy": {k: round(v, 2) for k, v in scenes.claim_accuracy(captions, truth).items()},
            "sampled": {k: round(v, 2) for k, v in scenes.claim_accuracy(sampled, truth).items()},
            "distinct_captions": len(set(captions)),
            "distinct_sampled_captions": len(set(sampled)),
            "examples": captions[:5],
            "sampled_examples": sampled[:5],
        }
    correct = {k: [] for k in ATTRIBUTES}
    parsed_ok = 0
    for i, caption in enumerate(captions):
        try:
            parsed = parse_caption(caption)
            parsed_ok += 1
        except ValueError:
            parsed = {}
        truth = test.attributes(i)
        for k in ATTRIBUTES:
            correct[k].append(parsed.get(k) == truth[k])
    result = {k: round(100 * float(np.mean(v)), 2) for k, v in correct.items()}
    result["shape+color"] = round(100 * float(np.mean(np.logical_and(correct["shape"], correct["color"]))), 2)
    result["all"] = round(100 * float(np.mean(np.logical_and.reduce([correct[k] for k in ATTRIBUTES]))), 2)
    result["parsed"] = round(100 * parsed_ok / len(captions), 2)
    result["distinct_captions"] = len(set(captions))
    result["examples"] = captions[:5]
    return result


# ------------------------------------------------------------------------------------------ student image encoder

STUDENT_IMAGE_ENCODER = {
    "model_name": "resnet10t",
    "kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16},
    "pretrained": False,
    "input_size": 32,
    "note": "A small timm CNN for the retrieval student; randomly initialised and trained at evaluation time, as "
    "the protocol trains nfnet_l0 (it starts from ImageNet weights, which have no counterpart on shapes).",
}


STUDENT_PRETRAINING_SEED = 1
"""Seed of the captioned-shapes data the scenes student encoder is pretrained on: no split of the stack or the
demo (data seed 0) holds these images, as ImageNet holds none of Flickr30K's test images."""
STUDENT_PRETRAINING_IMAGES = 10000


def write_student_image_encoder(args, test: ShapesTensors, log: dict) -> None:
    """Writes the student encoder's `config.json`; for `scenes` also pretrains it and writes `model.safetensors`.

    The protocol's nfnet_l0 starts from ImageNet classification weights. The miniature of that: a multi-label
    classifier of which (shape, colour) pairs a scene holds (24 outputs, binary cross-entropy), trained without
    captions on `STUDENT_PRETRAINING_IMAGES` images of data seed `STUDENT_PRETRAINING_SEED`. Its classifier stays
    in the file; `build_image_encoder(checkpoint=...)` drops it.
    """
    import timm
    from safetensors.torch import save_file

    spec = dict(STUDENT_IMAGE_ENCODER)
    folder = args.output_dir / "student-image-encoder"
    folder.mkdir(parents=True, exist_ok=True)
    if args.config == "scenes":
        # the demo student's widths: the 32-256 one costs 2.4x per sample, more than the demo's 15 minutes allow
        spec["kwargs"] = {"channels": [16, 32, 64, 128], "stem_width": 16}
        generator = seed_everything(args.seed + 7)
        count = 600 if args.quick else STUDENT_PRETRAINING_IMAGES
        data = ShapesTensors.from_dataset(load_captioned_shapes(
            "scenes", seed=STUDENT_PRETRAINING_SEED, num_train=count, num_val=0, num_test=0)["train"])
        targets, test_targets = presence_targets(data), presence_targets(test)
        model = timm.create_model(spec["model_name"], num_classes=targets.shape[1], **spec["kwargs"]).to(args.device)
        batch_size = 128
        steps = args.student_epochs * (len(data) // batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        scheduler = one_cycle(optimizer, steps)
        progress = tqdm(total=steps, desc="student image encoder (shape-colour presence)")
        train_cpu = time.process_time()
        for _ in range(args.student_epochs):
            model.train()
            for index in batches(len(data), batch_size, generator):
                pixels = clip_normalize(data.floats(index)).to(args.device)
                flip = torch.rand(len(index), generator=generator) < 0.5
                pixels = torch.where(flip.to(args.device)[:, None, None, None], pixels.flip(-1), pixels)
                loss = F.binary_cross_entropy_with_logits(model(pixels), targets[index].to(args.device))
                optimisation_step(loss, optimizer, scheduler, progress, loss=f"{loss.item():.4f}")
        progress.close()
        log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
        model.eval()
        with torch.no_grad():
            predicted = torch.cat([model(clip_normalize(test.floats(slice(i, i + 500))).to(args.device)).cpu() > 0
                                   for i in range(0, len(test), 500)])
        log["test_presence"] = {
            "bit_accuracy": round(100 * float((predicted == test_targets.bool()).float().mean()), 2),
            "exact_match": round(100 * float((predicted == test_targets.bool()).all(1).float().mean()), 2),
        }
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        spec |= {"pretrained": True, "checkpoint": "model.safetensors", "note": (
            f"Pretrained without captions to tell which (shape, colour) pairs a scene holds, on {count} images of "
            f"captioned-shapes data seed {STUDENT_PRETRAINING_SEED} (no split of data seed 0), as the protocol's "
            "nfnet_l0 starts from ImageNet weights. Load with build_image_encoder(checkpoint=<this folder>/"
            "model.safetensors, **kwargs); the 24-way classifier in the file is dropped.")}
        spec["pretraining"] = {"images": count, "data_seed": STUDENT_PRETRAINING_SEED, "epochs": args.student_epochs,
                               "steps": steps, "targets": "presence of each (shape, colour) pair, 24 bits"}
    model = timm.create_model(spec["model_name"], pretrained=False, num_classes=0, **spec["kwargs"])
    spec["num_features"] = int(model.num_features)
    spec["params"] = num_params(model)
    (folder / "config.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    log.update({"num_features": spec["num_features"], "params": spec["params"]})


def presence_targets(data: ShapesTensors) -> torch.Tensor:
    """(N, 24) floats: 1 where the scene holds an object of that shape and colour (shapes major)."""
    pairs = [(shape, color) for shape in SHAPE_NAMES for color in COLORS]
    targets = torch.zeros(len(data), len(pairs))
    for i in range(len(data)):
        for obj in data.scene(i).objects:
            targets[i, pairs.index((obj.shape, obj.color))] = 1.0
    return targets


# --------------------------------------------------------------------------------------------------------- VAE


def build_vae(args):
    from diffusers import AutoencoderKL

    channels = list(args.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(16, channels[0]),
        sample_size=32,
    )


def train_vae(args, train: ShapesTensors, test: ShapesTensors, judge: AttributeJudge | None, log: dict):
    generator = seed_everything(args.seed + 5)
    vae = build_vae(args).to(args.device)
    batch_size = 64
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    scheduler = one_cycle(optimizer, args.vae_steps, pct_start=0.05)
    train_cpu = time.process_time()
    progress = tqdm(total=args.vae_steps, desc="vae")
    vae.train()
    step = 0
    while step < args.vae_steps:
        for index in batches(len(train), batch_size, generator):
            pixels = train.floats(index).to(args.device) * 2 - 1
            posterior = vae.encode(pixels).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(args.device)
            reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
            # L1 + MSE on pixels in [-1, 1]; the tiny KL weight of Stable Diffusion's VAE keeps latents regular
            loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)
            loss = loss + 1e-6 * posterior.kl().mean()
            optimisation_step(loss, optimizer, scheduler, progress, loss=f"{loss.item():.4f}")
            step += 1
            if step == args.vae_steps:
                break
    progress.close()
    log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
    vae.eval()
    latents = encode_latents(vae, train, args.device, sample=False)
    vae.register_to_config(scaling_factor=round(float(1.0 / latents.std()), 5))
    log["params"], log["steps"] = num_params(vae), args.vae_steps
    log["scaling_factor"] = vae.config.scaling_factor
    log["test_reconstruction"] = vae_eval(vae, test, judge, args.device)
    vae.cpu().save_pretrained(args.output_dir / "stable-diffusion" / "vae")
    return vae.to(args.device)


@torch.no_grad()
def encode_latents(vae, data: ShapesTensors, device: str, sample: bool) -> torch.Tensor:
    """Unscaled posterior means (and stds when `sample`) of every image: (N, 4, 8, 8) or (N, 8, 8, 8)."""
    chunks = []
    for start in range(0, len(data), 500):
        posterior = vae.encode(data.floats(slice(start, start + 500)).to(device) * 2 - 1).latent_dist
        chunks.append(torch.cat([posterior.mean, posterior.std], 1) if sample else posterior.mean)
    return torch.cat(chunks).cpu()


@torch.no_grad()
def vae_eval(vae, test: ShapesTensors, judge: AttributeJudge | None, device: str) -> dict:
    reconstructions = []
    for start in range(0, len(test), 500):
        pixels = test.floats(slice(start, start + 500)).to(device)
        reconstructions.append(((vae(pixels * 2 - 1).sample + 1) / 2).clamp(0, 1).cpu())
    reconstructions = torch.cat(reconstructions)
    result = {"mse_01": round(float(F.mse_loss(reconstructions, test.floats())), 6)}
    if judge is not None:
        result["judge_accuracy"] = judge_accuracy(judge, reconstructions, test, device)
    return result


# -------------------------------------------------------------------------------------------------------- UNet


def build_unet(args):
    from diffusers import UNet2DConditionModel

    channels = list(args.unet_channels)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D"] * len(channels),
        up_block_types=["CrossAttnUpBlock2D"] * len(channels),
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def sd_schedulers(prediction_type: str):
    """Stable Diffusion v1's noise schedule (scaled_linear, 1000 steps); DDIM with steps_offset=1 for sampling."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
              "prediction_type": prediction_type, "steps_offset": 1}
    return DDPMScheduler(num_train_timesteps=1000, **common), DDIMScheduler(set_alpha_to_one=False, **common)


def text_embeddings(text_encoder, tokenizer, captions: list[str], device: str) -> torch.Tensor:
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device))[0]


def train_unet(args, train: ShapesTensors, log: dict):
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel
    from transformers import CLIPModel, CLIPTextModel

    generator = seed_everything(args.seed + 6)
    vae = AutoencoderKL.from_pretrained(args.output_dir / "stable-diffusion" / "vae").to(args.device).eval()
    clip = CLIPModel.from_pretrained(args.output_dir / "clip")
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())  # transformers 5: CLIPTextModel has no wrapper
    text_encoder = text_encoder.to(args.device).eval().requires_grad_(False)
    tokenizer = clip_tokenizer(args.config)
    moments = encode_latents(vae, train, args.device, sample=True).to(args.device)  # (N, 8, 8, 8): mean | std
    scale = vae.config.scaling_factor
    train_scheduler, sample_scheduler = sd_schedulers(args.prediction_type)
    alphas = train_scheduler.alphas_cumprod.to(args.device)
    unet = build_unet(args).to(args.device)
    # update_after_step=-1: update k (from 1) uses decay min(ema_decay, (1 + k) / (10 + k)), the schedule the shipped
    # weights were trained with; the default 0 would start one update later, with a plain copy of the weights.
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, update_after_step=-1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=1e-2)
    scheduler = one_cycle(optimizer, args.unet_steps, pct_start=0.05)
    empty = text_embeddings(text_encoder, tokenizer, [""], args.device)
    train_cpu = time.process_time()
    progress = tqdm(total=args.unet_steps, desc="unet")
    unet.train()
    step, losses = 0, []
    while step < args.unet_steps:
        for index in batches(len(train), args.unet_batch_size, generator):
            n = len(index)
            mean, std = moments[index.to(args.device)].chunk(2, dim=1)
            latents = (mean + std * torch.randn(mean.shape, generator=generator).to(args.device)) * scale
            embeddings = text_embeddings(text_encoder, tokenizer, train.random_captions(index, generator), args.device)
            drop = (torch.rand(n, generator=generator) < args.caption_dropout).to(args.device)
            embeddings = torch.where(drop[:, None, None], empty.expand(n, -1, -1), embeddings)
            noise = torch.randn(latents.shape, generator=generator).to(args.device)
            timesteps = torch.randint(0, 1000, (n,), generator=generator).to(args.device)
            noisy = train_scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy, timesteps, embeddings).sample
            target = noise if args.prediction_type == "epsilon" else train_scheduler.get_velocity(latents, noise,
                                                                                                  timesteps)
            loss = F.mse_loss(prediction, target, reduction="none").mean((1, 2, 3))
            if args.snr_gamma > 0:  # min-SNR-gamma weighting (Hang et al., ICCV 2023)
                snr = alphas[timesteps] / (1 - alphas[timesteps])
                weight = snr.clamp(max=args.snr_gamma) / (snr if args.prediction_type == "epsilon" else snr + 1)
                loss = loss * weight
            loss = loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            ema.step(unet.parameters())
            losses.append(loss.item())
            progress.update()
            progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            step += 1
            if step == args.unet_steps:
                break
    progress.close()
    log["train_cpu_s"] = round(time.process_time() - train_cpu, 1)
    ema.copy_to(unet.parameters())
    unet.eval()
    log["params"], log["steps"] = num_params(unet), args.unet_steps
    log["final_loss_mean_last_100"] = round(float(np.mean(losses[-100:])), 5)
    save_stable_diffusion(args, vae, text_encoder, tokenizer, unet, sample_scheduler)


def save_stable_diffusion(args, vae, text_encoder, tokenizer, unet, scheduler) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae.cpu(), text_encoder=text_encoder.cpu(), tokenizer=tokenizer,
                                   unet=unet.cpu(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    folder = args.output_dir / "stable-diffusion"
    pipe.save_pretrained(folder)


# ---------------------------------------------------------------------------------------------- sample quality


@torch.no_grad()
def evaluate_generation(args, test: ShapesTensors, log: dict) -> None:
    """Generates from test captions with the saved pipeline and scores prompt following with the judge."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.output_dir / "stable-diffusion").to(args.device)
    pipe.set_progress_bar_config(disable=True)
    judge = load_judge(args.output_dir / "judge", device=args.device)
    count = min(args.eval_samples, len(test))
    prompts = [test.captions[i][i % 5] for i in range(count)]
    targets = None if args.config == "scenes" else [parse_caption(p) for p in prompts]
    for guidance in args.guidance_scales:
        images = []
        for start in range(0, count, 250):
            generator = torch.Generator(args.device).manual_seed(args.seed + start)
            out = pipe(prompts[start : start + 250], num_inference_steps=args.inference_steps,
                       guidance_scale=guidance, generator=generator, output_type="np")
            images.append(out.images)
        images = np.concatenate(images)
        if args.config == "scenes":
            scores = score_claims(images, prompts, judge)
            real = [test.scene(i) for i in range(count)]
            scores |= scenes.unsaid_variety(prompts, read_scenes(images, judge)[0], real)
        else:
            scores = score_prompt_following(images, targets, judge)
        log[f"guidance_{guidance:g}"] = {k: round(v, 2) for k, v in scores.items()}
        print(f"guidance {guidance:g}: {log[f'guidance_{guidance:g}']}", flush=True)
        if guidance == args.guidance_scales[-1]:
            save_grid(images[:64], prompts[:64], args.output_dir / "stable-diffusion-samples.png")
    log.update({"samples": count, "inference_steps": args.inference_steps, "scheduler": "DDIM"})


def save_grid(images: np.ndarray, prompts: list[str], path: Path) -> None:
    from PIL import Image

    side = int(math.ceil(math.sqrt(len(images))))
    grid = np.zeros((side * 34, side * 34, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, side)
        grid[r * 34 + 1 : r * 34 + 33, c * 34 + 1 : c * 34 + 33] = (image * 255).round().astype(np.uint8)
    Image.fromarray(grid).resize((side * 68, side * 68), Image.Resampling.NEAREST).save(path)
    path.with_suffix(".txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")


# -------------------------------------------------------------------------------------------------------- main


def load_splits(args) -> tuple[ShapesTensors, ShapesTensors]:
    """The train and test splits decoded into tensors (through `--data_cache` when given)."""
    if args.data_cache is not None and args.data_cache.exists():
        with np.load(args.data_cache) as arrays:
            train, test = ShapesTensors.from_arrays(arrays, "train_"), ShapesTensors.from_arrays(arrays, "test_")
        if (len(train), len(test)) != (args.num_train, args.num_test):
            raise ValueError(f"{args.data_cache} holds {len(train)}/{len(test)} train/test images, the arguments "
                             f"ask for {args.num_train}/{args.num_test}: delete it or pass other sizes.")
        return train, test
    dsd = load_captioned_shapes(args.config, seed=args.data_seed, num_train=args.num_train, num_val=0,
                                num_test=args.num_test)
    train, test = ShapesTensors.from_dataset(dsd["train"]), ShapesTensors.from_dataset(dsd["test"])
    if args.data_cache is not None:
        np.savez_compressed(args.data_cache, **train.to_arrays("train_"), **test.to_arrays("test_"))
    return train, test



def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.output_dir / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings |= {"torch": torch.__version__, "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M")}
    log.setdefault("runs", []).append(settings)  # each stage entry names the run that wrote it
    started = time.perf_counter()
    with stage(log, "data") as entry:
        train, test = load_splits(args)
        entry.update({"train_images": len(train), "test_images": len(test)})
    judge = None
    if "judge" in args.components:
        with stage(log, "judge") as entry:
            judge = train_judge(args, train, test, entry)
    elif (args.output_dir / "judge").is_dir():
        judge = load_judge(args.output_dir / "judge", device=args.device)
    if "clip" in args.components:
        with stage(log, "clip") as entry:
            train_clip(args, train, test, entry)
    if "text-encoder" in args.components:
        with stage(log, "text-encoder") as entry:
            train_text_encoder(args, train, test, entry)
    if "captioner" in args.components:
        with stage(log, "captioner") as entry:
            train_captioner(args, train, test, entry)
    if "student-image-encoder" in args.components:
        with stage(log, "student-image-encoder") as entry:
            write_student_image_encoder(args, test, entry)
    if "vae" in args.components:
        with stage(log, "vae") as entry:
            if (args.output_dir / "stable-diffusion").is_dir():  # a new VAE invalidates the old UNet
                shutil.rmtree(args.output_dir / "stable-diffusion")
            train_vae(args, train, test, judge, entry)
    if "unet" in args.components:
        with stage(log, "unet") as entry:
            train_unet(args, train, entry)
    if "eval" in args.components:
        with stage(log, "eval") as entry:
            evaluate_generation(args, test, entry)
    settings["total_wall_s"] = round(time.perf_counter() - started, 1)
    log["size_mb"] = round(folder_mb(args.output_dir), 2)
    if log_path.exists():  # another run may have written stages meanwhile (components trained in parallel): keep them
        current = json.loads(log_path.read_text())
        run = len(log["runs"]) - 1
        ours = {k: v for k, v in log.items() if k != "runs" and isinstance(v, dict) and v.get("run") == run}
        log = current | ours | {"size_mb": log["size_mb"]}
        log["runs"] = current.get("runs", []) + [settings]
        for entry in ours.values():
            entry["run"] = len(log["runs"]) - 1
    log_path.write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output_dir} ({log['size_mb']} MB) in {settings['total_wall_s']} s", flush=True)
    return log


if __name__ == "__main__":
    main()
