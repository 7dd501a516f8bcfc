"""Translation language modelling (XLM, Conneau & Lample 2019).

Each translation pair becomes one sequence, masked across both sentences, so a masked word can be
predicted from its own context or from the translation::

    <s> a_1 .. a_n </s> </s> b_1 .. b_m </s>        (XLM-R's pair format)
    L_tlm = CE(head(encoder(masked pair)), pair)     mean over masked tokens

* Masking: ``mask_ratio`` (15%) of the non-special tokens of the whole pair, 80% ``<mask>`` /
  10% random / 10% unchanged; ``<s>``, ``</s>`` and padding are never masked.
* Positions restart for the second sentence, as in XLM. XLM-R numbers positions from
  ``padding_idx + 1`` (padding gets ``padding_idx``), so each segment's ids are
  ``padding_idx + 1 + index within the segment``; the second segment starts at the inserted
  ``</s>`` separator, which takes the place (and position) of B's own ``<s>``.
* XLM-R has no language embeddings (``type_vocab_size`` 1, XLM had them): the two segments are
  marked only by the ``</s> </s>`` separator and the restarted positions.
* :class:`~clse.interfaces.Views` encodes with default positions (counted from the left over
  non-padding tokens) and has no ``position_ids`` argument, so the concatenated view is encoded
  here by calling ``views.encoder`` directly with explicit ``position_ids`` (not cached in Views).

The head is the MLM head of :mod:`clse_plugins.mlm` (dense + GELU + LayerNorm + tied projection).
The pair is the clean sentence vectors (S_A, S_B) of separate clean passes, so an alignment loss
can be added.

Shapes: ids (B, T) with T <= Ta + Tb - 1, hidden (B, T, D), logits over masked tokens (M, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle, ObjectiveOutput, Views
from clse.data.masking import Masker
from clse.model.packing import position_offsets
from clse_plugins.mlm import MlmHead


@dataclass
class TlmConfig:
    name: str = "tlm"
    weight: float = 1.0  # of L_tlm
    mask_ratio: float = 0.15
    mask_token_prob: float = 0.8  # of the chosen tokens: <mask>
    random_token_prob: float = 0.1  # random id; the rest stay unchanged


def concat_pair(a_ids: Tensor, a_mask: Tensor, b_ids: Tensor, b_mask: Tensor, *, bos_id: int,
                eos_id: int, pad_id: int, padding_idx: int,
                first_position: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate padded pairs into ``<s> a </s> </s> b </s>``, re-padded to the longest row.

    Padding of A and B is dropped, B's leading ``<s>`` (when present) is replaced by the ``</s>``
    separator. Returns ``(ids, mask, position_ids)``, each (B, T); positions are
    ``first_position + index within the segment`` (the second segment starts at the separator)
    and ``padding_idx`` on padding. ``first_position`` is the model's first position id:
    ``padding_idx + 1`` for XLM-R (the default), 0 for BERT.
    """
    first = padding_idx + 1 if first_position is None else first_position
    rows, segments = [], []
    for i in range(a_ids.shape[0]):
        a = a_ids[i][a_mask[i].bool()]
        b = b_ids[i][b_mask[i].bool()]
        if len(b) and int(b[0]) == bos_id:
            b = b[1:]
        b = torch.cat([b.new_full((1,), eos_id), b])
        rows.append(torch.cat([a, b]))
        segments.append((len(a), len(b)))
    length = max(len(r) for r in rows)
    n = len(rows)
    ids = a_ids.new_full((n, length), pad_id)
    mask = a_mask.new_zeros((n, length))
    pos = a_ids.new_full((n, length), padding_idx)
    for i, (row, (la, lb)) in enumerate(zip(rows, segments)):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        pos[i, :la] = first + torch.arange(la, device=a_ids.device)
        pos[i, la:la + lb] = first + torch.arange(lb, device=a_ids.device)
    return ids, mask, pos


class Tlm:
    def __init__(self, cfg: TlmConfig, encoder: EncoderBundle):
        self.cfg = cfg
        self.weight = cfg.weight
        self.mask = Masker(cfg, encoder)
        self.head = MlmHead(encoder.model)
        model_cfg, tok = encoder.model.config, encoder.tokenizer

        def token(name: str) -> int:
            value = getattr(tok, f"{name}_token_id", None)
            return int(getattr(model_cfg, f"{name}_token_id") if value is None else value)

        self.bos_id, self.eos_id, self.pad_id = token("bos"), token("eos"), token("pad")
        # XLM-R numbers positions from padding_idx + 1 (padding at padding_idx), BERT from 0
        self.first_position, self.padding_idx = position_offsets(encoder.model)

    def modules(self) -> nn.Module:
        return self.head

    def concat(self, views: Views) -> tuple[Tensor, Tensor, Tensor]:
        b = views.batch
        return concat_pair(b.a_ids, b.a_mask, b.b_ids, b.b_mask, bos_id=self.bos_id,
                           eos_id=self.eos_id, pad_id=self.pad_id, padding_idx=self.padding_idx,
                           first_position=self.first_position)

    def __call__(self, views: Views) -> ObjectiveOutput:
        ids, mask, pos = self.concat(views)
        masked, labels = self.mask(ids, mask, views.generator)
        # direct encoder call: Views.encode cannot pass the restarted position ids
        hidden = views.encoder(input_ids=masked, attention_mask=mask,
                               position_ids=pos).last_hidden_state
        ce = self.head(hidden, labels)
        return ObjectiveOutput(terms={"tlm": ce}, pair=(views.sentence("a"), views.sentence("b")))


def build_tlm(cfg: TlmConfig, encoder: EncoderBundle) -> Tlm:
    return Tlm(cfg, encoder)


@hookimpl
def clse_objectives():
    return [PluginSpec(kind="objective", name="tlm", factory=build_tlm, config=TlmConfig,
                       description="translation LM (XLM): mask 15% of the concatenated pair, "
                                   "positions restarted for the second sentence")]
