"""Translation through a fixed-size sentence bottleneck (SONAR: Duquenne et al. 2023,
arXiv:2308.11466; LASER: Artetxe & Schwenk, TACL 2019, with a BiLSTM encoder-decoder).

A small transformer decoder predicts the translation's tokens while seeing *only* the pooled
sentence vector of the source: its cross-attention memory is that one vector (length 1). Teacher
forcing with causal self-attention, both directions::

    CE_AB = CE(dec(S_A, [<s>, b_1 .. b_{n-1}]), [b_1 .. b_n])      mean over B's real tokens
    CE_BA = CE(dec(S_B, [<s>, a_1 .. a_{m-1}]), [a_1 .. a_m])
    L_mt  = (CE_AB + CE_BA) / 2                                     term ``translation``
    L_dae = dae_weight · (CE(dec(S̃_A), A) + CE(dec(S̃_B), B)) / 2    term ``dae`` (off by default)

S̃ is the pooled vector of a noised copy (BERT masking of ``dae_noise`` of the tokens; 0: the clean
vector, plain auto-encoding), SONAR's denoising auto-encoding term. a_1.. are the tokens after
the tokenizer's own ``<s>`` (``</s>`` included: the decoder learns to stop); padding is excluded.

Decoder: learned positions + LayerNorm over token embeddings tied to the encoder's input
embeddings, ``decoder_layers`` pre-LN ``torch.nn.TransformerDecoderLayer`` (GELU, the encoder's
dropout; SDPA attention), a final LayerNorm, and a vocabulary projection tied to the same
embedding matrix with its own bias (as the MEXMA head). The encoder's transformer layers get
this loss's gradient only through the pooled vector; the shared embedding matrix is also
updated directly by the decoder's input and output sides.

The pair (S_A, S_B) is returned for an alignment loss (SONAR also adds an MSE term:
``alignment=mse``); ``alignment=none`` is usable on its own.

Shapes: ids (B, T), sentence vectors (B, D), decoder states (B, T, D), logits (N_real, V).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clse.data.masking import Masker
from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle, ObjectiveOutput, Views


@dataclass
class BottleneckConfig:
    name: str = "bottleneck"
    weight: float = 1.0  # of L_mt + L_dae
    decoder_layers: int | None = None  # None: the encoder's depth, at most 6 (MEXMA's head)
    decoder_heads: int | None = None  # None: the encoder's number of heads
    decoder_ffn: int | None = None  # None: the encoder's FFN size
    dae_weight: float = 0.0  # denoising auto-encoding A→A and B→B; 0 = off
    dae_noise: float = 0.3  # share of tokens masked in the DAE input (0: plain auto-encoding)


def teacher_forcing(ids: Tensor, mask: Tensor, bos_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Decoder inputs, targets and target mask, each (B, T'), from padded token ids.

    Rows are first moved to right padding (left-padded batches are allowed). When every row starts
    with ``bos_id`` (XLM-R's ``<s>``), that token is not a target. Inputs are the targets shifted
    right behind ``bos_id``; positions past a row's end hold padding and are masked out.
    """
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)  # real tokens first
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    if bool((ids[:, 0] == bos_id).all()):
        ids, mask = ids[:, 1:], mask[:, 1:]
    inputs = torch.cat([torch.full_like(ids[:, :1], bos_id), ids[:, :-1]], dim=1)
    return inputs, ids, mask


class BottleneckDecoder(nn.Module):
    """A causal transformer decoder whose only view of the source is one vector per sentence."""

    def __init__(self, encoder: nn.Module, layers: int, heads: int, ffn: int):
        super().__init__()
        cfg = encoder.config
        d, eps = cfg.hidden_size, getattr(cfg, "layer_norm_eps", 1e-12)
        self.embeddings = encoder.get_input_embeddings()  # tied: shared with the encoder
        self.positions = nn.Embedding(cfg.max_position_embeddings, d)
        self.embed_norm = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        layer = nn.TransformerDecoderLayer(d, heads, ffn, dropout=cfg.hidden_dropout_prob,
                                           activation="gelu", layer_norm_eps=eps,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(d, eps=eps))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        for name, p in [*self.layers.named_parameters(), *self.positions.named_parameters()]:
            if "norm" in name:  # LayerNorms keep ones/zeros
                continue
            if p.dim() > 1:  # weights N(0, 0.02), biases 0 (as the MEXMA head)
                nn.init.normal_(p, std=0.02)
            else:
                nn.init.zeros_(p)

    def forward(self, sentence: Tensor, inputs: Tensor, targets: Tensor, target_mask: Tensor) -> Tensor:
        """Mean CE over the real target tokens of predicting ``targets`` from ``sentence`` (B, D)."""
        t = inputs.shape[1]
        pos = torch.arange(t, device=inputs.device)
        x = self.dropout(self.embed_norm(self.embeddings(inputs) + self.positions(pos)))  # (B, T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=x.device, dtype=x.dtype)
        h = self.layers(x, memory=sentence.unsqueeze(1).to(x.dtype), tgt_mask=causal,
                        tgt_is_causal=True)  # (B, T, D); memory (B, 1, D)
        picked = target_mask.bool()
        logits = F.linear(h[picked], self.embeddings.weight, self.bias)  # (N, V)
        return F.cross_entropy(logits.float(), targets[picked])


