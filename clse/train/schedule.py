"""Learning-rate schedule of the MEXMA paper: linear warm-up from ``start_factor·lr``, then cosine to 0.

A pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, total_steps: int, warmup_ratio: float = 0.3,
          start_factor: float = 0.1, final_factor: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup = int(round(warmup_ratio * total_steps))
    if step < warmup:
        return lr * (start_factor + (1.0 - start_factor) * step / warmup)
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
