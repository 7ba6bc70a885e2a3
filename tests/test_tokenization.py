import pytest
from transformers import BertTokenizer, CLIPTokenizer

from diffusers_edge.shapes.tokenization import _bpe, build_bert_tokenizer, build_clip_tokenizer, clip_vocab_and_merges

# Words whose letter pairs overlap ("ll" in yellow/small, "ow" in yellow/below, "er" in upper/lower/corner), the
# case where a plain per-word merge chain is broken by another word's merges.
WORDS = "a yellow small below upper lower corner center centre circle red green blue ball tall all l ll".split()


def test_every_word_is_one_clip_token_under_the_real_tokenizer():
    tok = build_clip_tokenizer(WORDS)
    for word in WORDS:
        assert tok.tokenize(word) == [word + "</w>"]
    ids = tok("A yellow ball, below!")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.tokenize("A yellow ball, below!") == ["a</w>", "yellow</w>", "ball</w>", ",</w>", "below</w>", "!</w>"]
    assert len(ids) == 2 + 6  # punctuation stays its own token


def test_pure_python_bpe_agrees_with_transformers():
    vocab, merges = clip_vocab_and_merges(WORDS)
    ranks = {pair: i for i, pair in enumerate(merges)}
    tok = build_clip_tokenizer(WORDS)
    for text in ["yellowball", "smaller", "zebra", "centres", "a"]:
        assert _bpe(text, ranks) == tok.tokenize(text)


def test_unknown_words_fall_back_to_pieces_and_save_round_trip(tmp_path):
    tok = build_clip_tokenizer(WORDS)
    tok.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]
    assert loaded("a red circle")["input_ids"] == tok("a red circle")["input_ids"]
    assert loaded.model_max_length == 77


def test_bert_tokenizer_keeps_words_whole_and_round_trips(tmp_path):
    tok = build_bert_tokenizer(WORDS)
    assert tok.tokenize("A Yellow corner") == ["a", "yellow", "corner"]
    assert tok.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"]
    tok.save_pretrained(tmp_path)
    assert BertTokenizer.from_pretrained(tmp_path)("red ball")["input_ids"] == tok("red ball")["input_ids"]


@pytest.mark.parametrize("bad", ["", "Red", "two words", "naïve", "dash-ed"])
def test_bad_vocabulary_word_is_named(bad):
    with pytest.raises(ValueError, match="Vocabulary word"):
        build_clip_tokenizer(["ok", bad])
