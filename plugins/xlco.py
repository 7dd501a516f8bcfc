"""Cross-lingual contrast (XLCO) of InfoXLM (Chi et al., NAACL 2021, arXiv:2007.07834), MoCo-style.

Queries come from the trained encoder, keys from a momentum encoder (a frozen copy updated as an
exponential moving average), negatives from a queue of past keys (He et al. 2020, MoCo)::

    θ_k ← m·θ_k + (1 − m)·θ_q                     once per call, before the keys (MoCo order)
    q_A = S_A,  k_B = pool(f_k(B)),  q_B = S_B,  k_A = pool(f_k(A))      keys under no_grad
    moco(q, k, Q) = CE([q̂·k̂, q̂·Q̂ᵀ] / τ, 0)        x̂ = x/‖x‖; Q the (K', D) filled part of the queue
    L_xlco = (moco(q_A, k_B, Q) + moco(q_B, k_A, Q)) / 2
    Q ← Q + [k_A; k_B]                               first in, first out, after the loss

* The queries are the clean sentence vectors ``views.sentence(side)`` (the active pooling), so the
  pair (S_A, S_B) returned for an alignment loss is the same view; ``alignment=none`` is usable.
* Keys are pooled with the same pooling from the momentum encoder, which runs in the module's
  mode (train mode while training: dropout on, as in MoCo and InfoXLM's released code).
* The queue holds keys of both languages (2B per step) and starts empty: until it is full only its
  filled part is used (at the very first step the loss is 0, a softmax over the positive alone).
  InfoXLM's released criterion instead skips the loss until its queue is ready.
* Not masked: a queued key may be the same sentence as (or a translation of) a current query's
  positive, e.g. when a pair is sampled twice within K/(2B) steps. Such a false negative is rare
  with K much smaller than the corpus; InfoXLM does not mask them either.
* The momentum encoder, the queue, its pointer and fill count are buffers/frozen parameters of
  :meth:`Xlco.modules`, so checkpoints save and resume them. Its parameters have
  ``requires_grad=False``: the trainer leaves them out of the optimizer, only the EMA moves them. With ``trainer.grad_accum=k`` the EMA runs once per micro-batch (m^k per step).
* Under DDP each rank would keep a queue of its own keys (MoCo all-gathers keys first; not done).

Shapes: sentence vectors and keys (B, D), queue (K, D), logits (B, 1 + K').
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clse import distributed
from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.interfaces import EncoderBundle, ObjectiveOutput, Views


@dataclass
class XlcoConfig:
    name: str = "xlco"
    weight: float = 1.0  # of L_xlco
    temperature: float = 0.05  # τ (clse's InfoNCE default; InfoXLM's released criterion: 0.25)
    momentum: float = 0.99  # m of the key encoder's EMA (paper: 0.9999, for 100k+ steps)
    queue_size: int = 4096  # K negatives (paper: 131072)


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Mean over rows of −log softmax([cos(q_i, k_i), cos(q_i, Q_j)...] / τ)[0].

    Args:
        q: (B, D) queries (with gradient); k: (B, D) their positive keys; queue: (K, D)
            negatives shared by all queries (K may be 0: the loss is then 0).
        temperature: τ > 0.
    """
    q = F.normalize(q.float(), dim=-1)  # (B, D)
    k = F.normalize(k.float(), dim=-1)  # (B, D)
    queue = F.normalize(queue.float(), dim=-1)  # (K, D)
    pos = (q * k).sum(dim=-1, keepdim=True)  # (B, 1)
    neg = q @ queue.T  # (B, K)
    logits = torch.cat([pos, neg], dim=1) / temperature  # (B, 1 + K)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive: column 0
    return F.cross_entropy(logits, target)


