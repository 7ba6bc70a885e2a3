"""Caption synthesis: extra captions for generated images from any transformers captioning model.

EDGE (arXiv 2509.15472, section "caption synthesis") keeps the caption an image was generated from and adds captions
written by a multimodal LLM (the paper compares LLaVA, GPT-4o-mini and a Llama paraphraser, with the prompt
"Describe the image in one sentence."); two captions per image was its best setting. `Captioner` wraps three kinds
of transformers model behind one call:

- ``"image-to-text"``: plain captioners that need no prompt (VisionEncoderDecoderModel, BLIP, BLIP-2, GIT,
  Pix2Struct). The prompt is not used: these models caption the image unconditionally.
- ``"vlm"``: image-text-to-text chat models (LLaVA, SmolVLM/Idefics3, Qwen2-VL, any ``*ForImageTextToText``). The
  prompt goes through the processor's chat template when it has one, otherwise it is sent as written.
- ``"paraphrase"``: a text-only causal LM (``*ForCausalLM``) rewrites the prompt caption; the image is not used.

Determinism: sampling is done by `SeededRowSampler`, a logits processor that draws each row's token by inverse-CDF
sampling from the temperature/top-k/top-p distribution with one uniform number per step from the row's own
`torch.Generator`. The row seed is derived from the item's seed, the caption index and the attempt number only, so a
given item with a given seed gets the same captions whatever else is in the batch (up to floating-point differences
in the model's batched arithmetic, which flip a draw only when a uniform number falls within rounding error of a
cumulative-probability boundary).

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from diffusers_edge.testing import save_tiny_captioner
    >>> captioner = Captioner.from_pretrained(save_tiny_captioner(tempfile.mkdtemp()))
    >>> captions = captioner([Image.new("RGB", (32, 32), "red")], ["a red square"], num_captions=2, seeds=[0])
    >>> [len(c) for c in captions]
    [2]
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .serialization import jsonable

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Describe the image in one sentence."
"""The instruction EDGE gave its multimodal LLMs (arXiv 2509.15472, caption synthesis)."""

DEFAULT_PARAPHRASE_PROMPT = "Rewrite this image caption in other words, in one sentence: {caption}"
"""Used in paraphrase mode when the prompt is left at `DEFAULT_PROMPT`; ``{caption}`` is the prompt caption."""

MODES = ("image-to-text", "vlm", "paraphrase")

IMAGE_TO_TEXT_MODEL_TYPES = frozenset({"vision-encoder-decoder", "blip", "blip-2", "git", "pix2struct"})
"""`config.model_type` of captioners that caption an image without a prompt."""

# Generation settings that the Captioner owns: sampling is done by SeededRowSampler, one row per caption.
_MANAGED_GENERATE_KWARGS = frozenset({"num_beams", "num_return_sequences", "generation_config"})
_SEED_STREAM = 0xCA9  # separates caption-sampling seeds from other uses of the same item seed
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def detect_mode(model: PreTrainedModel) -> str:
    """Returns the captioning mode a loaded model supports: "image-to-text", "vlm" or "paraphrase".

    Args:
        model: a transformers model.

    Raises:
        ValueError: the model is none of the supported kinds.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, bos_token_id=0, eos_token_id=0)
        >>> detect_mode(GPT2LMHeadModel(config))
        'paraphrase'
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    name = type(model).__name__
    if getattr(model.config, "model_type", None) in IMAGE_TO_TEXT_MODEL_TYPES:
        return "image-to-text"
    if name in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values() or name.endswith("ForImageTextToText"):
        return "vlm"
    if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() or name.endswith(("ForCausalLM", "LMHeadModel")):
        return "paraphrase"
    raise ValueError(
        f"Cannot tell how to caption with a {name} (model_type {model.config.model_type!r}): expected an "
        "image-to-text captioner (VisionEncoderDecoder, BLIP, BLIP-2, GIT), an image-text-to-text VLM (LLaVA, "
        "SmolVLM, Qwen2-VL) or a causal LM for paraphrasing; pass mode= explicitly if it is one of these."
    )


def _mode_from_config(config) -> str:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    if config.model_type in IMAGE_TO_TEXT_MODEL_TYPES:
        return "image-to-text"
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "vlm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "paraphrase"
    raise ValueError(
        f"No captioning mode for model_type {config.model_type!r}: expected an image-to-text captioner, an "
        "image-text-to-text VLM or a causal LM; pass mode= explicitly."
    )


