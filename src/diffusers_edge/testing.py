"""Tiny, randomly initialised stand-ins for the real models, built and saved offline.

Tests, benchmarks and docs examples call these to get a folder that the real loading code reads: a Stable
Diffusion folder (`StableDiffusionPipeline.save_pretrained` layout), a CLIP folder (`CLIPModel` + `CLIPProcessor`)
and a BERT folder (`BertModel` + tokenizer). Loading them back goes through the same `from_pretrained` calls that
load `stable-diffusion-v1-5/stable-diffusion-v1-5`, `openai/clip-vit-base-patch32` and `bert-base-uncased` from
the Hub, so the tests exercise the users' code path without the network.

The sizes follow diffusers' own test components (docs/method.md, "Library conventions we rely on"): a two-block
UNet with cross-attention, a two-block VAE (downsampling factor 2), and two-layer text towers.

Example:
    >>> import tempfile
    >>> from diffusers import StableDiffusionPipeline
    >>> folder = save_tiny_stable_diffusion(tempfile.mkdtemp())
    >>> pipe = StableDiffusionPipeline.from_pretrained(folder)
    >>> pipe.unet.config.cross_attention_dim
    32
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import CommitOperationDelete, HfApi, RepoCard
from huggingface_hub.hf_api import RepoUrl
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
)

from .shapes.tokenization import build_bert_tokenizer, build_clip_tokenizer

TINY_HIDDEN_SIZE = 32


def _default_words() -> list[str]:
    from .shapes.dataset import caption_vocabulary

    return caption_vocabulary()


def _tiny_tower(hidden_size: int = TINY_HIDDEN_SIZE) -> dict[str, int]:
    """The size of every tiny transformer tower here: two layers, two heads, an MLP twice the width."""
    return {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }


def _tiny_text_tower(tokenizer, hidden_size: int = TINY_HIDDEN_SIZE) -> dict[str, int]:
    """`_tiny_tower` with the vocabulary, positions and padding id tied to `tokenizer`."""
    return _tiny_tower(hidden_size) | {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _clip_text_config(tokenizer, hidden_size: int = TINY_HIDDEN_SIZE) -> CLIPTextConfig:
    return CLIPTextConfig(
        **_tiny_text_tower(tokenizer, hidden_size),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=hidden_size,
    )


def save_tiny_stable_diffusion(
    save_directory: str | Path,
    *,
    words: Iterable[str] | None = None,
    sample_size: int = 16,
    prediction_type: str = "epsilon",
    seed: int = 0,
) -> Path:
    """Saves a tiny random Stable Diffusion folder (UNet, VAE, CLIP text encoder, tokenizer, DDIM scheduler).

    Args:
        save_directory: where `StableDiffusionPipeline.save_pretrained` writes the folder.
        words: the tokenizer's whole-word vocabulary; defaults to every captioned-shapes caption word.
        sample_size: latent side; the VAE downsamples by 2, so images are `2 * sample_size` pixels.
        prediction_type: the scheduler's `prediction_type` (`"epsilon"` or `"v_prediction"`).
        seed: seeds the random weights.

    Returns:
        The folder, ready for `StableDiffusionPipeline.from_pretrained` (or `EDGEPipeline.from_pretrained`).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = build_clip_tokenizer(_default_words() if words is None else words)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_HIDDEN_SIZE,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(save_directory)
    return Path(save_directory)


def save_tiny_clip(
    save_directory: str | Path,
    *,
    words: Iterable[str] | None = None,
    image_size: int = 32,
    projection_dim: int = 16,
    seed: int = 0,
) -> Path:
    """Saves a tiny random `CLIPModel` with its `CLIPProcessor` (image processor + tokenizer) to a folder.

    It plays `openai/clip-vit-base-patch32`: `CLIPModel.from_pretrained(folder)` and
    `CLIPProcessor.from_pretrained(folder)` load it back.

    Args:
        save_directory: the folder to write.
        words: the tokenizer's whole-word vocabulary; defaults to every captioned-shapes caption word.
        image_size: the vision tower's input side (the processor resizes and crops to it).
        projection_dim: the shared embedding size of `get_image_features` / `get_text_features`.
        seed: seeds the random weights.
    """
    tokenizer = build_clip_tokenizer(_default_words() if words is None else words)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config={"image_size": image_size, "patch_size": 8, **_tiny_tower()},
        projection_dim=projection_dim,
    )
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(save_directory)
    model.save_pretrained(save_directory)
    return Path(save_directory)


