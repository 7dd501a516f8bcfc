"""Monolingual masked language modelling (Devlin et al. 2019), on A and B separately.

Two masked passes of one shared encoder (masked A, masked B), plus the clean passes that give the
pair of sentence vectors::

    CE_A = CE(head(Â), A)     Â = masked-A last hidden states, CE mean over masked tokens
    CE_B = CE(head(B̂), B)
    L_mlm = (CE_A + CE_B) / 2        (weighted by ``objective.weight``)

Masking: ``mask_ratio`` (15%) of the non-special tokens of each side, 80% ``<mask>`` / 10% random
id / 10% unchanged (:func:`clse.data.masking.mask_tokens`, drawn from the trainer's generator,
A then B).

The head is XLM-R's LM head: ``dense(D, D) -> GELU -> LayerNorm`` then a vocabulary projection
whose weight is tied to the encoder's input embeddings, with its own bias.

The pair is the clean sentence vectors (S_A, S_B), so an alignment loss can be added; with
``alignment=none regularizer=none objective.sentence_pair=false`` this is pure MLM pre-training
(no clean passes: half the encoder calls).

Shapes: ids (B, T), hidden (B, T, D), logits over masked tokens (M, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clse.data.masking import Masker
from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle, ObjectiveOutput, Views


@dataclass
class MlmConfig:
    name: str = "mlm"
    weight: float = 1.0  # of L_mlm = (CE_A + CE_B) / 2
    mask_ratio: float = 0.15
    mask_token_prob: float = 0.8  # of the chosen tokens: <mask>
    random_token_prob: float = 0.1  # random id; the rest stay unchanged
    sentence_pair: bool = True  # false: skip the clean passes (pure pre-training, alignment=none)


class MlmHead(nn.Module):
    """XLM-R's LM head: dense + GELU + LayerNorm, then a projection tied to the input embeddings."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        cfg = encoder.config
        d = cfg.hidden_size
        self.dense = nn.Linear(d, d)
        self.layer_norm = nn.LayerNorm(d, eps=getattr(cfg, "layer_norm_eps", 1e-12))
        self.embeddings = encoder.get_input_embeddings()  # tied: shared with the encoder
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        nn.init.normal_(self.dense.weight, std=getattr(cfg, "initializer_range", 0.02))
        nn.init.zeros_(self.dense.bias)

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) hidden states -> (..., V) vocabulary logits."""
        x = self.layer_norm(F.gelu(self.dense(hidden)))
        return F.linear(x, self.embeddings.weight, self.bias)

    def forward(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy (mean over tokens whose label is not -100) of predicting ``labels``."""
        picked = labels != -100
        return F.cross_entropy(self.logits(hidden[picked]).float(), labels[picked])


class Mlm:
    def __init__(self, cfg: MlmConfig, encoder: EncoderBundle):
        self.cfg = cfg
        self.weight = cfg.weight
        self.mask = Masker(cfg, encoder)
        self.head = MlmHead(encoder.model)

    def modules(self) -> nn.Module:
        return self.head

    def __call__(self, views: Views) -> ObjectiveOutput:
        batch, gen = views.batch, views.generator
        ids_a, labels_a = self.mask(batch.a_ids, batch.a_mask, gen)
        ids_b, labels_b = self.mask(batch.b_ids, batch.b_mask, gen)
        ce_a = self.head(views.encode("masked_a", ids_a, batch.a_mask), labels_a)
        ce_b = self.head(views.encode("masked_b", ids_b, batch.b_mask), labels_b)
        pair = (views.sentence("a"), views.sentence("b")) if self.cfg.sentence_pair else None
        return ObjectiveOutput(terms={"mlm": (ce_a + ce_b) / 2}, pair=pair,
                               metrics={"mlm_a": ce_a.item(), "mlm_b": ce_b.item()})


def build_mlm(cfg: MlmConfig, encoder: EncoderBundle) -> Mlm:
    return Mlm(cfg, encoder)


@hookimpl
def clse_objectives():
    return [PluginSpec(kind="objective", name="mlm", factory=build_mlm, config=MlmConfig,
                       description="monolingual masked LM on A and B separately (15%, 80/10/10)")]
