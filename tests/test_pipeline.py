"""EDGEPipeline: loading a stock Stable Diffusion folder, component round-trips, LoRA, and `distill`."""

import io
import json
import math

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from transformers import CLIPModel, CLIPProcessor

from diffusers_edge.captioning import Captioner
from diffusers_edge.data.distilled import MANIFEST_NAME, load_distilled, to_flat_pairs
from diffusers_edge.pipeline_edge import EDGEPipeline, item_seed
from diffusers_edge.selection import embed_captions, kcenter_greedy, kmeans_nearest
from diffusers_edge.shapes.dataset import load_captioned_shapes
from diffusers_edge.testing import save_tiny_captioner

FAST = {"num_inference_steps": 2, "progress": False}


@pytest.fixture(scope="module")
def source():
    return load_captioned_shapes(num_train=12, num_val=1, num_test=1)["train"]


def brightness_captioner(images, prompts, num_captions, seeds):
    """A plain function captioner: looks at the image, so its captions change when the image does."""
    out = []
    for image, seed in zip(images, seeds):
        level = int(np.asarray(image).mean())
        out.append([f"an image of brightness {level} take {k} seed {seed % 1000}" for k in range(num_captions)])
    return out


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "data").glob("*.parquet"))}


def test_stock_sd_folder_loads_and_matches_stable_diffusion(tiny_sd_path, pipe):
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    reference.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a small blue square"]

    def run(p):
        generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
        return p(prompts, generator=generators, num_inference_steps=2, output_type="np").images

    assert isinstance(pipe, EDGEPipeline) and pipe.clip_model is None and pipe.captioner is None
    ours = run(pipe)
    np.testing.assert_array_equal(ours, run(reference))
    assert ours.shape == (2, 32, 32, 3) and not np.allclose(ours[0], ours[1])


def test_save_load_round_trip_keeps_optional_components(tiny_sd_path, tiny_clip_path, tmp_path):
    tiny_captioner = Captioner.from_pretrained(save_tiny_captioner(tmp_path / "captioner"))
    pipe = EDGEPipeline.from_pretrained(
        tiny_sd_path,
        clip_model=CLIPModel.from_pretrained(tiny_clip_path),
        clip_processor=CLIPProcessor.from_pretrained(tiny_clip_path),
        captioner=tiny_captioner.model,
        captioner_processor=tiny_captioner.processor,
    )
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    # the generic loader's class, in the string form (the list form would force trust_remote_code)
    assert index["_class_name"] == "StableDiffusionPipeline" and index["clip_model"] == ["transformers", "CLIPModel"]
    loaded = EDGEPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded, EDGEPipeline)
    for name in ("clip_model", "captioner"):
        before, after = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert type(getattr(loaded, name)) is type(getattr(pipe, name))
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(loaded.clip_processor) is CLIPProcessor
    assert loaded.clip_processor.tokenizer.get_vocab() == pipe.clip_processor.tokenizer.get_vocab()
    assert type(loaded.captioner_processor) is type(pipe.captioner_processor)
    text = "a red circle"
    assert loaded.clip_processor(text=[text])["input_ids"] == pipe.clip_processor(text=[text])["input_ids"]


def test_generic_diffusion_pipeline_loader_opens_a_saved_edge_pipeline(pipe, tiny_clip_path, tmp_path):
    """What a user of a pushed EDGE pipeline runs: DiffusionPipeline.from_pretrained gives a working text-to-image
    pipeline (the same images as the EDGE pipeline that saved it); EDGEPipeline.from_pretrained keeps the extras."""
    saver = EDGEPipeline(**{**pipe.components, "clip_model": CLIPModel.from_pretrained(tiny_clip_path),
                            "clip_processor": CLIPProcessor.from_pretrained(tiny_clip_path)})
    saver.save_pretrained(tmp_path / "saved")
    generic = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(generic) is StableDiffusionPipeline and "clip_model" not in generic.components
    generic.set_progress_bar_config(disable=True)

    def run(p):
        generator = torch.Generator().manual_seed(5)
        return p("a red circle", generator=generator, num_inference_steps=2, output_type="np").images

    np.testing.assert_array_equal(run(generic), run(pipe))
    edge = EDGEPipeline.from_pretrained(tmp_path / "saved")
    assert type(edge.clip_model) is CLIPModel and type(edge.clip_processor) is CLIPProcessor