def derive_seed(seed: int, caption_index: int, attempt: int) -> int:
    """The sampling seed of one caption: a hash of (item seed, caption index, attempt), independent of the batch.

    Example:
        >>> derive_seed(0, 0, 0) == derive_seed(0, 0, 0) != derive_seed(0, 1, 0)
        True
    """
    if seed < 0:
        raise ValueError(f"Caption seeds must be non-negative integers, got {seed}.")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(_SEED_STREAM, caption_index, attempt))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def first_sentence(text: str) -> str:
    """Collapses whitespace, strips surrounding quotes and keeps the first sentence.

    Example:
        >>> first_sentence('  "A red circle.  It sits\\n on black."')
        'A red circle.'
    """
    text = " ".join(text.split()).strip().strip("\"'").strip()
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip()


class SeededRowSampler(LogitsProcessor):
    """Samples each row's next token with its own `torch.Generator`, so a row's draws do not depend on its batch.

    Put last in the logits-processor list of a greedy `generate` call: it returns scores that are `-inf` everywhere
    but at the sampled token, so the greedy argmax takes the sampled token. Sampling is from
    softmax(top-p(top-k(logits / temperature))) by inverse CDF with one uniform number per row and step.

    Args:
        seeds: one seed per row of the batch that `generate` runs (after any expansion).
        temperature: softmax temperature (> 0).
        top_k: keep the k most likely tokens (None: all).
        top_p: nucleus threshold in (0, 1] (1: no filtering).

    Example:
        >>> sampler = SeededRowSampler([0, 1], temperature=1.0)
        >>> scores = sampler(None, torch.zeros(2, 5))
        >>> (scores == 0).sum(dim=-1).tolist()
        [1, 1]
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_k is not None:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"SeededRowSampler has {len(self.generators)} seeds but got {scores.shape[0]} rows.")
        warped = scores.float()
        for warper in self.warpers:
            warped = warper(input_ids, warped)
        cdf = torch.softmax(warped, dim=-1).double().cumsum(dim=-1)
        uniform = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        tokens = torch.searchsorted(cdf, target, right=True).clamp(max=scores.shape[-1] - 1)
        picked = torch.full_like(scores, float("-inf"))
        return picked.scatter_(1, tokens, 0.0)


class Captioner:
    """Writes extra captions for images with a transformers captioning model, a VLM, or a paraphrasing causal LM.

    Args:
        model: a loaded transformers model (see `detect_mode` for the supported kinds).
        processor: its processor: a `ProcessorMixin` with `tokenizer` (and `image_processor` for the image modes),
            or a tokenizer alone in paraphrase mode. For vlm/paraphrase the tokenizer is switched to left padding.
        mode: "image-to-text", "vlm" or "paraphrase"; None detects it from the model.
        prompt: the instruction for vlm mode (EDGE's default); ``{caption}`` in it is replaced by the item's prompt
            caption. In paraphrase mode it must contain ``{caption}`` (left at the default, the paraphrase
            instruction `DEFAULT_PARAPHRASE_PROMPT` is used). Image-to-text models caption without a prompt.
        max_new_tokens: length limit of one caption in tokens.
        do_sample: sample (True) or decode greedily on the first attempt (False); retries always sample.
        temperature: sampling temperature.
        top_p: nucleus sampling threshold (1.0 disables it).
        top_k: top-k filter (None disables it).
        max_retries: how many times an empty (or duplicate) caption is re-drawn with a new derived seed.
        batch_size: most captions generated in one `generate` call (None: all rows of a call at once).
        postprocess: applied to each cleaned caption (e.g. `str.lower`); the default keeps the model's text.
        **generate_kwargs: other `generate` settings (e.g. `repetition_penalty`, `no_repeat_ngram_size`).

    Example:
        >>> import tempfile
        >>> from diffusers_edge.testing import save_tiny_causal_lm
        >>> captioner = Captioner.from_pretrained(save_tiny_causal_lm(tempfile.mkdtemp()))
        >>> captioner.mode
        'paraphrase'
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any,
        mode: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 30,
        *,
        do_sample: bool = True,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int | None = None,
        max_retries: int = 3,
        batch_size: int | None = None,
        postprocess: Callable[[str], str] | None = None,
        **generate_kwargs: Any,
    ):
        mode = detect_mode(model) if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        managed = sorted(_MANAGED_GENERATE_KWARGS & generate_kwargs.keys())
        if managed:
            raise ValueError(
                f"{managed} are set by the Captioner: one greedy or seeded-sampling row per caption (see its "
                "do_sample, temperature, top_p and top_k arguments)."
            )
        if mode == "paraphrase":
            prompt = DEFAULT_PARAPHRASE_PROMPT if prompt == DEFAULT_PROMPT else prompt
            if "{caption}" not in prompt:
                raise ValueError(f"A paraphrase prompt must contain '{{caption}}', got {prompt!r}.")
        if temperature <= 0 or not 0 < top_p <= 1 or max_new_tokens < 1 or max_retries < 0:
            raise ValueError(
                f"Need temperature > 0, 0 < top_p <= 1, max_new_tokens >= 1 and max_retries >= 0; got {temperature}, "
                f"{top_p}, {max_new_tokens}, {max_retries}."
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
        self.model = model.eval()
        self.processor = processor
        self.mode = mode
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.postprocess = postprocess
        self.generate_kwargs = generate_kwargs
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if mode != "image-to-text":
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        mode: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> Captioner:
        """Loads a captioning model and its processor from the Hub or a folder (offline when the files are local).

        Image models load with `AutoModelForImageTextToText` and `AutoProcessor` (a VisionEncoderDecoder folder
        with `AutoImageProcessor` + `AutoTokenizer`); causal LMs with `AutoModelForCausalLM` and `AutoTokenizer`.

        Args:
            name_or_path: a Hub id (e.g. "Salesforce/blip-image-captioning-base") or a saved folder.
            mode: as in `Captioner`; None detects it from the config.
            prompt: as in `Captioner`.
            device: where to put the model (default: where it loads, the CPU).
            dtype: the weights' dtype (e.g. `torch.float16` on a GPU); default: the checkpoint's.
            **kwargs: the other `Captioner` arguments.

        Example:
            >>> import tempfile
            >>> from diffusers_edge.testing import save_tiny_captioner
            >>> Captioner.from_pretrained(save_tiny_captioner(tempfile.mkdtemp())).mode
            'image-to-text'
        """
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
            VisionTextDualEncoderProcessor,
        )

        config = AutoConfig.from_pretrained(name_or_path)
        mode = _mode_from_config(config) if mode is None else mode
        load_kwargs = {} if dtype is None else {"dtype": dtype}
        if mode == "paraphrase":
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **load_kwargs)
            processor = AutoTokenizer.from_pretrained(name_or_path)
        else:
            model = AutoModelForImageTextToText.from_pretrained(name_or_path, **load_kwargs)
            if config.model_type == "vision-encoder-decoder":  # such folders hold no processor_config.json
                processor = VisionTextDualEncoderProcessor(
                    image_processor=AutoImageProcessor.from_pretrained(name_or_path),
                    tokenizer=AutoTokenizer.from_pretrained(name_or_path),
                )
            else:
                processor = AutoProcessor.from_pretrained(name_or_path)
        if device is not None:
            model = model.to(device)
        return cls(model, processor, mode=mode, prompt=prompt, **kwargs)

    def describe(self) -> dict[str, Any]:
        """The captioner's settings, JSON-serialisable, for the dataset card.

        Example:
            >>> import tempfile
            >>> from diffusers_edge.testing import save_tiny_captioner
            >>> Captioner.from_pretrained(save_tiny_captioner(tempfile.mkdtemp())).describe()["mode"]
            'image-to-text'
        """
        return {
            "model": str(self.model.name_or_path),
            "model_class": type(self.model).__name__,
            "mode": self.mode,
            "prompt": None if self.mode == "image-to-text" else self.prompt,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_retries": self.max_retries,
            "generate_kwargs": {k: jsonable(v) for k, v in self.generate_kwargs.items()},
            "seeding": "per caption: SeedSequence(item seed, caption index, attempt) -> torch.Generator",
        }

    def __call__(
        self, images: Sequence[Image.Image], prompts: Sequence[str], num_captions: int, seeds: Sequence[int]
    ) -> list[list[str]]:
        """Writes `num_captions` non-empty captions for each image.

        Captions of one image are re-drawn (up to `max_retries` times, each with a new derived seed) when they come
        out empty or repeat the prompt caption or another caption of the same image; a caption still empty after
        that raises, a caption still repeated is kept with a warning.

        Args:
            images: the generated images (unused in paraphrase mode).
            prompts: the caption each image was generated from, one per image.
            num_captions: captions to write per image (0 returns empty lists).
            seeds: one non-negative seed per image; the same image, prompt and seed give the same captions.

        Returns:
            One list of `num_captions` strings per image, in input order.

        Raises:
            ValueError: mismatched lengths, a negative count or seed, or a caption still empty after the retries
                (the message names the item index and its prompt).

        Example:
            >>> import tempfile
            >>> from PIL import Image
            >>> from diffusers_edge.testing import save_tiny_captioner
            >>> captioner = Captioner.from_pretrained(save_tiny_captioner(tempfile.mkdtemp()))
            >>> images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
            >>> out = captioner(images, ["a red square", "a blue square"], num_captions=1, seeds=[3, 4])
            >>> len(out), len(out[0])
            (2, 1)
        """
        if not len(images) == len(prompts) == len(seeds):
            raise ValueError(
                f"Got {len(images)} images, {len(prompts)} prompts and {len(seeds)} seeds; need one of each per item."
            )
        if num_captions < 0:
            raise ValueError(f"num_captions must be >= 0, got {num_captions}.")
        captions: list[list[str | None]] = [[None] * num_captions for _ in images]
        pending = [(i, k) for i in range(len(images)) for k in range(num_captions)]
        for attempt in range(self.max_retries + 1):
            if not pending:
                break
            seeds_used = [derive_seed(seeds[i], k, attempt) for i, k in pending]
            texts = self._generate(
                [images[i] for i, _ in pending], [prompts[i] for i, _ in pending], seeds_used, attempt
            )
            retry = []
            for (i, k), text in zip(pending, texts):
                if not text or (attempt < self.max_retries and _repeats(text, prompts[i], captions[i])):
                    retry.append((i, k))
                else:
                    captions[i][k] = text
            if retry:
                logger.info("Caption attempt %d: %d caption(s) empty or repeated, re-drawing.", attempt, len(retry))
            pending = retry
        if pending:
            i, k = pending[0]
            raise ValueError(
                f"The captioner returned empty text for item {i} (caption {k}, seed {seeds[i]}, prompt "
                f"{prompts[i]!r}) after {self.max_retries + 1} attempts; check the model, prompt and max_new_tokens."
            )
        for i, item in enumerate(captions):
            if len({_normalize(c) for c in item} | {_normalize(prompts[i])}) < len(item) + 1:
                logger.warning("Item %d (prompt %r) keeps repeated captions after retries: %s", i, prompts[i], item)
        return captions

    def _generate(self, images: list[Image.Image], prompts: list[str], seeds: list[int], attempt: int) -> list[str]:
        step = self.batch_size or len(prompts)
        texts = []
        for start in range(0, len(prompts), step):
            rows = slice(start, start + step)
            texts += self._generate_rows(images[rows], prompts[rows], seeds[rows], attempt)
        return texts

    @torch.inference_mode()
    def _generate_rows(self, images: list, prompts: list[str], seeds: list[int], attempt: int) -> list[str]:
        inputs = self._inputs(images, prompts)
        sample = self.do_sample or attempt > 0
        processors = LogitsProcessorList()
        if sample:
            processors.append(SeededRowSampler(seeds, self.temperature, self.top_k, self.top_p))
        config, model_kwargs = self._generation_config()
        output = self.model.generate(**inputs, **model_kwargs, generation_config=config, logits_processor=processors)
        if self.mode != "image-to-text" and not self.model.config.is_encoder_decoder:
            output = output[:, inputs["input_ids"].shape[1] :]  # drop the echoed prompt
        texts = [first_sentence(t) for t in self.tokenizer.batch_decode(output, skip_special_tokens=True)]
        return [self.postprocess(t).strip() if self.postprocess else t for t in texts]

    def _generation_config(self) -> tuple[GenerationConfig, dict[str, Any]]:
        """The model's generation config made greedy (sampling is SeededRowSampler's), plus the kwargs it does not
        know, which go to the model's forward."""
        config = copy.deepcopy(self.model.generation_config)
        model_kwargs = config.update(
            do_sample=False,
            num_beams=1,
            num_return_sequences=1,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=self.max_new_tokens,
            **self.generate_kwargs,
        )
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config, model_kwargs

    def _inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.prompt.replace("{caption}", p) for p in prompts]
        if self.mode != "paraphrase":
            rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if self.mode == "image-to-text":
            inputs = self.processor(images=rgb, return_tensors="pt")
        elif self.mode == "paraphrase":
            if getattr(self.tokenizer, "chat_template", None):
                chats = [[{"role": "user", "content": t}] for t in texts]
                inputs = self.tokenizer.apply_chat_template(
                    chats, add_generation_prompt=True, tokenize=True, return_dict=True, padding=True,
                    return_tensors="pt",
                )  # fmt: skip
            else:
                inputs = self.tokenizer(texts, padding=True, return_tensors="pt")
        elif getattr(self.processor, "chat_template", None):
            chats = [
                [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": t}]}]
                for im, t in zip(rgb, texts)
            ]
            inputs = self.processor.apply_chat_template(
                chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs={"padding": True},
            )  # fmt: skip
        else:
            inputs = self.processor(text=texts, images=[[im] for im in rgb], padding=True, return_tensors="pt")
        accepted = inspect.signature(self.model.forward).parameters
        if "token_type_ids" not in accepted:  # BERT-style tokenizers emit them; decoder-only models reject them
            inputs.pop("token_type_ids", None)
        return {k: _to_model(v, self.model) for k, v in inputs.items()}


def _to_model(value: Any, model: PreTrainedModel) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(device=model.device, dtype=model.dtype)
    return value.to(model.device)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _repeats(text: str, prompt: str, accepted: list[str | None]) -> bool:
    """Whether `text` equals (case and punctuation aside) the prompt caption or an accepted caption of its item."""
    seen = {_normalize(prompt)} | {_normalize(c) for c in accepted if c is not None}
    return _normalize(text) in seen

