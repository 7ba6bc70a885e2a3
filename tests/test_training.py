"""The EDGE objective on one batch, the data pipeline, save/load of the tuned weights, and resuming (in-process)."""

import argparse
import dataclasses
import math

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.shapes.dataset import load_captioned_shapes
from diffusers_edge.training import (
    DIFFFIT_WEIGHT_NAME,
    LORA_TARGET_MODULES,
    EDGECollator,
    EDGELossConfig,
    EDGEObjective,
    EDGETrainItems,
    EpochBatchSampler,
    TrainingConfig,
    add_trainable_parameters,
    build_parser,
    check_clip_model,
    clip_pixel_values,
    difffit_parameters,
    load_difffit_weights,
    load_train_dataset,
    parse_args,
    predict_x0,
    resolve_checkpoint,
    rollout_latents,
    save_difffit,
    train,
)

CAPTIONS = [["a red circle", "a big red circle"], ["a blue square"], ["a small green triangle"], ["a white cross"]]


@pytest.fixture(scope="module")
def components(tiny_sd, tiny_clip):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    return pipe, CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _dataset(captions=CAPTIONS, size=16):
    ids = [str(i) for i in range(len(captions))]
    return datasets.Dataset.from_dict(
        {"image": _images(len(captions), size), "captions": captions, "image_id": ids},
        features=NORMALIZED_FEATURES,
    )


def _args(sd, clip, out, *extra):
    return parse_args(
        [
            "--pretrained_model_name_or_path", str(sd), "--clip_model_name_or_path", str(clip),
            "--output_dir", str(out), "--resolution", "16", "--train_batch_size", "2", "--report_to", "none",
            "--loss_max_timestep", "999", *extra,
        ]
    )  # fmt: skip


def _batch(pipe, processor, captions, keep=None, seed=0):
    collate = EDGECollator(pipe.tokenizer, processor.tokenizer)
    items = [
        {"pixel_values": torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed + i)) * 2 - 1,
         "caption": c, "unet_caption": c, "keep": True if keep is None else keep[i]}
        for i, c in enumerate(captions)
    ]  # fmt: skip
    return collate(items)


# ------------------------------------------------------------------------------------------------ x0 and CLIP input


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_matches_the_schedulers_own(prediction_type):
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type=prediction_type,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    noisy, output = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([5, 400, 990])
    ours = predict_x0(output, noisy, timesteps, scheduler)
    for i, t in enumerate(timesteps.tolist()):
        theirs = scheduler.step(output[i : i + 1], t, noisy[i : i + 1]).pred_original_sample
        torch.testing.assert_close(ours[i : i + 1], theirs, rtol=1e-5, atol=1e-5)


def test_clip_pixel_values_match_the_clip_image_processor():
    processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size=24)
    image = _images(1, size=48, seed=3)[0]
    expected = processor(images=image, return_tensors="pt").pixel_values
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = clip_pixel_values(as_tensor, processor)
    assert ours.shape == expected.shape == (1, 3, 24, 24)
    # the processor resizes uint8 with PIL; we resize floats: agree to about one grey level (std ~0.27)
    assert (ours - expected).abs().mean() < 0.03


# ------------------------------------------------------------------------------------------------ the objective


def _objective(components, config, finetune="lora", uncond=None):
    pipe, clip, processor = components
    unet = type(pipe.unet).from_config(pipe.unet.config)
    unet.load_state_dict(pipe.unet.state_dict())
    args = argparse.Namespace(
        finetune=finetune, rank=4, lora_alpha=8, use_dora=False, lora_layers=",".join(LORA_TARGET_MODULES)
    )
    params = add_trainable_parameters(unet, args)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    objective = EDGEObjective(
        unet, pipe.vae, pipe.text_encoder, clip, processor.image_processor, scheduler, config, uncond
    )
    return objective, params