def save_tiny_bert(
    save_directory: str | Path,
    *,
    words: Iterable[str] | None = None,
    hidden_size: int = TINY_HIDDEN_SIZE,
    seed: int = 0,
) -> Path:
    """Saves a tiny random `BertModel` and its WordPiece tokenizer to a folder (plays `bert-base-uncased`).

    Args:
        save_directory: the folder to write.
        words: the tokenizer's whole-word vocabulary; defaults to every captioned-shapes caption word.
        hidden_size: the CLS feature size (768 for `bert-base-uncased`).
        seed: seeds the random weights.
    """
    tokenizer = build_bert_tokenizer(_default_words() if words is None else words)
    torch.manual_seed(seed)
    config = BertConfig(**_tiny_text_tower(tokenizer, hidden_size))
    BertModel(config).save_pretrained(save_directory)
    tokenizer.save_pretrained(save_directory)
    return Path(save_directory)


# Caption synthesis stand-ins (captioning.py): an image captioner, a paraphrasing causal LM and a LLaVA-style VLM.

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
"""A minimal chat template (string or typed-part contents, `<image>` for images) for the tiny text generators."""


def _tiny_generator_tokenizer(words: Iterable[str] | None, image_token: str | None = None):
    """A WordPiece tokenizer with [CLS] as BOS and [SEP] as EOS, the chat template, and optionally an image token."""
    tokenizer = build_bert_tokenizer(_default_words() if words is None else words, model_max_length=256)
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    if image_token is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _tiny_llama_config(tokenizer, vocab_size: int | None = None):
    from transformers import LlamaConfig

    return LlamaConfig(
        **_tiny_tower(),
        vocab_size=vocab_size or len(tokenizer),
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_captioner(
    save_directory: str | Path, words: Iterable[str] | None = None, seed: int = 0, image_size: int = 32
) -> Path:
    """Saves a tiny random image captioner: a `VisionEncoderDecoderModel` (ViT encoder, BERT decoder with
    cross-attention), its `ViTImageProcessor` and a WordPiece tokenizer, in the layout of
    `nlpconnect/vit-gpt2-image-captioning` (no processor_config.json).

    `generate(pixel_values=...)` works: the decoder starts from [CLS], stops at [SEP] and pads with [PAD].
    `diffusers_edge.captioning.Captioner.from_pretrained(folder)` loads it in "image-to-text" mode.

    Args:
        save_directory: the folder to write.
        words: the tokenizer's whole-word vocabulary; defaults to every captioned-shapes caption word.
        seed: seeds the random weights.
        image_size: the ViT input side (the processor resizes to it).

    Example:
        >>> import tempfile
        >>> from transformers import VisionEncoderDecoderModel
        >>> folder = save_tiny_captioner(tempfile.mkdtemp(), words=["a", "red", "circle"])
        >>> VisionEncoderDecoderModel.from_pretrained(folder).config.decoder.add_cross_attention
        True
    """
    from transformers import (
        BertConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tokenizer = build_bert_tokenizer(_default_words() if words is None else words)
    encoder = ViTConfig(image_size=image_size, patch_size=8, **_tiny_tower())
    decoder = BertConfig(**_tiny_text_tower(tokenizer), is_decoder=True, add_cross_attention=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    special = {
        "decoder_start_token_id": tokenizer.cls_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    for name, value in special.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config)
    for name, value in special.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(save_directory)
    tokenizer.save_pretrained(save_directory)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(save_directory)
    return Path(save_directory)


def save_tiny_causal_lm(save_directory: str | Path, words: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Saves a tiny random `LlamaForCausalLM` with a WordPiece tokenizer and a chat template (plays the Llama
    paraphraser EDGE compared). `Captioner.from_pretrained(folder)` loads it in "paraphrase" mode.

    Args:
        save_directory: the folder to write.
        words: the tokenizer's whole-word vocabulary; defaults to every captioned-shapes caption word.
        seed: seeds the random weights.

    Example:
        >>> import tempfile
        >>> from transformers import AutoTokenizer
        >>> folder = save_tiny_causal_lm(tempfile.mkdtemp(), words=["a", "red", "circle"])
        >>> AutoTokenizer.from_pretrained(folder).eos_token
        '[SEP]'
    """
    from transformers import LlamaForCausalLM

    tokenizer = _tiny_generator_tokenizer(words)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_tiny_llama_config(tokenizer))
    model.save_pretrained(save_directory)
    tokenizer.save_pretrained(save_directory)
    return Path(save_directory)


def save_tiny_vlm(
    save_directory: str | Path, words: Iterable[str] | None = None, seed: int = 0, image_size: int = 32
) -> Path:
    """Saves a tiny random LLaVA (`LlavaForConditionalGeneration`: CLIP vision tower, projector, Llama) with a
    `LlavaProcessor` that has a chat template (plays `llava-hf/llava-1.5-7b-hf`). `AutoProcessor` and
    `AutoModelForImageTextToText` load it; `Captioner.from_pretrained(folder)` uses it in "vlm" mode.

    Args:
        save_directory: the folder to write.
        words: the tokenizer's whole-word vocabulary; defaults to every captioned-shapes caption word.
        seed: seeds the random weights.
        image_size: the vision tower's input side; patches are 8 pixels, so it sees (image_size / 8)**2 tokens.

    Example:
        >>> import tempfile
        >>> from transformers import AutoProcessor
        >>> folder = save_tiny_vlm(tempfile.mkdtemp(), words=["a", "red", "circle"])
        >>> AutoProcessor.from_pretrained(folder).image_token
        '<image>'
    """
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tiny_generator_tokenizer(words, image_token="<image>")
    vision = CLIPVisionConfig(image_size=image_size, patch_size=8, projection_dim=TINY_HIDDEN_SIZE, **_tiny_tower())
    config = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_llama_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    model.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)
    return Path(save_directory)


class LocalFolderHub(HfApi):
    """An `HfApi` whose repository is a local folder: huggingface_hub's own `upload_folder` (its allow, ignore and
    delete patterns, and the rule that a re-uploaded path is not deleted), with the network calls replaced.

    No Hub is reachable in the tests, so the folder holds exactly the files a push would leave in the repository;
    `datasets.load_dataset(folder)` or `DiffusionPipeline.from_pretrained(folder)` then reads it as a user would.
    Uploads take huggingface_hub's single-commit path (the xet upload pipeline talks to the Hub directly), so patch
    `huggingface_hub.hf_api.is_xet_available` to return False while using it.

    Example:
        >>> hub = LocalFolderHub(tempfile.mkdtemp())
        >>> hub.upload_folder(repo_id="me/set", folder_path="flickr-edge-500", repo_type="dataset")  # doctest: +SKIP
    """

    def __init__(self, repo_folder: str | Path) -> None:
        super().__init__(token="hf_local_folder")
        self.repo_folder = Path(repo_folder)

    def create_repo(self, repo_id: str, repo_type: str | None = None, **kwargs) -> RepoUrl:
        self.repo_folder.mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}")

    def list_repo_files(self, repo_id: str, **kwargs) -> list[str]:
        return [p.relative_to(self.repo_folder).as_posix() for p in self.repo_folder.rglob("*") if p.is_file()]

    def _validate_yaml(self, content: str, **kwargs) -> None:
        """The Hub validates a card's YAML on upload; here huggingface_hub's own parser must read it."""
        RepoCard(content)

    def create_commit(self, repo_id: str, operations: list, **kwargs) -> None:
        for operation in operations:
            target = self.repo_folder / operation.path_in_repo
            if isinstance(operation, CommitOperationDelete):
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(operation.path_or_fileobj, target)
