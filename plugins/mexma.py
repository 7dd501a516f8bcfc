"""MEXMA cross-unmasking (Janeiro et al., ACL 2025; released code facebookresearch/mexma).

Four views of one shared encoder: clean A, clean B, masked A, masked B. The clean sentence vector
of one language unmasks the other language's tokens through a fresh transformer head::

    CE_A = CE(head([S_B, Â_1..]), A)       Â = masked-A last hidden states without position 0
    CE_B = CE(head([S_A, B̂_1..]), B)
    L_mlm = (CE_A + CE_B) / 2               (weighted by ``objective.weight``, 1.0)

The alignment loss (``alignment=mse`` by default, weight 1.0) and the regulariser (``koleo``,
weight 0.01, averaged over A and B) act on the returned pair (S_A, S_B). The switches below
define the paper's ablations (Tables 5, 6, 11, 12):

* ``token_grads=false``: the head sees ``[S_other, Â.detach()]``, so the MLM gradient reaches the
  encoder's layers only through the other language's sentence vector (Table 5 ①).
* ``tied_grads``: whether the MLM loss also trains the encoder's input embeddings through the
  vocabulary projection tied to them. ``null`` (default) follows ``token_grads``: with
  ``token_grads=false`` the projection uses a detached copy of the embedding weight, so the encoder
  is reached *only* through the sentence vector ("sentence-level gradients only"). ``true`` keeps
  the tie's gradient (the other reading of the paper's ablation; the tiny-start grids ran so).
* ``symmetric=false``: two passes, one side masked and one clean, sides swapped at random per
  sample (Table 11 ①); the pair is then (masked-side vector, clean-side vector).
* ``align=clean_masked``: align the masked CLS of A with the clean CLS of B (Table 11 ③).
* ``mask_ratio`` (Table 12), ``head_layers``.

Shapes: ids (B, T), hidden (B, T, D), sentence vectors (B, D), logits over masked tokens (M, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clse.data.masking import Masker
from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle, ObjectiveOutput, Views
from clse.model.packing import Packing, is_packed


@dataclass
class MexmaConfig:
    name: str = "mexma"
    weight: float = 1.0  # of L_mlm = (CE_A + CE_B) / 2
    mask_ratio: float = 0.4
    mask_token_prob: float = 0.8  # of the chosen tokens: <mask>
    random_token_prob: float = 0.1  # random id; the rest stay unchanged
    head_layers: int = 6
    head_heads: int | None = None  # None: the encoder's number of heads (paper: 8)
    head_ffn: int | None = None  # None: the encoder's FFN size (paper: 3072)
    token_grads: bool = True
    tied_grads: bool | None = None  # MLM grads into the input embeddings via the tie (null: = token_grads)
    symmetric: bool = True
    align: str = "clean"  # clean | clean_masked


class UnmaskingHead(nn.Module):
    """Transformer stack without embeddings + vocabulary projection tied to the input embeddings."""

    def __init__(self, encoder: nn.Module, layers: int, heads: int, ffn: int,
                 tied_grads: bool = True):
        super().__init__()
        self.tied_grads = tied_grads
        from transformers import XLMRobertaConfig
        from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEncoder

        enc_cfg = encoder.config
        self.config = XLMRobertaConfig(
            hidden_size=enc_cfg.hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=ffn, hidden_act="gelu", layer_norm_eps=1e-12,
            hidden_dropout_prob=enc_cfg.hidden_dropout_prob, attention_probs_dropout_prob=0.0,
            vocab_size=enc_cfg.vocab_size)
        self.config._attn_implementation = enc_cfg._attn_implementation
        self.layers = XLMRobertaEncoder(self.config)
        self.embeddings = encoder.get_input_embeddings()  # tied: shared with the encoder
        self.bias = nn.Parameter(torch.zeros(enc_cfg.vocab_size))
        self.layers.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, sentence: Tensor, tokens: Tensor, attention_mask: Tensor,
                labels: Tensor) -> Tensor:
        """Cross-entropy (mean over masked tokens) of predicting ``labels`` from [sentence, tokens]."""
        from transformers.masking_utils import create_bidirectional_mask

        x = torch.cat([sentence.unsqueeze(1), tokens], dim=1)  # (B, T, D)
        if is_packed(self):  # the encoder's packing: only real positions are computed
            packing = Packing.from_mask(attention_mask)
            h = self.layers(packing.pack(x), **packing.attention_kwargs()).last_hidden_state[0]
            labels = packing.pack(labels)[0]  # (N,)
        else:
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=x,
                                             attention_mask=attention_mask)
            h = self.layers(x, attention_mask=mask).last_hidden_state  # (B, T, D)
        picked = labels != -100
        # tied_grads=false: the projection's gradient stops here instead of training the embeddings
        weight = self.embeddings.weight if self.tied_grads else self.embeddings.weight.detach()
        logits = F.linear(h[picked], weight, self.bias)  # (M, V)
        return F.cross_entropy(logits.float(), labels[picked])


class Mexma:
    def __init__(self, cfg: MexmaConfig, encoder: EncoderBundle):
        if cfg.align not in ("clean", "clean_masked"):
            raise ConfigError(f"objective.align must be clean or clean_masked, got {cfg.align!r}")
        if not cfg.symmetric and cfg.align == "clean":
            raise ConfigError("objective.symmetric=false has a single clean view: set "
                              "objective.align=clean_masked (the pair is then the masked side's "
                              "vector and the clean side's; use alignment=none for Table 11 ①)")
        self.cfg = cfg
        self.weight = cfg.weight
        model_cfg = encoder.model.config
        tied = cfg.token_grads if cfg.tied_grads is None else cfg.tied_grads
        self.head = UnmaskingHead(encoder.model, cfg.head_layers,
                                  cfg.head_heads or model_cfg.num_attention_heads,
                                  cfg.head_ffn or model_cfg.intermediate_size, tied_grads=tied)
        self._mask = Masker(cfg, encoder)

    def modules(self) -> nn.Module:
        return self.head

    def _unmask(self, sentence: Tensor, masked_hidden: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        tokens = masked_hidden[:, 1:]
        if not self.cfg.token_grads:
            tokens = tokens.detach()  # MLM gradient reaches the encoder only through `sentence`
        return self.head(sentence, tokens, mask, labels)

    def __call__(self, views: Views) -> ObjectiveOutput:
        if self.cfg.symmetric:
            return self._symmetric(views)
        return self._one_sided(views)

    def _symmetric(self, views: Views) -> ObjectiveOutput:
        batch, gen = views.batch, views.generator
        ids_a, labels_a = self._mask(batch.a_ids, batch.a_mask, gen)
        ids_b, labels_b = self._mask(batch.b_ids, batch.b_mask, gen)
        h_ma = views.encode("masked_a", ids_a, batch.a_mask)
        h_mb = views.encode("masked_b", ids_b, batch.b_mask)
        s_a, s_b = views.sentence("a"), views.sentence("b")
        ce_a = self._unmask(s_b, h_ma, batch.a_mask, labels_a)
        ce_b = self._unmask(s_a, h_mb, batch.b_mask, labels_b)
        if self.cfg.align == "clean":
            pair = (s_a, s_b)
        else:
            pair = (views.sentence("a", key="masked_a"), s_b)
        return ObjectiveOutput(terms={"mlm": (ce_a + ce_b) / 2}, pair=pair,
                               metrics={"mlm_a": ce_a.item(), "mlm_b": ce_b.item()})

    def _one_sided(self, views: Views) -> ObjectiveOutput:
        batch, gen = views.batch, views.generator
        length = max(batch.a_ids.shape[1], batch.b_ids.shape[1])
        def padded(ids: Tensor, mask: Tensor, value: int) -> tuple[Tensor, Tensor]:
            extra = length - ids.shape[1]
            return F.pad(ids, (0, extra), value=value), F.pad(mask, (0, extra), value=0)

        pad = views.encoder.config.pad_token_id
        a_ids, a_mask = padded(batch.a_ids, batch.a_mask, pad)
        b_ids, b_mask = padded(batch.b_ids, batch.b_mask, pad)
        swap = (torch.rand(len(batch), generator=gen) < 0.5).to(a_ids.device)  # per sample: mask B
        m_ids = torch.where(swap[:, None], b_ids, a_ids)
        m_mask = torch.where(swap[:, None], b_mask, a_mask)
        c_ids = torch.where(swap[:, None], a_ids, b_ids)
        c_mask = torch.where(swap[:, None], a_mask, b_mask)
        m_ids_masked, labels = self._mask(m_ids, m_mask, gen)
        h_m = views.encode("masked_x", m_ids_masked, m_mask)
        views.encode("clean_y", c_ids, c_mask)
        s_c = views.sentence("", key="clean_y")
        ce = self._unmask(s_c, h_m, m_mask, labels)
        return ObjectiveOutput(terms={"mlm": ce}, pair=(views.sentence("", key="masked_x"), s_c))


def build_mexma(cfg: MexmaConfig, encoder: EncoderBundle) -> Mexma:
    return Mexma(cfg, encoder)


@hookimpl
def clse_objectives():
    return [PluginSpec(kind="objective", name="mexma", factory=build_mexma, config=MexmaConfig,
                       description="MEXMA cross-unmasking: each language's clean sentence vector "
                                   "unmasks the other language's tokens")]