def _text_states(pipe, captions):
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_rollout_samples_what_the_pipeline_samples(components, guidance_scale):
    from diffusers import DDIMScheduler

    pipe, _, _ = components
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text, empty = _text_states(pipe, ["a red circle", "a white cross"]), _text_states(pipe, [""])
    sampler = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})
    sampler.set_progress_bar_config(disable=True)
    expected = sampler(prompt_embeds=text, negative_prompt_embeds=empty.expand(2, -1, -1), latents=noise.clone(),
                       num_inference_steps=3, guidance_scale=guidance_scale, output_type="latent").images
    scheduler.set_timesteps(3)
    with torch.no_grad():
        ours = rollout_latents(pipe.unet, scheduler, noise, text, empty, guidance_scale)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_rollout_losses_ignore_timesteps_and_train_the_lora_through_the_sampler(components):
    pipe, _, processor = components
    captions = ["a red circle", "a blue square", "a white cross"]
    config = EDGELossConfig(denoise_weight=0.0, loss_max_timestep=0, clip_loss_inputs="rollout", rollout_steps=2)
    with pytest.raises(ValueError, match="uncond_hidden_states"):
        _objective(components, config)
    objective, params = _objective(components, config, uncond=_text_states(pipe, [""]))
    batch = _batch(pipe, processor, captions, keep=[True, False, True])
    out = objective(batch, torch.Generator().manual_seed(0))
    assert out.num_clip_pairs == 2 and out.contrastive.item() > 0  # t <= 0 would have kept none
    again = objective(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.loss, out.loss)
    out.loss.backward()  # the MSE weighs 0: LoRA gradients came back through CLIP, the VAE and 2 sampler steps
    names = {id(p): n for n, p in objective.unet.named_parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params if "lora_B" in names[id(p)])
    other = objective(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(other.loss.detach(), out.loss.detach())  # another draw of the starting noise


def test_unet_sees_the_noisy_latents(components):
    pipe, _, processor = components
    objective, _ = _objective(components, EDGELossConfig())
    seen = {}

    def capture(module, args):
        seen["sample"] = args[0].detach().clone()

    objective.unet.register_forward_pre_hook(capture)
    batch = _batch(pipe, processor, ["a red circle", "a blue square"])
    objective(batch, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        latents = pipe.vae.encode(batch["pixel_values"]).latent_dist.sample(gen) * pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.randint(0, 1000, (2,), generator=gen)
    expected = objective.noise_scheduler.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(seen["sample"], expected)
    assert not torch.allclose(seen["sample"], latents)


def test_gradients_reach_lora_parameters_and_only_them(components):
    pipe, clip, processor = components
    objective, params = _objective(components, EDGELossConfig(denoise_weight=0.0, loss_max_timestep=999))
    out = objective(_batch(pipe, processor, ["a red circle", "a blue square", "a white cross"]), torch.Generator())
    assert out.num_clip_pairs == 3 and out.denoise.item() > 0 and out.contrastive.item() > 0
    out.loss.backward()
    # with the MSE weighted 0, every LoRA gradient came through the VAE decoder and CLIP
    names = {id(p): n for n, p in objective.unet.named_parameters()}
    assert params and all("lora" in names[id(p)] for p in params)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params if "lora_B" in names[id(p)])
    assert all(p.grad is None for p in objective.unet.parameters() if "lora" not in names[id(p)])
    for frozen in (pipe.vae, pipe.text_encoder, clip):
        assert all(p.grad is None for p in frozen.parameters())


def test_difffit_trains_biases_and_norms_only(components):
    pipe, _, processor = components
    objective, params = _objective(components, EDGELossConfig(), finetune="difffit")
    chosen = difffit_parameters(objective.unet)
    assert {id(p) for p in params} == {id(p) for p in chosen.values()}
    assert any(".norm" in n and n.endswith("weight") for n in chosen) and all(
        n.endswith("bias") or "norm" in n for n in chosen
    )
    batch = _batch(pipe, processor, ["a red circle", "a blue square"])
    objective.config = EDGELossConfig(contrastive_weight=0.0, diversity_weight=0.0)  # the MSE, written out below
    objective(batch, torch.Generator().manual_seed(7)).loss.backward()
    _, noisy, timesteps, noise, states = _noisy_inputs(objective, pipe, batch, seed=7)
    mse = F.mse_loss(objective.unet(noisy, timesteps, states).sample, noise)
    expected = torch.autograd.grad(mse, params)
    for param, grad in zip(params, expected):
        torch.testing.assert_close(param.grad, grad)
    assert sum(int(grad.abs().sum() > 0) for grad in expected) > 0.9 * len(params)
    names = {id(p): n for n, p in objective.unet.named_parameters()}
    assert all(p.grad is None for p in objective.unet.parameters() if names[id(p)] not in chosen)


def _noisy_inputs(objective, pipe, batch, seed):
    """The objective's draws for a generator seeded with `seed`: clean and noisy latents, timesteps, noise, text."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = pipe.vae.encode(batch["pixel_values"]).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
        states = pipe.text_encoder(batch["input_ids"])[0]
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (latents.shape[0],), generator=generator)
    noisy = objective.noise_scheduler.add_noise(latents, noise, timesteps)
    return latents, noisy, timesteps, noise, states


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_denoising_target_follows_the_prediction_type(components, prediction_type):
    pipe, _, processor = components
    objective, _ = _objective(components, EDGELossConfig(loss_max_timestep=999))
    objective.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    batch = _batch(pipe, processor, ["a red circle", "a blue square"])
    out = objective(batch, torch.Generator().manual_seed(5))
    clean, noisy, timesteps, noise, states = _noisy_inputs(objective, pipe, batch, seed=5)
    with torch.no_grad():
        prediction = objective.unet(noisy, timesteps, states).sample
    alpha = objective.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    # v = sqrt(a) * eps - sqrt(1 - a) * x0 (Salimans & Ho 2022); "sample" predicts x0 itself
    target = alpha.sqrt() * noise - (1 - alpha).sqrt() * clean if prediction_type == "v_prediction" else clean
    torch.testing.assert_close(out.denoise, F.mse_loss(prediction, target))
    assert not torch.allclose(out.denoise, F.mse_loss(prediction, noise))  # not the epsilon target
    assert out.num_clip_pairs > 0 and torch.isfinite(out.loss)  # x0 for CLIP comes from the same prediction type


def test_loss_parts_combine_with_their_weights(components):
    pipe, _, processor = components
    batch = _batch(pipe, processor, ["a red circle", "a blue square", "a white cross"])
    weights = {"denoise_weight": 0.5, "contrastive_weight": 2.0, "diversity_weight": 3.0}
    objective, _ = _objective(components, EDGELossConfig(loss_max_timestep=999, **weights))
    out = objective(batch, torch.Generator().manual_seed(1))
    expected = 0.5 * out.denoise + 2.0 * out.contrastive + 3.0 * out.diversity
    torch.testing.assert_close(out.loss.detach(), expected)
    assert set(out.logs()) == {"loss", "loss_denoise", "loss_contrastive", "loss_diversity", "clip_pairs"}


def test_clip_losses_skip_dropped_captions_and_high_timesteps(components):
    pipe, _, processor = components
    captions = ["a red circle", "a blue square", "a white cross", "a green triangle"]
    objective, _ = _objective(components, EDGELossConfig(loss_max_timestep=999))
    out = objective(_batch(pipe, processor, captions, keep=[True, False, True, False]), torch.Generator())
    assert out.num_clip_pairs == 2
    objective.config.clip_batch_size = 1
    assert objective(_batch(pipe, processor, captions), torch.Generator()).num_clip_pairs == 1
    objective.config = EDGELossConfig(loss_max_timestep=0)
    out = objective(_batch(pipe, processor, captions), torch.Generator().manual_seed(3))  # t > 0 for all four
    assert out.num_clip_pairs == 0 and out.contrastive.item() == 0.0
    torch.testing.assert_close(out.loss.detach(), out.denoise)


def test_lower_loss_resolution_decodes_smaller_images(components):
    pipe, _, processor = components
    objective, _ = _objective(components, EDGELossConfig(loss_max_timestep=999, loss_resolution=8))
    sizes = []
    pipe.vae.decoder.register_forward_hook(lambda m, a, o: sizes.append(o.shape[-1]))
    try:
        objective(_batch(pipe, processor, ["a red circle", "a blue square"]), torch.Generator())
    finally:
        pipe.vae.decoder._forward_hooks.clear()
    assert sizes == [8]


# ------------------------------------------------------------------------------------------------ data


def test_items_are_seeded_per_epoch_and_row():
    args = argparse.Namespace(
        seed=0, image_column="image", caption_column="captions", caption_dropout=0.5, resolution=16,
        center_crop=False, random_flip=True, image_interpolation_mode="lanczos",
    )  # fmt: skip
    items = EDGETrainItems(_dataset([["a red circle", "a big red circle", "a tiny red circle"]] * 4), args)
    first, again = items[(2, 0)], items[(2, 0)]
    assert first["caption"] == again["caption"] and first["keep"] == again["keep"]
    torch.testing.assert_close(first["pixel_values"], again["pixel_values"])
    assert first["pixel_values"].shape == (3, 16, 16) and first["pixel_values"].min() >= -1
    draws = {(items[(2, e)]["caption"], items[(2, e)]["keep"]) for e in range(12)}
    assert len(draws) > 2  # caption choice and dropout change from epoch to epoch
    assert {items[(2, e)]["unet_caption"] for e in range(12)} >= {""}


def test_batch_sampler_splits_processes_and_skips():
    samplers = [EpochBatchSampler(10, 2, seed=1, process_index=p, num_processes=2) for p in range(2)]
    batches = [list(s) for s in samplers]
    assert len(samplers[0]) == 3 and all(len(b) == 2 for bs in batches for b in bs)
    rows = [row for bs in batches for b in bs for row, _ in b]
    assert set(rows) == set(range(10))  # 12 slots: every row once, two wrap around
    assert not {r for b in batches[0][:2] for r, _ in b} & {r for b in batches[1][:2] for r, _ in b}
    samplers[0].skip = 2
    assert list(samplers[0]) == batches[0][2:]
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != batches[0] and all(epoch == 1 for b in samplers[0] for _, epoch in b)


def test_load_train_dataset_checks_columns_and_captions(tiny_sd, tiny_clip, tmp_path):
    args = _args(tiny_sd, tiny_clip, tmp_path)
    ds, caption_column = load_train_dataset(args, _dataset())
    assert caption_column == "captions" and len(ds) == 4
    assert args.caption_column is None  # what it resolved is returned; the config is left as it was
    with pytest.raises(ValueError, match="--image_column 'picture'"):
        load_train_dataset(_args(tiny_sd, tiny_clip, tmp_path, "--image_column", "picture"), _dataset())
    with pytest.raises(ValueError, match="--caption_column 'text'"):
        load_train_dataset(_args(tiny_sd, tiny_clip, tmp_path, "--caption_column", "text"), _dataset())
    with pytest.raises(ValueError, match="none of the caption columns"):
        load_train_dataset(_args(tiny_sd, tiny_clip, tmp_path), _dataset().rename_column("captions", "words"))
    with pytest.raises(ValueError, match="training row 2 .* empty caption"):
        load_train_dataset(_args(tiny_sd, tiny_clip, tmp_path), _dataset([["a"], ["b"], ["c", " "], ["d"]]))
    with pytest.raises(ValueError, match="no training data"):
        load_train_dataset(_args(tiny_sd, tiny_clip, tmp_path))


def test_max_train_samples_and_center_crop(tiny_sd, tiny_clip, tmp_path):
    args = _args(tiny_sd, tiny_clip, tmp_path, "--max_train_samples", "2", "--center_crop")
    dataset, args.caption_column = load_train_dataset(args, _dataset())
    assert dataset["image_id"] == ["0", "1"]
    wide = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 32, 3), dtype=np.uint8))
    rows = {"image": [wide], "captions": [["a red circle"]], "image_id": ["0"]}
    one = datasets.Dataset.from_dict(rows, features=NORMALIZED_FEATURES)
    middle = TF.to_tensor(wide.crop((8, 0, 24, 16))) * 2 - 1  # 16 px high already: the centre 16 columns
    centred = EDGETrainItems(one, args)
    for epoch in range(4):
        torch.testing.assert_close(centred[(0, epoch)]["pixel_values"], middle)
    args.center_crop = False
    cropped = EDGETrainItems(one, args)
    assert any(not torch.allclose(cropped[(0, epoch)]["pixel_values"], middle) for epoch in range(4))


def test_scale_lr_and_gradient_checkpointing(tiny_sd, tiny_clip, tmp_path, monkeypatch):
    import torch.utils.checkpoint

    flags = ["--max_train_steps", "1", "--scale_lr", "--gradient_accumulation_steps", "1"]
    plain = train(_args(tiny_sd, tiny_clip, tmp_path / "plain", *flags), _dataset())
    assert plain.last_logs["lr"] == pytest.approx(1e-4 * 1 * 2 * 1)  # lr x accumulation x batch x processes
    calls, checkpoint = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    recomputed = train(_args(tiny_sd, tiny_clip, tmp_path / "recomputed", *flags, "--gradient_checkpointing"),
                       _dataset())  # fmt: skip
    assert calls  # the UNet's blocks went through torch.utils.checkpoint
    a, b = load_file(plain.weights_path), load_file(recomputed.weights_path)
    assert a.keys() == b.keys()
    for key in a:  # recomputing activations changes memory, not the result
        torch.testing.assert_close(a[key], b[key])


def test_bf16_mixed_precision_keeps_trainable_weights_in_float32(tiny_sd, tiny_clip, tmp_path):
    flags = ["--max_train_steps", "1", "--optimizer", "sgd", "--learning_rate", "1.0"]
    from accelerate.state import AcceleratorState

    full = train(_args(tiny_sd, tiny_clip, tmp_path / "fp32", *flags), _dataset())
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        mixed = train(_args(tiny_sd, tiny_clip, tmp_path / "bf16", *flags, "--mixed_precision", "bf16"), _dataset())
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    a, b = load_file(full.weights_path), load_file(mixed.weights_path)
    assert a.keys() == b.keys() and all(b[key].dtype == torch.float32 for key in b)
    # the same step computed with bfloat16 frozen models: close to the float32 step, not equal to it
    difference = max(float((a[key] - b[key]).abs().max()) for key in a)
    scale = max(float(a[key].abs().max()) for key in a)
    assert 0 < difference < 0.1 * scale
    assert math.isfinite(mixed.last_logs["loss"])


def test_clip_model_with_mismatched_projections_is_refused(tiny_clip):
    clip, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    assert check_clip_model(clip, processor.tokenizer, processor.image_processor, "tiny") == 16
    clip.text_projection = torch.nn.Linear(clip.text_projection.in_features, 8, bias=False)
    with pytest.raises(ValueError, match="image embeddings of size 16 but text embeddings of size 8"):
        check_clip_model(clip, processor.tokenizer, processor.image_processor, "tiny")


def test_bad_flags_fail_early(tiny_sd, tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="--caption_dropout"):
        _args(tiny_sd, tiny_clip, tmp_path, "--caption_dropout", "1.0")
    with pytest.raises(ValueError, match="--rollout_steps must be >= 1"):
        _args(tiny_sd, tiny_clip, tmp_path, "--clip_loss_inputs", "rollout", "--rollout_steps", "0")
    with pytest.raises(ValueError, match="--lora_layers must be comma-separated"):
        _args(tiny_sd, tiny_clip, tmp_path, "--lora_layers", "to_k,,to_v")
    with pytest.raises(ValueError, match="all loss weights are 0"):
        _args(tiny_sd, tiny_clip, tmp_path, *"--denoise_weight 0 --contrastive_weight 0 --diversity_weight 0".split())
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        resolve_checkpoint("checkpoint-7", tmp_path)
    assert resolve_checkpoint("latest", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="--resume_from_checkpoint"):
        train(_args(tiny_sd, tiny_clip, tmp_path / "out", "--resume_from_checkpoint", "nowhere"), _dataset())
    with pytest.raises(ValueError, match="--resolution 31 is not divisible by the VAE's downsampling factor 2"):
        train(_args(tiny_sd, tiny_clip, tmp_path / "out", "--resolution", "31"), _dataset())


def test_difffit_file_round_trip(components, tmp_path):
    pipe, _, _ = components
    unet = type(pipe.unet).from_config(pipe.unet.config)
    chosen = difffit_parameters(unet)
    with torch.no_grad():
        for p in chosen.values():
            p.add_(1.0)
    path = save_difffit(unet, tmp_path / "difffit_weights.safetensors", "tiny")
    assert set(load_file(path)) == set(chosen)
    fresh = type(pipe.unet).from_config(pipe.unet.config)
    conv_before = fresh.conv_in.weight.detach().clone()
    load_difffit_weights(fresh, path)
    tuned = dict(unet.named_parameters())
    for name, p in difffit_parameters(fresh).items():
        torch.testing.assert_close(p, tuned[name])
    torch.testing.assert_close(fresh.conv_in.weight, conv_before)  # not a DiffFit parameter: untouched
    with pytest.raises(ValueError, match="not in this UNet"):
        load_difffit_weights(torch.nn.Linear(2, 2), path)


# ------------------------------------------------------------------------------------------------ loop


def test_accumulation_steps_line_up_with_epochs(tiny_sd, tiny_clip, tmp_path):
    six = _dataset(CAPTIONS + CAPTIONS[:2])  # 3 batches of 2 per epoch: one update of 2 batches, one batch left over
    flags = ["--gradient_accumulation_steps", "2", "--num_train_epochs", "2", "--checkpointing_steps", "1"]
    flags += ["--contrastive_weight", "0", "--diversity_weight", "0"]  # only the step counting is under test
    result = train(_args(tiny_sd, tiny_clip, tmp_path / "acc", *flags), six)
    assert result.global_step == 2 and result.last_logs["lr"] == pytest.approx(1e-4)
    assert sorted(p.name for p in (tmp_path / "acc").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(ValueError, match="--gradient_accumulation_steps 4 exceeds the 3 batches"):
        train(_args(tiny_sd, tiny_clip, tmp_path / "acc4", "--gradient_accumulation_steps", "4"), six)


def test_train_with_rollout_inputs_saves_a_lora_and_says_so_in_the_card(tiny_sd, tiny_clip, tmp_path):
    flags = ["--max_train_steps", "1", "--clip_loss_inputs", "rollout", "--rollout_steps", "2"]
    flags += ["--clip_batch_size", "3"]
    config = _args(tiny_sd, tiny_clip, tmp_path / "rollout", *flags)
    result = train(config, _dataset())
    assert result.weights_path.is_file() and result.last_logs["clip_pairs"] > 0
    card = (tmp_path / "rollout" / "README.md").read_text()
    assert "caption column 'captions'" in card and config.caption_column is None  # resolved for the run only
    assert "rollouts: 2 DDIM steps from noise, guidance 3.0" in card
    assert "own 2-step DDIM samples from pure noise" in card and "one-step x0" not in card
    assert "| CLIP losses' samples per batch at most | 3 |" in card


def test_lora_layers_choose_the_adapted_modules_and_a_stock_pipeline_reloads_them(tiny_sd, tiny_clip, tmp_path):
    flags = ["--max_train_steps", "2", "--lora_layers", "attn2.to_k,attn2.to_v", "--rank", "2", "--lora_alpha", "4"]
    result = train(_args(tiny_sd, tiny_clip, tmp_path / "kv", *flags), _dataset())
    keys = load_file(str(result.weights_path)).keys()
    assert keys and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in keys)
    assert {k.split(".attn2.")[1].split(".")[0] for k in keys} == {"to_k", "to_v"}
    assert "layers attn2.to_k,attn2.to_v" in (tmp_path / "kv" / "README.md").read_text()

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.load_lora_weights(tmp_path / "kv")
    config = next(iter(pipe.unet.peft_config.values()))
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (2, 4, {"attn2.to_k", "attn2.to_v"})


# ------------------------------------------------------------------------------------------------ resume


def test_resumed_difffit_run_ends_with_the_same_weights_as_an_uninterrupted_one(tiny_sd, tiny_clip, tmp_path):
    flags = ["--finetune", "difffit", "--max_train_steps", "2", "--checkpointing_steps", "1"]
    flags += ["--learning_rate", "1e-2"]
    full = train(_args(tiny_sd, tiny_clip, tmp_path / "full", *flags), _dataset())
    first = _args(tiny_sd, tiny_clip, tmp_path / "resumed", *flags)
    first.max_train_steps = 1
    train(first, _dataset())
    start = load_file(tmp_path / "resumed" / "checkpoint-1" / DIFFFIT_WEIGHT_NAME)
    resumed = train(_args(tiny_sd, tiny_clip, tmp_path / "resumed", *flags, "--resume_from_checkpoint", "latest"),
                    _dataset())  # fmt: skip
    assert full.global_step == resumed.global_step == 2 and resumed.weights_path.name == DIFFFIT_WEIGHT_NAME
    a, b = load_file(full.weights_path), load_file(resumed.weights_path)
    assert a.keys() == b.keys() == start.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a[k], start[k]) for k in a)  # step 2 did change the weights


def test_resumed_run_ends_with_the_same_lora_as_an_uninterrupted_one(tiny_sd, tiny_clip, tmp_path):
    shapes = load_captioned_shapes(num_train=6, num_val=1, num_test=1)["train"]  # the demo passes this split
    # the warm-up spans the checkpoint, so the restored scheduler state matters
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--random_flip", "--learning_rate", "1e-2"]
    flags += ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "3"]
    full = train(_args(tiny_sd, tiny_clip, tmp_path / "full", *flags), shapes)
    first = _args(tiny_sd, tiny_clip, tmp_path / "resumed", *flags)
    first.max_train_steps = 2
    train(first, shapes)
    assert (tmp_path / "resumed" / "checkpoint-2" / "pytorch_lora_weights.safetensors").is_file()
    resume = _args(tiny_sd, tiny_clip, tmp_path / "resumed", *flags, "--resume_from_checkpoint", "latest")
    resumed = train(resume, shapes)
    assert full.global_step == resumed.global_step == 4
    a, b = load_file(full.weights_path), load_file(resumed.weights_path)
    start = load_file(tmp_path / "resumed" / "checkpoint-2" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a[k], start[k]) for k in a)  # steps 3-4 did change the weights


# ------------------------------------------------------------------------------------------------ diffusers' flags


def test_diffusers_training_flags_parse_with_diffusers_defaults(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = parse_args(["--pretrained_model_name_or_path", "sd", "--dataset_name", "x"])
    assert (args.snr_gamma, args.noise_offset, args.prediction_type) == (None, 0, None)
    assert (args.use_8bit_adam, args.enable_xformers_memory_efficient_attention) == (False, False)
    assert (args.image_interpolation_mode, args.hub_token, args.local_rank) == ("lanczos", None, -1)
    assert args.report_to == "tensorboard"
    copied = [  # flags as diffusers' train_text_to_image_lora.py commands write them
        "--pretrained_model_name_or_path", "sd", "--dataset_name", "x", "--snr_gamma", "5.0", "--noise_offset",
        "0.05", "--prediction_type", "v_prediction", "--image_interpolation_mode", "bicubic", "--hub_token", "hf_x",
        "--local_rank", "0", "--report_to", "tensorboard",
    ]  # fmt: skip
    args = parse_args(copied)
    assert (args.snr_gamma, args.noise_offset, args.prediction_type) == (5.0, 0.05, "v_prediction")
    assert (args.image_interpolation_mode, args.hub_token, args.local_rank) == ("bicubic", "hf_x", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert parse_args(copied).local_rank == 3  # the launcher's LOCAL_RANK wins, as in diffusers


def test_every_flag_is_a_config_field_with_the_parsers_default():
    parser = build_parser()
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    assert list(flags) == list(fields)  # same names, same order
    for name, field in fields.items():
        if field.default is dataclasses.MISSING:
            assert flags[name].required and name == "pretrained_model_name_or_path"
        else:
            assert parser.get_default(name) == field.default, name
            assert type(parser.get_default(name)) is type(field.default), name
    assert [group.title for group in parser._action_groups[2:]] == [
        "models", "data", "optimisation", "what is tuned", "EDGE objective", "checkpoints, logging, validation, Hub"
    ]  # fmt: skip


def test_objective_defaults_are_written_once_in_edge_loss_config():
    fields = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    for field in dataclasses.fields(EDGELossConfig):
        assert fields[field.name] == field.default, field.name
    assert TrainingConfig(pretrained_model_name_or_path="sd").loss_config() == EDGELossConfig()
    config = TrainingConfig(pretrained_model_name_or_path="sd", clip_loss_inputs="rollout", snr_gamma=5.0)
    assert config.loss_config() == EDGELossConfig(clip_loss_inputs="rollout", snr_gamma=5.0)


def test_to_argv_round_trips_through_parse_args(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    default = TrainingConfig(pretrained_model_name_or_path="sd")
    assert default.to_argv() == ["--pretrained_model_name_or_path", "sd"]
    assert parse_args(default.to_argv()) == default
    changed = dataclasses.replace(
        default, dataset_name="x", center_crop=True, use_dora=True, learning_rate=5e-4, lora_alpha=8.0,
        clip_batch_size=3, max_grad_norm=float("inf"), lora_layers="attn2.to_k,attn2.to_v", noise_offset=0.05,
        clip_loss_inputs="rollout", validation_prompt="- a red circle, left", mixed_precision="bf16", local_rank=2,
    )  # fmt: skip
    argv = changed.to_argv()
    assert "--center_crop" in argv and "--contrastive_weight" not in argv
    assert parse_args(argv) == changed
    with pytest.raises(ValueError, match="clip_model_name_or_path=None has no flag"):
        dataclasses.replace(default, clip_model_name_or_path=None).to_argv()


@pytest.mark.parametrize(
    ("flags", "package"),
    [
        (["--use_8bit_adam"], "bitsandbytes"),
        (["--enable_xformers_memory_efficient_attention"], "xformers"),
        (["--report_to", "wandb"], "wandb"),
    ],
)
def test_a_flag_whose_package_is_missing_fails_at_parse_time(monkeypatch, flags, package):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ValueError, match=rf"{flags[0]}.* needs the '{package}' package.*pip install {package}"):
        parse_args(["--pretrained_model_name_or_path", "sd", "--dataset_name", "x", *flags])


def test_report_to_and_hub_token_checks(monkeypatch):
    base = ["--pretrained_model_name_or_path", "sd", "--dataset_name", "x"]
    with pytest.raises(ValueError, match="--report_to 'tensorbord' is not a tracker"):
        parse_args([*base, "--report_to", "tensorbord"])
    with pytest.raises(ValueError, match="--use_8bit_adam replaces AdamW"):
        parse_args([*base, "--use_8bit_adam", "--optimizer", "sgd"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match="--hub_token with --report_to wandb"):
        parse_args([*base, "--report_to", "wandb", "--hub_token", "hf_x"])


def test_min_snr_weighting_matches_hand_computed_weights(components):
    pipe, clip, processor = components
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=prediction_type)
        config = EDGELossConfig(snr_gamma=5.0, contrastive_weight=0, diversity_weight=0)
        objective = EDGEObjective(pipe.unet, pipe.vae, pipe.text_encoder, clip, processor.image_processor,
                                  scheduler, config)  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        pred, target = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
        timesteps = torch.tensor([10, 500, 990])
        alpha = scheduler.alphas_cumprod[timesteps].double()
        snr = alpha / (1 - alpha)
        weight = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr if prediction_type == "epsilon" else snr + 1)
        per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3)).double()
        expected = (per_sample * weight).mean()
        got = objective._denoise_loss(pred, target, timesteps)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
        assert got.item() != pytest.approx(per_sample.mean().item(), rel=1e-3)  # the weights do something
        objective.config = EDGELossConfig()
        assert objective._denoise_loss(pred, target, timesteps).item() == pytest.approx(per_sample.mean().item())


def test_noise_offset_changes_the_training_noise_and_zero_keeps_it(components):
    pipe, clip, processor = components
    batch = _batch(pipe, processor, ["a red circle", "a blue square"])

    def denoise(offset):
        config = EDGELossConfig(noise_offset=offset, contrastive_weight=0, diversity_weight=0)
        objective = EDGEObjective(pipe.unet, pipe.vae, pipe.text_encoder, clip, processor.image_processor,
                                  pipe.scheduler, config)  # fmt: skip
        with torch.no_grad():
            return objective(batch, generator=torch.Generator().manual_seed(1)).denoise.item()

    assert denoise(0.0) == denoise(0.0)
    assert denoise(0.5) != pytest.approx(denoise(0.0), rel=1e-4)


def test_logged_loss_is_the_mean_over_gradient_accumulation():
    from diffusers_edge.training import AccumulatedLoss, EDGELossOutput

    class OneProcess:
        def reduce(self, tensor, reduction):
            return tensor

    def output(loss, clip_pairs):
        value = torch.tensor(loss)
        return EDGELossOutput(value, value / 2, value / 4, torch.tensor(0.0), clip_pairs)

    meter = AccumulatedLoss()
    meter.add(output(1.0, 2))
    meter.add(output(3.0, 4))
    logs = meter.logs(OneProcess(), lr=0.1)
    assert logs == {"loss": 2.0, "loss_denoise": 1.0, "loss_contrastive": 0.5, "loss_diversity": 0.0,
                    "clip_pairs": 3.0, "lr": 0.1}  # fmt: skip
    meter.add(output(5.0, 1))  # the next step starts afresh
    assert meter.logs(OneProcess(), lr=0.1)["loss"] == 5.0


def test_image_interpolation_mode_is_used_to_resize(tiny_sd, tiny_clip, tmp_path):
    image = _images(1, size=48, seed=4)[0]
    dataset = datasets.Dataset.from_dict({"image": [image], "captions": [["x"]]})
    pixels = {}
    for mode in ("lanczos", "nearest"):
        args = _args(tiny_sd, tiny_clip, tmp_path, "--center_crop", "--image_interpolation_mode", mode)
        args.caption_column = "captions"
        pixels[mode] = EDGETrainItems(dataset, args)[(0, 0)]["pixel_values"]
    for mode, pil_mode in (("lanczos", PIL.Image.LANCZOS), ("nearest", PIL.Image.NEAREST)):
        expected = torch.from_numpy(np.array(image.resize((16, 16), pil_mode))).permute(2, 0, 1) / 255 * 2 - 1
        torch.testing.assert_close(pixels[mode], expected, atol=1e-6, rtol=0)
    assert not torch.allclose(pixels["lanczos"], pixels["nearest"])


def test_per_process_library_verbosity():
    import diffusers
    import transformers

    from diffusers_edge.process_logging import set_library_verbosity

    before = transformers.utils.logging.get_verbosity(), diffusers.utils.logging.get_verbosity()
    try:
        set_library_verbosity(is_local_main_process=False)
        for library in (transformers.utils.logging, diffusers.utils.logging, datasets.utils.logging):
            assert library.get_verbosity() == library.ERROR and not library.is_progress_bar_enabled()
        set_library_verbosity(is_local_main_process=True)
        assert transformers.utils.logging.get_verbosity() == transformers.utils.logging.WARNING
        assert diffusers.utils.logging.get_verbosity() == diffusers.utils.logging.INFO
        assert transformers.utils.logging.is_progress_bar_enabled()
    finally:
        transformers.utils.logging.set_verbosity(before[0])
        diffusers.utils.logging.set_verbosity(before[1])


# ------------------------------------------------------------------------------------------------ card and push


def test_lora_card_carries_diffusers_training_metadata(tiny_sd, tiny_clip, tmp_path):
    from huggingface_hub import ModelCard

    from diffusers_edge.training import hub_base_model, save_model_card

    out = tmp_path / "card"
    out.mkdir()
    (out / "image_5.png").write_bytes(b"stale")  # a longer earlier run's image
    args = _args(tiny_sd, tiny_clip, out, "--validation_prompt", "a red circle")
    args.caption_column = "captions"
    save_model_card(args, out, 7, _images(2, 8))
    data = ModelCard.load(out / "README.md").data.to_dict()  # huggingface_hub's own parser
    assert data["base_model"] == str(tiny_sd) and data["library_name"] == "diffusers" and data["inference"] is True
    assert data["license"] == "creativeml-openrail-m" and data["instance_prompt"] == "a red circle"
    assert data["widget"] == [{"text": "a red circle", "output": {"url": f"image_{i}.png"}} for i in range(2)]
    assert {"diffusers-training", "text-to-image", "lora", "dataset-distillation"} <= set(data["tags"])
    assert sorted(p.name for p in out.glob("image_*.png")) == ["image_0.png", "image_1.png"]

    snapshot = tmp_path / "hub" / "models--org--sd-name" / "snapshots" / "abc123"
    assert hub_base_model(str(snapshot)) == "org/sd-name"
    saved = tmp_path / "saved-from-hub"
    saved.mkdir()
    (saved / "model_index.json").write_text('{"_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5"}')
    assert hub_base_model(str(saved)) == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert hub_base_model("org/sd") == "org/sd"


def test_push_uploads_weights_card_and_its_images_only(tiny_sd, tiny_clip, tmp_path, monkeypatch):
    """--push_to_hub's upload, through huggingface_hub's upload_folder into a local folder that plays the Hub
    repository (no Hub is reachable in the tests)."""
    import huggingface_hub

    from diffusers_edge.testing import LocalFolderHub
    from diffusers_edge.training import push_training_output

    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    out = tmp_path / "edge-lora"
    for name in ("pytorch_lora_weights.safetensors", "README.md", "image_0.png", "validation/step-4_0.png",
                 "checkpoint-4/optimizer.bin", "logs/events", "image_3.png"):  # fmt: skip
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name if name != "README.md" else "---\nlicense: mit\n---\n")
    repo = tmp_path / "repo"
    (repo).mkdir()
    (repo / "image_2.png").write_text("left by an earlier push")
    args = _args(tiny_sd, tiny_clip, out, "--hub_model_id", "me/edge-lora")
    assert push_training_output(args, out, num_images=1, api=LocalFolderHub(repo)) == "me/edge-lora"
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert files == ["README.md", "image_0.png", "pytorch_lora_weights.safetensors"]


def test_train_runs_with_copied_diffusers_flags(tiny_sd, tiny_clip, tmp_path):
    flags = ["--max_train_steps", "2", "--gradient_accumulation_steps", "2", "--snr_gamma", "5.0"]
    flags += ["--noise_offset", "0.1", "--prediction_type", "v_prediction", "--image_interpolation_mode", "bicubic"]
    result = train(_args(tiny_sd, tiny_clip, tmp_path / "copied", *flags), _dataset())
    assert result.global_step == 2 and result.weights_path.is_file() and result.last_logs["loss"] > 0
    card = (tmp_path / "copied" / "README.md").read_text()
    assert "| prediction type | v_prediction |" in card and "| Min-SNR gamma / noise offset | 5.0 / 0.1 |" in card
