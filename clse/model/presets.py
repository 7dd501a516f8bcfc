"""Size presets of XLM-RoBERTa-shaped encoders built from scratch (offline default)."""

from __future__ import annotations

# name: (layers, hidden, heads, ffn)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "small": (4, 256, 4, 1024),
    "medium": (6, 384, 6, 1536),
    "base": (12, 768, 12, 3072),  # XLM-R base
    "large": (24, 1024, 16, 4096),  # XLM-R large (MEXMA)
}
