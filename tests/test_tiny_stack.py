"""The shipped shapes stack loads through the real `from_pretrained` calls and does its job on fresh shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_edge.shapes.dataset import example_rng
from diffusers_edge.shapes.judge import (
    AttributeJudge,
    images_to_tensor,
    judge_images,
    load_judge,
    score_prompt_following,
)
from diffusers_edge.shapes.objects import ShapeObject, caption_shapes, parse_caption, render_shapes, sample_scene
from diffusers_edge.shapes.stack import STACK_COMPONENTS, shapes_stack_path

# one object of each shape, colours and positions all different: a retrieval or judge mix-up shows
OBJECTS = [
    ShapeObject("circle", "red", "large", "top left"),
    ShapeObject("square", "blue", "large", "bottom right"),
    ShapeObject("triangle", "yellow", "large", "center"),
    ShapeObject("cross", "green", "small", "top"),
]
PROMPTS = [
    "a big red circle at the top left",
    "a large blue square in the bottom right corner",
    "a big yellow triangle in the middle",
    "a small green cross at the top",
]


def fresh_scenes(count: int) -> tuple[list[Image.Image], list[dict[str, str]]]:
    """Scenes drawn with an rng the dataset never uses (seed 12345), rendered with jitter."""
    images, truths = [], []
    for i in range(count):
        rng = example_rng(12345, "one_object", "test", i)
        (obj,), _ = sample_scene(1, rng)
        images.append(render_shapes([obj], rng=rng))
        truths.append({"shape": obj.shape, "color": obj.color, "size": obj.size, "position": obj.position})
    return images, truths


@pytest.fixture(autouse=True)
def one_thread():
    """The stack's models are tiny: one thread beats two, and by 5-15x when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def judge() -> AttributeJudge:
    return load_judge()


def test_every_component_is_installed_and_the_stack_is_small():
    for component in STACK_COMPONENTS:
        assert shapes_stack_path(component).is_dir()
    size = sum(f.stat().st_size for f in shapes_stack_path().rglob("*") if f.is_file())
    assert size < 30 * 2**20
    assert not list(shapes_stack_path().rglob("*.bin")) and not list(shapes_stack_path().rglob("*.pt"))


def test_unknown_component_is_refused():
    with pytest.raises(ValueError, match="Unknown shapes-stack component 'unet'"):
        shapes_stack_path("unet")


def test_judge_classifies_freshly_rendered_shapes(judge):
    images, truths = fresh_scenes(24)
    predictions = judge_images(images, judge)
    for i, truth in enumerate(truths):
        assert {k: predictions[k][i] for k in truth} == truth


def test_prompt_following_score_counts_each_attribute(judge):
    images = [render_shapes([obj]) for obj in OBJECTS]
    targets = [parse_caption(p) for p in PROMPTS]
    assert score_prompt_following(images, targets, judge) == {
        "shape": 100.0, "color": 100.0, "size": 100.0, "position": 100.0, "shape+color": 100.0, "all": 100.0
    }
    wrong = [dict(t) for t in targets]
    wrong[0]["color"] = "blue"  # one of four colours wrong: 75% colour, 75% shape+colour, shapes untouched
    scores = score_prompt_following(images, wrong, judge)
    assert scores["color"] == 75.0 and scores["shape+color"] == 75.0 and scores["shape"] == 100.0


def test_prompt_following_rejects_mismatched_targets(judge):
    image = render_shapes([OBJECTS[0]])
    with pytest.raises(ValueError, match="Got 1 images but 2 targets"):
        score_prompt_following([image], [parse_caption(PROMPTS[0])] * 2, judge)
    with pytest.raises(ValueError, match="Target 0 names"):
        score_prompt_following([image], [{"hue": "red"}], judge)