class MomentumQueue(nn.Module):
    """The key encoder (EMA copy of the encoder, frozen) and a FIFO queue of normalised keys."""

    def __init__(self, encoder: nn.Module, queue_size: int, dim: int):
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.register_buffer("queue", torch.zeros(queue_size, dim))  # (K, D)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # valid rows, <= K

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q over the parameters, in order (same architecture)."""
        key_params = list(self.encoder.parameters())
        online_params = list(online.parameters())
        if len(key_params) != len(online_params):
            raise RuntimeError("xlco: the momentum encoder no longer matches the encoder")
        for pk, pq in zip(key_params, online_params):
            pk.lerp_(pq.detach().to(pk.dtype), 1.0 - momentum)

    @torch.no_grad()
    def keys(self, ids: Tensor, mask: Tensor, pooling) -> Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
        return F.normalize(pooling(hidden, mask).float(), dim=-1)  # (B, D)

    def negatives(self) -> Tensor:
        """(K', D) copy of the filled rows (a copy: the enqueue after the loss must not alter
        tensors saved for the backward)."""
        return self.queue[: int(self.filled)].clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        size = self.queue.shape[0]
        keys = keys[-size:].to(self.queue.dtype)  # more keys than slots: the newest win
        slots = (int(self.ptr) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[slots] = keys
        self.ptr.fill_((int(self.ptr) + keys.shape[0]) % size)
        self.filled.fill_(min(int(self.filled) + keys.shape[0], size))


class Xlco:
    needs_alignment = False  # L_xlco trains the encoder on its own

    def __init__(self, cfg: XlcoConfig, encoder: EncoderBundle):
        if not 0.0 <= cfg.momentum <= 1.0:
            raise ConfigError(f"objective.momentum must be in [0, 1], got {cfg.momentum}")
        if cfg.queue_size < 1:
            raise ConfigError(f"objective.queue_size must be >= 1, got {cfg.queue_size}")
        if cfg.temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {cfg.temperature}")
        self.cfg = cfg
        self.weight = cfg.weight
        self.memory = MomentumQueue(encoder.model, cfg.queue_size, encoder.hidden_size)

    def modules(self) -> nn.Module:
        return self.memory

    def __call__(self, views: Views) -> ObjectiveOutput:
        batch, tau = views.batch, self.cfg.temperature
        self.memory.update(views.encoder, self.cfg.momentum)
        s_a, s_b = views.sentence("a"), views.sentence("b")  # queries, with gradient
        k_a = self.memory.keys(batch.a_ids, batch.a_mask, views.pooling)
        k_b = self.memory.keys(batch.b_ids, batch.b_mask, views.pooling)
        queue = self.memory.negatives()
        loss_ab, loss_ba = moco_loss(s_a, k_b, queue, tau), moco_loss(s_b, k_a, queue, tau)
        with torch.no_grad():
            q_a, q_b = F.normalize(s_a.float(), dim=-1), F.normalize(s_b.float(), dim=-1)
            pos = torch.cat([(q_a * k_b).sum(-1), (q_b * k_a).sum(-1)])  # (2B,)
            neg = torch.cat([q_a, q_b]) @ queue.T  # (2B, K')
            hard = neg.max(dim=1).values if neg.shape[1] else torch.full_like(pos, -1.0)
            metrics = {"xlco_ab": loss_ab.item(), "xlco_ba": loss_ba.item(),
                       "queue_fill": int(self.memory.filled) / self.memory.queue.shape[0],
                       "key_query_cos": pos.mean().item(),
                       "queue_cos": neg.mean().item() if neg.numel() else 0.0,
                       "xlco_acc": (pos > hard).float().mean().item()}
        # every rank enqueues the keys of all ranks (MoCo), so the queues stay identical
        self.memory.enqueue(distributed.gather_no_grad(torch.cat([k_a, k_b])))
        return ObjectiveOutput(terms={"xlco": (loss_ab + loss_ba) / 2}, pair=(s_a, s_b),
                               metrics=metrics)


def build_xlco(cfg: XlcoConfig, encoder: EncoderBundle) -> Xlco:
    return Xlco(cfg, encoder)


@hookimpl
def clse_objectives():
    return [PluginSpec(kind="objective", name="xlco", factory=build_xlco, config=XlcoConfig,
                       description="InfoXLM cross-lingual contrast: momentum-encoder keys of the "
                                   "translation, a queue of past keys as negatives")]