def test_lora_changes_images_and_is_recorded(tiny_sd_path, source, tmp_path):
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    before = pipe.distill(source, 2, captions_per_image=1, output_dir=tmp_path / "plain", **FAST)
    torch.manual_seed(0)
    targets = ["to_k", "to_q", "to_v", "to_out.0"]
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=targets))
    with torch.no_grad():  # gaussian init leaves lora_B at zero: give the adapter a visible effect
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)
    fresh = EDGEPipeline.from_pretrained(tiny_sd_path)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    after = fresh.distill(source, 2, captions_per_image=1, output_dir=tmp_path / "lora-set", **FAST)
    assert after["prompt"] == before["prompt"]
    assert not np.array_equal(np.asarray(after[0]["image"]), np.asarray(before[0]["image"]))
    manifest = json.loads((tmp_path / "lora-set" / MANIFEST_NAME).read_text())
    assert manifest["lora"] == [str(tmp_path / "lora")]
    assert "lora:" in (tmp_path / "lora-set" / "README.md").read_text()


def test_distill_rows_captions_seeds_and_identical_bytes(pipe, source, tmp_path):
    guidance = {"guidance_scale": 3.0, "negative_prompt": "a blurry picture"}  # not the defaults
    kwargs = dict(captions_per_image=2, seed=7, batch_size=2, shard_size=2, captioner=brightness_captioner, **FAST)
    kwargs.update(guidance)
    distilled = pipe.distill(source, 8, output_dir=tmp_path / "a", **kwargs)
    assert distilled.num_rows == math.ceil(8 / 2) == 4
    owners = {c: i for i, cs in zip(source["image_id"], source["captions"]) for c in cs}
    for index, row in enumerate(distilled):
        assert row["image_id"] == str(index) and row["seed"] == item_seed(7, index)
        assert len(row["captions"]) == 2 and all(c.strip() for c in row["captions"])
        assert row["captions"][0] == row["prompt"] and row["source_image_id"] == owners[row["prompt"]]
        level = int(np.asarray(row["image"]).mean())
        assert row["captions"][1].startswith(f"an image of brightness {level} ")
        assert row["image"].size == (32, 32)
    assert len(set(distilled["prompt"])) == 4

    # the item seed alone fixes an image: a direct pipeline call with the same batch, guidance and negative prompt
    # gives the same pixels; the stock guidance or no negative prompt would give others
    def direct(guidance_scale, negative_prompt):
        generators = [torch.Generator("cpu").manual_seed(item_seed(7, i)) for i in (0, 1)]
        negative = None if negative_prompt is None else [negative_prompt] * 2
        images = pipe(distilled["prompt"][:2], generator=generators, num_inference_steps=2, output_type="pil",
                      guidance_scale=guidance_scale, negative_prompt=negative).images  # fmt: skip
        return [np.asarray(image) for image in images]

    made = [np.asarray(distilled[i]["image"]) for i in (0, 1)]
    for i, image in enumerate(direct(**guidance)):
        np.testing.assert_array_equal(image, made[i])
    for other in (direct(7.5, guidance["negative_prompt"]), direct(guidance["guidance_scale"], None)):
        assert all(not np.array_equal(image, made[i]) for i, image in enumerate(other))

    again = pipe.distill(source, 8, output_dir=tmp_path / "b", **kwargs)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b") and len(shard_bytes(tmp_path / "a")) == 2
    other_seed = pipe.distill(source, 8, output_dir=tmp_path / "c", **{**kwargs, "seed": 8})
    assert other_seed["prompt"] != distilled["prompt"]

    by_load_dataset = datasets.load_dataset(str(tmp_path / "a"), split="train")
    by_builder = load_distilled(tmp_path / "a", cache_dir=tmp_path / "cache")
    for other in (again, by_load_dataset, by_builder):
        assert other["captions"] == distilled["captions"] and other["seed"] == distilled["seed"]
        assert [np.asarray(im).tobytes() for im in other["image"]] == [
            np.asarray(im).tobytes() for im in distilled["image"]
        ]
    flat = to_flat_pairs(distilled)
    assert flat.num_rows == 8 and flat["caption"] == [c for cs in distilled["captions"] for c in cs]


