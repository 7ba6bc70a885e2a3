"""Caption synthesis on tiny offline captioners: counts, seeding, batch independence, retries, the three modes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from diffusers_edge.captioning import (
    DEFAULT_PARAPHRASE_PROMPT,
    DEFAULT_PROMPT,
    Captioner,
    SeededRowSampler,
    derive_seed,
    detect_mode,
    first_sentence,
)
from diffusers_edge.testing import save_tiny_captioner, save_tiny_causal_lm, save_tiny_vlm

WORDS = ["a", "red", "blue", "green", "circle", "square", "star", "big", "small", "at", "the", "top", "on", "black"]
PROMPTS = ["a red circle", "a big blue square at the top", "a small green star"]
FAST = {"max_new_tokens": 8}


def _images(n=3, size=32):
    arrays = [np.random.RandomState(i).randint(0, 256, (size, size, 3), dtype=np.uint8) for i in range(n)]
    return [Image.fromarray(a) for a in arrays]


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    return save_tiny_captioner(tmp_path_factory.mktemp("captioner"), words=WORDS)


@pytest.fixture(scope="module")
def captioner(captioner_dir):
    return Captioner.from_pretrained(captioner_dir, **FAST)


def _assert_well_formed(out, n_items, n_captions, prompts):
    assert len(out) == n_items
    for item, prompt in zip(out, prompts):
        assert len(item) == n_captions
        assert all(isinstance(c, str) and c.strip() == c and c for c in item)
        normalized = {" ".join(c.lower().split()) for c in item}
        assert len(normalized) == n_captions and prompt not in normalized  # distinct, and not the prompt


def test_tiny_captioner_round_trips_and_loads_like_a_hub_captioner(captioner_dir, captioner, tmp_path):
    assert not (captioner_dir / "processor_config.json").exists()  # the nlpconnect/vit-gpt2 layout
    assert type(captioner.model).__name__ == "VisionEncoderDecoderModel"
    assert captioner.mode == "image-to-text"
    tokenizer = captioner.processor.tokenizer
    assert captioner.model.generation_config.decoder_start_token_id == tokenizer.cls_token_id
    assert captioner.model.generation_config.eos_token_id == tokenizer.sep_token_id
    captioner.model.save_pretrained(tmp_path)
    captioner.processor.save_pretrained(tmp_path)
    reloaded = Captioner.from_pretrained(tmp_path, **FAST)
    for name, tensor in captioner.model.state_dict().items():
        assert torch.equal(tensor, reloaded.model.state_dict()[name]), name
    images = _images(2)
    assert reloaded(images, PROMPTS[:2], 2, [5, 6]) == captioner(images, PROMPTS[:2], 2, [5, 6])


def test_counts_seeds_and_distinct_captions(captioner):
    images = _images()
    out = captioner(images, PROMPTS, num_captions=3, seeds=[10, 11, 12])
    _assert_well_formed(out, 3, 3, PROMPTS)
    assert captioner(images, PROMPTS, num_captions=3, seeds=[10, 11, 12]) == out
    other = captioner(images, PROMPTS, num_captions=3, seeds=[20, 21, 22])
    assert all(a != b for a, b in zip(out, other))
    assert captioner(images, PROMPTS, num_captions=0, seeds=[1, 2, 3]) == [[], [], []]


def test_same_item_same_captions_whatever_the_batch(captioner):
    images = _images()
    full = captioner(images, PROMPTS, 2, [7, 8, 9])
    assert captioner(images[::-1], PROMPTS[::-1], 2, [9, 8, 7]) == full[::-1]
    assert captioner(images[1:2], PROMPTS[1:2], 2, [8]) == full[1:2]
    captioner.batch_size = 1
    try:
        assert captioner(images, PROMPTS, 2, [7, 8, 9]) == full
    finally:
        captioner.batch_size = None


def test_greedy_first_caption_then_sampled_distinct_ones(captioner_dir):
    captioner = Captioner.from_pretrained(captioner_dir, do_sample=False, **FAST)
    images = _images(2)
    out_a = captioner(images, PROMPTS[:2], 2, [1, 2])
    out_b = captioner(images, PROMPTS[:2], 2, [3, 4])
    pixel_values = captioner.processor(images=images, return_tensors="pt").pixel_values
    greedy = captioner.model.generate(pixel_values=pixel_values, max_new_tokens=8, do_sample=False)
    decoded = captioner.processor.tokenizer.batch_decode(greedy, skip_special_tokens=True)
    expected = [first_sentence(t) for t in decoded]
    assert [o[0] for o in out_a] == [o[0] for o in out_b] == expected  # greedy: seed-independent
    assert all(o[1] != o[0] for o in out_a)  # the repeat was re-drawn by sampling
    assert [o[1] for o in out_a] != [o[1] for o in out_b]


def test_model_that_only_writes_eos_raises_naming_the_item(captioner_dir):
    tokenizer = Captioner.from_pretrained(captioner_dir).processor.tokenizer
    words = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    mute = Captioner.from_pretrained(captioner_dir, suppress_tokens=words, max_retries=1, **FAST)
    with pytest.raises(ValueError, match=r"empty text for item 0 .*'a red circle'.*after 2 attempts"):
        mute(_images(2), PROMPTS[:2], 1, [0, 1])


def _blank_rows(captioner, monkeypatch, blank, calls):
    """Makes `generate` return [CLS] [SEP] (empty text) for the rows that `blank(call, row, pixel_values)` picks."""
    generate = captioner.model.generate
    start, eos = captioner.processor.tokenizer.cls_token_id, captioner.processor.tokenizer.sep_token_id

    def patched(**kwargs):
        output = generate(**kwargs).clone()
        calls.append(output.shape[0])
        for row in range(output.shape[0]):
            if blank(len(calls), row, kwargs["pixel_values"][row]):
                output[row] = captioner.processor.tokenizer.pad_token_id
                output[row, :2] = torch.tensor([start, eos])
        return output

    monkeypatch.setattr(captioner.model, "generate", patched)


def test_empty_caption_is_redrawn_with_a_new_seed(captioner_dir, monkeypatch):
    captioner = Captioner.from_pretrained(captioner_dir, **FAST)
    images = _images()
    clean = captioner(images, PROMPTS, 1, [4, 5, 6])
    calls = []
    _blank_rows(captioner, monkeypatch, lambda call, row, _: call == 1 and row == 1, calls)
    out = captioner(images, PROMPTS, 1, [4, 5, 6])
    assert calls == [3, 1]  # one retry, of the one empty caption
    assert out[0] == clean[0] and out[2] == clean[2]
    assert out[1][0] and out[1] != clean[1]  # re-drawn from derive_seed(5, 0, attempt=1)


def test_always_empty_item_raises_with_its_index_and_prompt(captioner_dir, monkeypatch):
    captioner = Captioner.from_pretrained(captioner_dir, max_retries=2, **FAST)
    images = _images()
    target = captioner.processor(images=images[2:], return_tensors="pt").pixel_values[0]
    calls = []
    _blank_rows(captioner, monkeypatch, lambda call, row, pixels: torch.equal(pixels, target), calls)
    with pytest.raises(ValueError, match=r"item 2 \(caption 0, seed 6, prompt 'a small green star'\)"):
        captioner(images, PROMPTS, 1, [4, 5, 6])
    assert calls == [3, 1, 1]


def test_mode_detection(captioner, tmp_path):
    assert detect_mode(captioner.model) == "image-to-text"
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, bos_token_id=0, eos_token_id=0))
    assert detect_mode(gpt2) == "paraphrase"
    bert = BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="Cannot tell how to caption with a BertModel"):
        detect_mode(bert)
    with pytest.raises(ValueError, match="mode must be one of"):
        Captioner(captioner.model, captioner.processor, mode="captioning")


def test_bad_arguments_are_refused(captioner):
    with pytest.raises(ValueError, match="3 images, 2 prompts and 3 seeds; need one of each"):
        captioner(_images(), PROMPTS[:2], 1, [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        captioner(_images(1), PROMPTS[:1], 1, [-1])
    with pytest.raises(ValueError, match="num_captions must be >= 0"):
        captioner(_images(1), PROMPTS[:1], -1, [1])
    with pytest.raises(ValueError, match=r"\['num_beams', 'num_return_sequences'\] are set by the Captioner"):
        Captioner(captioner.model, captioner.processor, num_beams=2, num_return_sequences=2)


def test_describe_is_json_for_the_card(captioner_dir):
    described = Captioner.from_pretrained(captioner_dir, repetition_penalty=1.2, **FAST).describe()
    assert json.loads(json.dumps(described)) == described
    assert described["mode"] == "image-to-text" and described["prompt"] is None
    assert described["model"] == str(captioner_dir)
    assert described["generate_kwargs"] == {"repetition_penalty": 1.2}
    assert (described["max_new_tokens"], described["temperature"], described["top_p"]) == (8, 0.7, 0.9)


def test_paraphrase_mode_with_a_tiny_causal_lm(tmp_path):
    captioner = Captioner.from_pretrained(save_tiny_causal_lm(tmp_path, words=WORDS), **FAST)
    assert captioner.mode == "paraphrase" and captioner.prompt == DEFAULT_PARAPHRASE_PROMPT
    out = captioner([None] * 3, PROMPTS, 2, [1, 2, 3])  # images are not used
    _assert_well_formed(out, 3, 2, PROMPTS)
    assert captioner([None] * 3, PROMPTS, 2, [1, 2, 3]) == out
    # left padding: a short prompt gets the same captions beside a long one as alone
    assert captioner([None], PROMPTS[:1], 2, [1]) == out[:1]
    # the caption reaches the model: same seed, other caption, other text
    assert captioner([None], ["a black square on the top"], 2, [1]) != out[:1]
    with pytest.raises(ValueError, match="must contain '\\{caption\\}'"):
        Captioner(captioner.model, captioner.processor, prompt="Say something.")


def test_vlm_mode_with_a_tiny_llava(tmp_path):
    captioner = Captioner.from_pretrained(save_tiny_vlm(tmp_path, words=WORDS), **FAST)
    assert captioner.mode == "vlm" and captioner.prompt == DEFAULT_PROMPT
    assert type(captioner.model).__name__ == "LlavaForConditionalGeneration"
    images = _images()
    out = captioner(images, PROMPTS, 2, [1, 2, 3])
    _assert_well_formed(out, 3, 2, PROMPTS)
    assert captioner(images[::-1], PROMPTS[::-1], 2, [3, 2, 1]) == out[::-1]
    # the image reaches the model: same seed and prompt, other image, other text
    assert captioner(images[1:2], PROMPTS[:1], 2, [1]) != out[:1]


def test_seeded_row_sampler_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.2, 0.8, 0.0]]))
    picks = [SeededRowSampler([derive_seed(s, 0, 0)])(None, logits.clone()).argmax().item() for s in range(2000)]
    assert set(picks) == {0, 1}  # a zero-probability token is never drawn
    assert abs(picks.count(1) / 2000 - 0.8) < 0.03  # 3.3 standard errors
    top1 = [SeededRowSampler([s], top_k=1)(None, logits.clone()).argmax().item() for s in range(50)]
    assert set(top1) == {1}
    rows = SeededRowSampler([3, 4])(None, torch.zeros(2, 1000)).argmax(-1)
    alone = SeededRowSampler([4])(None, torch.zeros(1, 1000)).argmax(-1)
    assert rows[1] == alone[0]


def test_first_sentence_and_seed_derivation():
    assert first_sentence('  "A red circle.  It sits\n on black."') == "A red circle."
    assert first_sentence("a big   blue square") == "a big blue square"
    assert first_sentence("What is it? A star.") == "What is it?"
    # pinned: SeedSequence(5, spawn_key=(0xCA9, caption 0, attempt a)).generate_state(1, uint64) >> 1, so captions
    # written earlier stay reproducible; 63 bits fit torch.Generator.manual_seed
    assert (derive_seed(5, 0, 0), derive_seed(5, 0, 1)) == (6348537729965258788, 4273961353836906064)
    assert len({derive_seed(5, k, a) for k in range(3) for a in range(3)} | {derive_seed(6, 0, 0)}) == 10


def test_blip_processor_path(tmp_path):
    """BLIP (the documented default captioner family) loads through AutoProcessor and captions without a prompt."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from diffusers_edge.shapes.tokenization import build_bert_tokenizer

    tokenizer = build_bert_tokenizer(WORDS)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder starts from [DEC]
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {"vocab_size": len(tokenizer), "encoder_hidden_size": 32, "max_position_embeddings": 32, **tiny}
    text |= {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": 0, "sep_token_id": tokenizer.sep_token_id}
    config = BlipConfig(text_config=text, vision_config={"image_size": 32, "patch_size": 8, **tiny})
    BlipForConditionalGeneration(config).save_pretrained(tmp_path)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path)
    captioner = Captioner.from_pretrained(tmp_path, **FAST)
    assert (captioner.mode, type(captioner.processor).__name__) == ("image-to-text", "BlipProcessor")
    out = captioner(_images(2), PROMPTS[:2], 2, [1, 2])
    _assert_well_formed(out, 2, 2, PROMPTS[:2])
    assert captioner(_images(2)[1:], PROMPTS[1:2], 2, [2]) == out[1:]
