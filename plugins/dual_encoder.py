"""A plain dual encoder: objective ``none`` adds no token-level loss.

One shared encoder, two clean passes (A and B); the model is trained by the alignment loss (and
the regulariser) on the returned pair alone::

    L = alignment.weight * align(S_A, S_B) + regularizer.weight * (reg(S_A) + reg(S_B)) / 2

``terms`` is empty; the loop starts its sum of terms from a zero tensor, so ``weight * 0`` stays
a tensor. Pair it with a real alignment loss (``alignment=contrastive``, ``additive_margin``, ...):
with ``alignment=none`` and ``regularizer=none`` nothing is trained.

Shapes: sentence vectors (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle, ObjectiveOutput, Views


@dataclass
class NoObjectiveConfig:
    name: str = "none"
    weight: float = 1.0  # scales no term: kept for a uniform objective config


class NoObjective:
    """Returns the clean sentence vectors of A and B and no loss term of its own."""

    needs_alignment = True  # without an alignment loss nothing would be trained
    pair_only = True  # output = the clean pair only: the trainer may use gradient caching

    def __init__(self, cfg: NoObjectiveConfig, encoder: EncoderBundle | None = None):
        self.cfg = cfg
        self.weight = cfg.weight

    def modules(self) -> None:
        return None

    def __call__(self, views: Views) -> ObjectiveOutput:
        return ObjectiveOutput(terms={}, pair=(views.sentence("a"), views.sentence("b")))


def build_none(cfg: NoObjectiveConfig, encoder: EncoderBundle) -> NoObjective:
    return NoObjective(cfg, encoder)


@hookimpl
def clse_objectives():
    return [PluginSpec(kind="objective", name="none", factory=build_none, config=NoObjectiveConfig,
                       description="dual encoder: no token-level loss, trained by the alignment "
                                   "loss alone")]
