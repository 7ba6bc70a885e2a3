"""Tokenizers built offline from a word list, for the tiny stacks that stand in for CLIP, Stable Diffusion and BERT.

A CLIP byte-level BPE tokenizer is normally trained on a large corpus. For the embedded captioned-shapes data we
want the same tokenizer class (so the code path that loads `openai/clip-vit-base-patch32` is the one tests run) with
a vocabulary in which every caption word is exactly one token. Building it is a small fixed-point problem: BPE
applies merges by rank over all adjacent pairs, so a plain chain of merges per word can be broken by another word's
merges ("yellow" was seen split that way; docs/method.md, "The tiny stacks"). `build_clip_tokenizer` appends merges
until every word encodes to one token under CLIP's own BPE rule, then checks the result with the real tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from transformers import BertTokenizer, CLIPTokenizer

_END_OF_WORD = "</w>"
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[str, ...]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for bytes 0..255, in CLIP's vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            codes[byte] = chr(byte)
        else:
            codes[byte] = chr(256 + extra)
            extra += 1
    return tuple(codes[b] for b in range(256))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair, everywhere, until none is ranked."""
    tokens = list(word[:-1]) + [word[-1] + _END_OF_WORD]
    while len(tokens) > 1:
        pair = min(zip(tokens, tokens[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(tokens):
            if i < len(tokens) - 1 and (tokens[i], tokens[i + 1]) == pair:
                merged.append(tokens[i] + tokens[i + 1])
                i += 2
            else:
                merged.append(tokens[i])
                i += 1
        tokens = merged
    return tokens


def _check_words(words: Iterable[str]) -> list[str]:
    words = sorted(set(words))
    for word in words:
        if not word or not word.isascii() or not word.isalnum() or word != word.lower():
            raise ValueError(f"Vocabulary word {word!r} must be a non-empty lower-case ASCII letters/digits word.")
    return words


def clip_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Returns a CLIP BPE vocabulary and merge list in which every word of `words` is exactly one token.

    The vocabulary holds CLIP's 256 byte symbols, their end-of-word forms, one token per merge, and the two
    special tokens, so any text still tokenizes (unknown words fall back to smaller pieces).

    Example:
        >>> vocab, merges = clip_vocab_and_merges(["red", "circle"])
        >>> "circle</w>" in vocab and "red</w>" in vocab
        True
    """
    words = _check_words(words)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for _ in range(len(words) + 1):  # each pass makes every word it meets one token; conflicts need more passes
        done = True
        for word in words:
            tokens = _bpe(word, ranks)
            if len(tokens) == 1:
                continue
            done = False
            prefix = tokens[0]
            for token in tokens[1:]:
                ranks.setdefault((prefix, token), len(merges))
                if ranks[(prefix, token)] == len(merges):
                    merges.append((prefix, token))
                prefix += token
        if done:
            break
    alphabet = list(_byte_alphabet())
    tokens = alphabet + [c + _END_OF_WORD for c in alphabet] + ["".join(pair) for pair in merges]
    tokens += list(CLIP_SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """Builds a `CLIPTokenizer` offline in which every word of `words` encodes to exactly one token.

    Args:
        words: lower-case ASCII words (letters and digits), e.g. every word the captions can contain.
        model_max_length: the context length, 77 as in CLIP and Stable Diffusion.

    Returns:
        A tokenizer that `save_pretrained` writes and `CLIPTokenizer.from_pretrained` reads back.

    Example:
        >>> tok = build_clip_tokenizer(["a", "yellow", "star"])
        >>> tok.tokenize("a yellow star")
        ['a</w>', 'yellow</w>', 'star</w>']
    """
    words = _check_words(words)
    vocab, merges = clip_vocab_and_merges(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)
    split = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if split:
        raise RuntimeError(f"BPE construction left words split into several tokens: {split[:10]}")
    return tokenizer


def build_bert_tokenizer(words: Iterable[str], model_max_length: int = 64) -> BertTokenizer:
    """Builds an uncased WordPiece `BertTokenizer` offline whose vocabulary holds every word of `words` whole.

    Single letters and digits (and their `##` continuations) are included too, so unseen words still tokenize
    instead of collapsing to `[UNK]`.

    Example:
        >>> tok = build_bert_tokenizer(["a", "red", "circle"])
        >>> tok.tokenize("a red circle")
        ['a', 'red', 'circle']
    """
    words = _check_words(words)
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = list(BERT_SPECIAL_TOKENS) + pieces + ["##" + p for p in pieces] + words
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)
