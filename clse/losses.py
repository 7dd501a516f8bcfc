"""The built-in loss functions alone (pure functions of tensors), for use outside the plugins.

    from clse.losses import info_nce
    loss = info_nce(a, b, temperature=0.05)
"""

from __future__ import annotations

from clse_plugins.contrastive import info_nce
from clse_plugins.koleo import koleo
from clse_plugins.mse import mse_alignment

__all__ = ["info_nce", "koleo", "mse_alignment"]