class Bottleneck:
    needs_alignment = False  # the translation loss trains the encoder on its own

    def __init__(self, cfg: BottleneckConfig, encoder: EncoderBundle):
        if cfg.dae_weight < 0 or not 0.0 <= cfg.dae_noise <= 1.0:
            raise ConfigError("objective.dae_weight must be >= 0 and objective.dae_noise in [0, 1]")
        self.cfg = cfg
        self.weight = cfg.weight
        model_cfg = encoder.model.config
        heads = cfg.decoder_heads or model_cfg.num_attention_heads
        if model_cfg.hidden_size % heads:
            raise ConfigError(f"objective.decoder_heads={heads} does not divide the hidden size "
                              f"{model_cfg.hidden_size}")
        self.decoder = BottleneckDecoder(
            encoder.model, cfg.decoder_layers or min(model_cfg.num_hidden_layers, 6), heads,
            cfg.decoder_ffn or model_cfg.intermediate_size)
        bos = getattr(encoder.tokenizer, "bos_token_id", None)
        self.bos_id = int(model_cfg.bos_token_id if bos is None else bos)
        self.noise = None
        if cfg.dae_weight > 0 and cfg.dae_noise > 0:
            self.noise = Masker(SimpleNamespace(name=cfg.name, mask_ratio=cfg.dae_noise,
                                                mask_token_prob=0.8, random_token_prob=0.1), encoder)

    def modules(self) -> nn.Module:
        return self.decoder

    def decode(self, sentence: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return self.decoder(sentence, *teacher_forcing(ids, mask, self.bos_id))

    def __call__(self, views: Views) -> ObjectiveOutput:
        batch = views.batch
        s_a, s_b = views.sentence("a"), views.sentence("b")
        ce_ab = self.decode(s_a, batch.b_ids, batch.b_mask)  # A's vector -> B's tokens
        ce_ba = self.decode(s_b, batch.a_ids, batch.a_mask)
        terms = {"translation": (ce_ab + ce_ba) / 2}
        metrics = {"ce_a_to_b": ce_ab.item(), "ce_b_to_a": ce_ba.item()}
        if self.cfg.dae_weight > 0:
            n_a, n_b = s_a, s_b
            if self.noise is not None:
                views.encode("noised_a", self.noise(batch.a_ids, batch.a_mask, views.generator)[0],
                             batch.a_mask)
                views.encode("noised_b", self.noise(batch.b_ids, batch.b_mask, views.generator)[0],
                             batch.b_mask)
                n_a, n_b = views.sentence("a", key="noised_a"), views.sentence("b", key="noised_b")
            dae = (self.decode(n_a, batch.a_ids, batch.a_mask)
                   + self.decode(n_b, batch.b_ids, batch.b_mask)) / 2
            terms["dae"] = self.cfg.dae_weight * dae
            metrics["dae_ce"] = dae.item()
        return ObjectiveOutput(terms=terms, pair=(s_a, s_b), metrics=metrics)


def build_bottleneck(cfg: BottleneckConfig, encoder: EncoderBundle) -> Bottleneck:
    return Bottleneck(cfg, encoder)


@hookimpl
def clse_objectives():
    return [PluginSpec(kind="objective", name="bottleneck", factory=build_bottleneck,
                       config=BottleneckConfig,
                       description="SONAR/LASER-style translation: a decoder that sees only the "
                                   "pooled sentence vector predicts the translation's tokens")]
