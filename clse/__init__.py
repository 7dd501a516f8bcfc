"""clse: train, evaluate and compare cross-lingual sentence encoders."""

from __future__ import annotations

__version__ = "0.1.0"
