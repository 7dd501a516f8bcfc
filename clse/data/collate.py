"""Turn a list of pairs into a padded, tokenised :class:`clse.interfaces.Batch`."""

from __future__ import annotations

import hashlib
import numbers
from typing import Any, Sequence

import torch

from clse.data.readers import Pair
from clse.errors import ConfigError
from clse.interfaces import Batch


class Collator:
    """Tokenises side A (``src``) and side B (``tgt``) separately.

    Each side is truncated to ``max_length`` tokens (special tokens included) and padded to the
    longest sequence of that side in the batch with ``tokenizer.pad_token_id``; ids and masks
    are ``torch.long``.

    Args:
        tokenizer: a Hugging Face fast tokenizer with a pad token.
        max_length: the longest sequence kept (MEXMA: 200).
        prompt: text prepended to every sentence of both sides (e5: ``"query: "``). The
            duplicate keys are of the sentences without it.
    """

    def __init__(self, tokenizer: Any, max_length: int = 200, prompt: str = ""):
        if tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token")
        if (isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral)
                or max_length < 2):
            raise ConfigError(f"max_length must be an integer >= 2 (tokens per sentence, "
                              f"special tokens included), got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.prompt = prompt or ""

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                             padding="longest", return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def __call__(self, pairs: Sequence[Pair]) -> Batch:
        if not pairs:
            raise ValueError("cannot collate an empty list of pairs")
        a_ids, a_mask = self._encode([p.src for p in pairs])
        b_ids, b_mask = self._encode([p.tgt for p in pairs])
        return Batch(a_ids, a_mask, b_ids, b_mask,
                     [p.src_lang for p in pairs], [p.tgt_lang for p in pairs],
                     text_keys(pairs))


def text_keys(pairs: Sequence[Pair]) -> torch.Tensor:
    """(B, 2) int64 keys: a stable 64-bit hash of each row's A and B sentence.

    Sampling with replacement puts the same sentence twice in a batch; contrastive losses must
    not treat its other copy as a negative, and with dropout the two copies' vectors differ,
    so duplicates are found from the text: rows sharing a key (transitively) are one group
    (:func:`clse_plugins.contrastive.duplicate_mask`). The hash is the same in every process,
    so ranks can gather keys and find duplicates across the global batch.
    """
    def key(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(),
                              "little", signed=True)

    return torch.tensor([[key(p.src), key(p.tgt)] for p in pairs], dtype=torch.long)
