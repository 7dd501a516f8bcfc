"""The built-in loss functions alone (pure functions of tensors), for use outside the plugins.

    from clse.losses import info_nce
    loss = info_nce(a, b, temperature=0.05)
"""

from __future__ import annotations

from clse_plugins.additive_margin import additive_margin
from clse_plugins.contrastive import info_nce
from clse_plugins.koleo import koleo
from clse_plugins.mse import mse_alignment

__all__ = ["additive_margin", "info_nce", "koleo", "mse_alignment"]
