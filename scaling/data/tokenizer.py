"""open_clip's BPE tokenizer (CLIP's 49,408-token vocabulary ships inside open_clip: no network).

Same vocabulary, cleaning and output as ``open_clip.tokenizer.SimpleTokenizer`` (a test checks),
~3x faster on captions: ftfy is skipped where it cannot change the text, and the ids of each
word are cached (open_clip caches only a word's BPE merges).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from open_clip.tokenizer import SimpleTokenizer


class _FastClean:
    """open_clip's 'lower' cleaning, skipping ftfy for printable ASCII without '&': ftfy only
    changes non-ASCII text, control characters and HTML entities, so the result is the same."""

    def __init__(self, clean: Callable[[str], str]) -> None:
        self.clean = clean

    def __call__(self, text: str) -> str:
        if text.isascii() and text.isprintable() and "&" not in text:
            return " ".join(text.split()).lower()
        return self.clean(text)


class Tokenizer:
    """``tokenizer(texts) -> LongTensor[B, context_length]``; wraps open_clip's SimpleTokenizer."""

    def __init__(self, context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(
                f"context_length must be >= 2 (start and end tokens), got {context_length}"
            )

        self.base = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.clean = _FastClean(self.base.clean_fn)
        self.sot_token_id, self.eot_token_id = self.base.sot_token_id, self.base.eot_token_id
        self.vocab_size = self.base.vocab_size
        self._word_ids: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        base, ids = self.base, []
        for word in base.pat.findall(self.clean(text)):
            got = self._word_ids.get(word)
            if got is None:
                token = "".join(base.byte_encoder[b] for b in word.encode("utf-8"))
                got = self._word_ids[word] = [base.encoder[t] for t in base.bpe(token).split(" ")]
            ids.extend(got)
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.base.decode(ids)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        rows = []
        for text in texts:
            tokens = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(tokens) > length:  # cut, keeping the end token (as open_clip does)
                tokens = tokens[:length]
                tokens[-1] = self.eot_token_id
            rows.append(tokens + [0] * (length - len(tokens)))
        return torch.tensor(rows, dtype=torch.long).view(len(texts), length)  # one tensor, not one a row


@functools.lru_cache(maxsize=8)
def get_tokenizer(context_length: int = 77) -> Tokenizer:
    """A callable ``list[str] -> LongTensor[B, context_length]`` (start/end tokens, zero padding,
    lower-cased; too-long texts are cut and keep their end token)."""
    return Tokenizer(context_length)


def vocab_size() -> int:
    """Size of the vocabulary (the text tower's embedding rows)."""
    return get_tokenizer().vocab_size