def test_images_to_tensor_accepts_pil_arrays_and_tensors():
    image = render_shapes([OBJECTS[0]])
    from_pil = images_to_tensor([image])
    from_uint8 = images_to_tensor(np.asarray(image)[None])
    from_float = images_to_tensor(np.asarray(image)[None].astype(np.float32) / 255)
    assert from_pil.shape == (1, 3, 32, 32)
    assert torch.equal(from_pil, from_uint8) and torch.allclose(from_pil, from_float)
    assert images_to_tensor(torch.rand(2, 3, 64, 64)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="Image 0 is a str"):
        images_to_tensor(["not an image"])


def test_judge_round_trips_through_save_pretrained(tmp_path):
    torch.manual_seed(0)
    judge = AttributeJudge({"shape": ["circle", "square"], "color": ["red", "blue", "green"]}).eval()
    pixels = torch.rand(3, 3, 32, 32)
    loaded = AttributeJudge.from_pretrained(judge.save_pretrained(tmp_path / "judge"))
    assert json.loads((tmp_path / "judge" / "config.json").read_text())["labels"]["color"] == ["red", "blue", "green"]
    for name, logits in judge(pixels).items():
        assert torch.equal(logits, loaded(pixels)[name])


def test_stable_diffusion_loads_and_follows_prompts(judge):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(shapes_stack_path("stable-diffusion"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32
    images = pipe(PROMPTS, num_inference_steps=4, guidance_scale=3.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (4, 32, 32, 3) and np.isfinite(images).all()
    images = pipe(PROMPTS, num_inference_steps=10, guidance_scale=3.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    scores = score_prompt_following(images, [parse_caption(p) for p in PROMPTS], judge)
    assert scores["shape+color"] >= 75.0


def test_clip_retrieves_the_matching_caption():
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(shapes_stack_path("clip")).eval()
    processor = CLIPProcessor.from_pretrained(shapes_stack_path("clip"))
    images = [render_shapes([obj]) for obj in OBJECTS]
    inputs = processor(text=PROMPTS, images=images, return_tensors="pt", padding="max_length")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert logits.argmax(-1).tolist() == [0, 1, 2, 3]
    assert logits.argmax(0).tolist() == [0, 1, 2, 3]


def test_text_encoder_is_a_bert_whose_cls_tells_scenes_apart():
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(shapes_stack_path("text-encoder")).eval()
    tokenizer = AutoTokenizer.from_pretrained(shapes_stack_path("text-encoder"))
    assert tokenizer.tokenize("a little purple plus sign") == ["a", "little", "purple", "plus", "sign"]
    same = caption_shapes([OBJECTS[0]], rng=np.random.default_rng(1), num_captions=2)
    other = caption_shapes([OBJECTS[1]], rng=np.random.default_rng(1), num_captions=1)
    with torch.no_grad():
        tokens = tokenizer(same + other, padding=True, return_tensors="pt")
        cls = torch.nn.functional.normalize(model(**tokens).last_hidden_state[:, 0], dim=-1)
    assert float(cls[0] @ cls[1]) > float(cls[0] @ cls[2])


def test_captioner_names_shape_and_colour():
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    folder = shapes_stack_path("captioner")
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    images, truths = fresh_scenes(6)
    with torch.no_grad():
        pixels = processor(images, return_tensors="pt").pixel_values
        ids = model.generate(pixel_values=pixels, do_sample=False, max_new_tokens=24)
    captions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    for caption, truth in zip(captions, truths):
        parsed = parse_caption(caption)
        assert (parsed["shape"], parsed["color"]) == (truth["shape"], truth["color"]), caption


def test_student_image_encoder_config_builds_a_timm_model():
    import timm

    spec = json.loads((shapes_stack_path("student-image-encoder") / "config.json").read_text())
    model = timm.create_model(spec["model_name"], pretrained=False, num_classes=0, **spec["kwargs"]).eval()
    with torch.no_grad():
        features = model(torch.rand(2, 3, spec["input_size"], spec["input_size"]))
    assert features.shape == (2, spec["num_features"])