def test_kill_and_resume_equals_uninterrupted(pipe, source, tmp_path):
    kwargs = dict(captions_per_image=1, seed=3, batch_size=1, shard_size=2, **FAST)
    reference = tmp_path / "reference"
    pipe.distill(source, 5, output_dir=reference, **kwargs)

    class Killed(RuntimeError):
        pass

    def kill_after_three(report):
        if report.items_done == 3:
            raise Killed("simulated crash after 3 items")

    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        pipe.distill(source, 5, output_dir=resumed, callback=kill_after_three, **kwargs)
    assert sorted(shard_bytes(resumed)) == ["train-00000-of-00003.parquet"]  # shard 1 was half made: not written
    assert not (resumed / "README.md").exists()
    (resumed / ".edge_tmp").mkdir(exist_ok=True)  # a partial file left by a crash mid-write
    (resumed / ".edge_tmp" / "train-00001-of-00003.parquet.999.partial").write_bytes(b"PAR1 truncated")

    reports = []
    result = pipe.distill(source, 5, output_dir=resumed, callback=reports.append, **kwargs)
    made = [i for r in reports for i in r.last_indices]
    assert made == [2, 3, 4]  # the finished shard (items 0, 1) was not regenerated
    assert [r.event for r in reports] == ["batch", "batch", "shard", "batch", "shard"]
    assert [r.items_done for r in reports] == [1, 2, 2, 3, 3] and reports[-1].items_total == 3  # snapshots
    assert reports[-1].writing_s > 0 and reports[-1].generation_s > 0 and reports[-1].captioning_s >= 0
    assert shard_bytes(resumed) == shard_bytes(reference)
    assert not (resumed / ".edge_tmp").exists()
    assert result.num_rows == 5 and result["image_id"] == ["0", "1", "2", "3", "4"]


def test_different_arguments_are_refused_by_name(pipe, source, tmp_path):
    kwargs = dict(captions_per_image=1, seed=0, batch_size=2, **FAST)
    pipe.distill(source, 2, output_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match=r"guidance_scale=7\.5, but this call has guidance_scale=2\.0"):
        pipe.distill(source, 2, output_dir=tmp_path, guidance_scale=2.0, **kwargs)
    with pytest.raises(ValueError, match="num_pairs=2, but this call has num_pairs=4"):
        pipe.distill(source, 4, output_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="source_fingerprint"):
        pipe.distill(["a red circle", "a blue square"], 2, output_dir=tmp_path, **kwargs)
    restarted = pipe.distill(source, 4, output_dir=tmp_path, resume=False, **kwargs)
    assert restarted.num_rows == 4 and len(list((tmp_path / "data").glob("*.parquet"))) == 1


def test_bad_inputs_raise_clear_errors(pipe, source, tmp_path):
    with pytest.raises(ValueError, match="num_pairs must be a positive integer"):
        pipe.distill(source, 0, captions_per_image=1, output_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="needs 61 distinct prompts, but the source supplies only 60"):
        pipe.distill(source, 61, captions_per_image=1, output_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="captions_per_image must be an integer >= 1"):
        pipe.distill(source, 2, captions_per_image=0, output_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="captions_per_image=2 needs a captioner"):
        pipe.distill(source, 2, captions_per_image=2, output_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="no 'captions' column"):
        pipe.distill(source.remove_columns("captions"), 2, captions_per_image=1, output_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="empty caption at position 1"):
        pipe.distill(["a red circle", " "], 2, captions_per_image=1, output_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="needs output_dir"):
        pipe.distill(source, 2, captions_per_image=1, **FAST)

    def empty_for_second(images, prompts, num_captions, seeds):
        return [["a caption"] if i == 0 else [""] for i in range(len(images))]

    with pytest.raises(ValueError, match=r"item 1 \(prompt '.+'\) has an empty caption"):
        pipe.distill(source, 4, 2, captioner=empty_for_second, batch_size=2, output_dir=tmp_path / "e", **FAST)
    with pytest.raises(ValueError, match="selection='kcenter' embeds the captions with CLIP"):
        pipe.distill(source, 2, captions_per_image=1, selection="kcenter", output_dir=tmp_path / "k", **FAST)


def test_kcenter_kmeans_and_callable_selection(tiny_sd_path, tiny_clip_path, source, tmp_path):
    clip_model = CLIPModel.from_pretrained(tiny_clip_path)
    clip_processor = CLIPProcessor.from_pretrained(tiny_clip_path)
    pipe = EDGEPipeline.from_pretrained(tiny_sd_path, clip_model=clip_model, clip_processor=clip_processor)
    pipe.set_progress_bar_config(disable=True)
    captions = [c for cs in source["captions"] for c in cs]
    distilled = pipe.distill(source, 4, 1, selection="kcenter", seed=1, output_dir=tmp_path / "k", **FAST)
    expected = kcenter_greedy(embed_captions(captions, clip_model, clip_processor), 4, seed=1)
    assert distilled["prompt"] == [captions[i] for i in expected]
    card = (tmp_path / "k" / "README.md").read_text()
    assert "selection: kcenter" in card and f"clip_model: {tiny_clip_path}" in card
    by_kmeans = pipe.distill(source, 4, 1, selection="kmeans", seed=1, output_dir=tmp_path / "m", **FAST)
    nearest = kmeans_nearest(embed_captions(captions, clip_model, clip_processor), 4, seed=1)
    assert by_kmeans["prompt"] == [captions[i] for i in nearest] and "selection: kmeans" in (
        tmp_path / "m" / "README.md"
    ).read_text()

    def last_ones(pool, num, seed):
        return list(range(len(pool) - num, len(pool)))

    picked = pipe.distill(source, 3, captions_per_image=1, selection=last_ones, output_dir=tmp_path / "c", **FAST)
    assert picked["prompt"] == captions[-3:]


