"""BERT-style masking: choose a ratio of the non-special tokens, then 80% <mask> / 10% random / 10% kept."""

from __future__ import annotations

import torch
from torch import Tensor


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, *, special_ids: Tensor, mask_id: int,
                vocab_size: int, ratio: float, generator: torch.Generator,
                mask_prob: float = 0.8, random_prob: float = 0.1) -> tuple[Tensor, Tensor]:
    """Return ``(masked_ids, labels)``; labels are -100 on tokens that were not chosen.

    Each non-special, non-padding token is chosen with probability ``ratio``. At least one token of
    the batch is chosen (MEXMA needs a non-empty target). Random replacements are drawn uniformly
    from the non-special vocabulary.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"masking ratio must be in (0, 1], got {ratio}")
    device = input_ids.device  # draws come from the CPU generator (checkpointed), then move
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special_ids.to(device))
    draw = torch.rand(input_ids.shape, generator=generator).to(device)
    chosen = eligible & (draw < ratio)
    if not chosen.any() and eligible.any():
        flat = eligible.flatten().nonzero().squeeze(1)
        pick = flat[torch.randint(len(flat), (1,), generator=generator).to(device)]
        chosen.view(-1)[pick] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))

    action = torch.rand(input_ids.shape, generator=generator).to(device)
    to_mask = chosen & (action < mask_prob)
    to_random = chosen & (action >= mask_prob) & (action < mask_prob + random_prob)
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    if to_random.any():
        allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
        allowed[special_ids[special_ids < vocab_size]] = False
        pool = allowed.nonzero().squeeze(1)
        idx = torch.randint(len(pool), (int(to_random.sum()),), generator=generator).to(device)
        masked[to_random] = pool[idx]
    return masked, labels


def special_token_ids(tokenizer) -> Tensor:
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


class Masker:
    """BERT masking bound to a tokenizer and an objective config (``mask_ratio``,
    ``mask_token_prob``, ``random_token_prob``); shared by the mexma, mlm and tlm objectives."""

    def __init__(self, cfg, encoder) -> None:
        tok = encoder.tokenizer
        if tok.mask_token_id is None:
            from clse.errors import ConfigError

            raise ConfigError(f"objective {cfg.name} needs a tokenizer with a mask token "
                              f"({encoder.source})")
        self.cfg = cfg
        self.special_ids = special_token_ids(tok)
        self.mask_id = tok.mask_token_id
        self.vocab_size = encoder.model.config.vocab_size

    def __call__(self, ids: Tensor, mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return mask_tokens(ids, mask, special_ids=self.special_ids, mask_id=self.mask_id,
                           vocab_size=self.vocab_size, ratio=self.cfg.mask_ratio,
                           generator=generator, mask_prob=self.cfg.mask_token_prob,
                           random_prob=self.cfg.random_token_prob)
