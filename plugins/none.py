"""The "none" alignment and "none" regulariser: they add nothing.

    L = 0

returned as ``a.sum() * 0`` so the result is a scalar on the inputs' device and dtype that keeps
the autograd graph (``loss.backward()`` works and gives zero gradients). Select them to switch a
term off, e.g. ``alignment=none`` (MEXMA without sentence alignment) or ``regularizer=none``.

Shapes: alignment ``a``, ``b``: (B, D) -> scalar; regulariser ``x``: (B, D) -> scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class NoneAlignmentConfig:
    name: str = "none"
    weight: float = 0.0


@dataclass
class NoneRegularizerConfig:
    name: str = "none"
    weight: float = 0.0


def zero_loss(x: Tensor) -> Tensor:
    """A zero scalar attached to ``x``'s graph."""
    return x.sum() * 0


@dataclass(frozen=True)
class NoneAlignment:
    weight: float = 0.0

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return zero_loss(a)


@dataclass(frozen=True)
class NoneRegularizer:
    weight: float = 0.0

    def __call__(self, x: Tensor) -> Tensor:
        return zero_loss(x)


def build_alignment(cfg: NoneAlignmentConfig) -> NoneAlignment:
    return NoneAlignment(weight=float(cfg.weight))


def build_regularizer(cfg: NoneRegularizerConfig) -> NoneRegularizer:
    return NoneRegularizer(weight=float(cfg.weight))


@hookimpl
def clse_alignments() -> list[PluginSpec]:
    return [PluginSpec(kind="alignment", name="none", factory=build_alignment,
                       config=NoneAlignmentConfig, description="no sentence alignment (zero loss)")]


@hookimpl
def clse_regularizers() -> list[PluginSpec]:
    return [PluginSpec(kind="regularizer", name="none", factory=build_regularizer,
                       config=NoneRegularizerConfig, description="no regulariser (zero loss)")]