def test_real_tiny_captioner_as_argument_and_as_component(tiny_sd_path, source, tmp_path):
    captioner = Captioner.from_pretrained(save_tiny_captioner(tmp_path / "captioner"))
    pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    given = pipe.distill(source, 6, captions_per_image=3, captioner=captioner, output_dir=tmp_path / "a", **FAST)
    assert given.num_rows == 2
    assert all(len(cs) == 3 and all(c.strip() for c in cs) for cs in given["captions"])
    card = (tmp_path / "a" / "README.md").read_text()
    assert "image-to-text" in card  # the captioner's describe() is recorded

    with_component = EDGEPipeline.from_pretrained(
        tiny_sd_path, captioner=captioner.model, captioner_processor=captioner.processor
    )
    with_component.set_progress_bar_config(disable=True)
    wrapped = with_component.distill(source, 6, captions_per_image=3, output_dir=tmp_path / "b", **FAST)
    assert wrapped["captions"] == given["captions"]  # the component is wrapped as Captioner(model, processor)


def test_images_are_png_bytes_in_parquet(pipe, source, tmp_path):
    import pyarrow.parquet as pq

    pipe.distill(source, 2, captions_per_image=1, batch_size=2, output_dir=tmp_path, **FAST)
    table = pq.read_table(next((tmp_path / "data").glob("*.parquet")))
    image = table.column("image")[0].as_py()
    assert image["bytes"][:4] == b"\x89PNG" and image["path"] is None
    assert PIL.Image.open(io.BytesIO(image["bytes"])).size == (32, 32)


def test_streamed_source_gives_the_same_set(pipe, source, tmp_path):
    kwargs = dict(captions_per_image=1, seed=2, batch_size=2, **FAST)
    in_memory = pipe.distill(source, 2, output_dir=tmp_path / "a", **kwargs)
    streamed = pipe.distill(source.to_iterable_dataset(), 2, output_dir=tmp_path / "b", **kwargs)
    assert streamed["prompt"] == in_memory["prompt"] and streamed["source_image_id"] == in_memory["source_image_id"]
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


def test_odd_budget_card_counts_the_set_and_carries_license_and_size(pipe, source, tmp_path):
    from huggingface_hub import DatasetCard

    distilled = pipe.distill(source, 9, captions_per_image=2, captioner=brightness_captioner,
                             output_dir=tmp_path / "odd", license="cc-by-4.0", **FAST)  # fmt: skip
    assert distilled.num_rows == 5 and sum(map(len, distilled["captions"])) == 10
    text = (tmp_path / "odd" / "README.md").read_text()
    assert "5 generated images with\n2 caption(s) each, 10 image-caption pairs in all" in text
    data = DatasetCard.load(tmp_path / "odd" / "README.md").data.to_dict()  # huggingface_hub's own parser
    assert data["distillation"]["num_pairs"] == 10 and data["distillation"]["num_pairs_requested"] == 9
    assert data["distillation"]["num_images"] == 5
    assert data["license"] == "cc-by-4.0" and data["size_categories"] == ["n<1K"]
    assert data["dataset_info"]["splits"] == [{"name": "train", "num_bytes": data["dataset_info"]["dataset_size"],
                                               "num_examples": 5}]  # fmt: skip


def test_distill_bar_follows_set_progress_bar_config(tiny_sd_path, source, tmp_path, capfd):
    pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
    capfd.readouterr()
    pipe.distill(source, 2, captions_per_image=1, output_dir=tmp_path / "shown", num_inference_steps=2)
    assert "distill: 100%" in capfd.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe.distill(source, 2, captions_per_image=1, output_dir=tmp_path / "hidden", num_inference_steps=2)
    assert "distill" not in capfd.readouterr().err
    assert pipe._progress_bar_config == {"disable": True}  # the user's setting is restored
