"""CLS pooling: the sentence vector is the last layer's hidden state at position 0.

    s = h[:, 0]

MEXMA (facebookresearch/mexma) uses the raw position-0 state (no pooler dense/tanh layer);
LaBSE passes it through BERT's pooler, ``tanh(Dense(CLS))``, and L2-normalises it: that is
``pooling=pooler`` (``recipe=labse``). With right padding, position 0 is the ``<s>``/``[CLS]``
token of every row, so the mask is not needed.

Shapes: ``hidden``: (B, T, D), ``attention_mask``: (B, T) -> (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class ClsPoolingConfig:
    name: str = "cls"


def cls_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, T, D) -> (B, D): the state at position 0 (assumes right padding)."""
    return hidden[:, 0]  # (B, D)


@dataclass(frozen=True)
class ClsPooling:
    """A ``Pooling`` returning the position-0 state."""

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return cls_pool(hidden, attention_mask)


def build(cfg: ClsPoolingConfig) -> ClsPooling:
    return ClsPooling()


@hookimpl
def clse_poolings() -> list[PluginSpec]:
    return [PluginSpec(kind="pooling", name="cls", factory=build, config=ClsPoolingConfig,
                       description="raw last-layer state at position 0 (MEXMA)")]
