"""Test-wide settings: everything runs offline, tiny models run on one thread, tiny model folders are shared."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread: on a shared 2-core machine two threads spin against each other
    (measured about 10x slower for a tiny UNet under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny random Stable Diffusion folder (epsilon prediction, 32 px images, 16x16x4 latents). Read-only."""
    from diffusers_edge.testing import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    """A tiny random CLIPModel + CLIPProcessor folder (32 px images, projection 16). Read-only."""
    from diffusers_edge.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    """A tiny random BertModel + WordPiece tokenizer folder (hidden size 32). Read-only."""
    from diffusers_edge.testing import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    """An `EDGEPipeline` on the tiny Stable Diffusion, progress bars off (one per test module: tests load LoRAs)."""
    from diffusers_edge.pipeline_edge import EDGEPipeline

    pipe = EDGEPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny random Stable Diffusion with 8x8x4 latents (16 px images: fast training steps)."""
    from diffusers_edge.testing import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd"), sample_size=8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP folder for the EDGE losses."""
    from diffusers_edge.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))
