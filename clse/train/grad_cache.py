"""Gradient caching (GradCache): in-batch-negative losses over batches larger than memory allows.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(arXiv 2101.06983). A contrastive loss couples every row of the batch (a (B, B) similarity), so
the batch cannot be split into independent micro-batches; it can be split at the sentence vectors:

1. encode the batch in chunks of ``chunk_size`` rows without a graph -> A, B: (B, D);
2. compute the full loss on leaf copies of A and B and backward to them -> dL/dA, dL/dB;
3. re-encode each chunk with a graph and push its slice of dL/dv through it (the chain rule),
   which accumulates exactly dL/dθ into the parameters' ``.grad``.

Dropout: each chunk's re-forward replays the RNG state recorded before its first forward
(GradCache's ``RandContext``), so both passes draw the same masks and the gradients equal those of
encoding the same chunks with a graph and backpropagating the full loss. (The dropout *sample*
differs from one full-batch forward: a (c, T, D) chunk draws its masks differently from (B, T, D).)
The RNG ends where step 1 left it, as if the batch had been encoded once.

Memory / time: only one chunk's activations are alive at a time (plus the (B, D) vectors and the
loss's (B, B) graph), so activation memory scales with ``chunk_size`` instead of B; the price is
a second encoder forward per step (about a third more compute, a backward being ~2 forwards).
With ``chunk_size >= B`` nothing is cached and the plain path runs (one forward).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
from torch import Tensor, nn

from clse.errors import ConfigError
from clse.interfaces import Batch, Pooling

EncodeFn = Callable[[str, slice], Tensor]  # (side "a"/"b", rows) -> (n, D) sentence vectors
LossFn = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]  # (A, B) -> loss, terms

_REPLAY_RNG = True  # the tests switch it off to show that the replay is what makes grads exact


def batch_encoder(batch: Batch, encoder: nn.Module, pooling: Pooling, *,
                  trim: bool = True) -> EncodeFn:
    """An ``encode(side, rows)`` over ``batch``: ``pooling(encoder(rows).last_hidden_state, mask)``.

    ``trim`` drops the padding columns no row of the chunk uses (the batch is padded to its
    longest row, a chunk rarely is): padding is masked out of attention and pooling, so the
    vectors are the same up to float rounding. Exact-duplicate detection by vector equality
    (``duplicate_mask``) may then miss a duplicate across chunks; pass ``batch.groups`` for that.
    """

    def encode(side: str, rows: slice) -> Tensor:
        ids, mask = batch.side(side)
        ids, mask = ids[rows], mask[rows]  # (n, T)
        used = mask.any(dim=0).nonzero() if trim else None  # columns some row of the chunk uses
        if used is not None and len(used):
            width = int(used[-1]) + 1
            ids, mask = ids[:, :width], mask[:, :width]
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (n, T', D)
        return pooling(hidden, mask)  # (n, D)

    return encode


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _rng_state() -> tuple[Tensor, list[Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, list[Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def grad_cache_backward(encode: EncodeFn, batch_size: int, chunk_size: int, loss_fn: LossFn, *,
                        scale: float | Callable[[Tensor], Tensor] = 1.0,
                        context: Callable[[], AbstractContextManager] = nullcontext,
                        ) -> tuple[Tensor, dict[str, Tensor]]:
    """Backward of ``loss_fn(A, B)`` with the encoder run on ``chunk_size`` rows at a time.

    Args:
        encode: ``encode(side, rows)`` -> (n, D) vectors of ``rows`` of side ``"a"``/``"b"``, with a
            graph when grad mode is on (e.g. :func:`batch_encoder`).
        batch_size: B, the number of rows of each side.
        chunk_size: rows per encoder pass (``trainer.grad_cache_chunk``), >= 1.
        loss_fn: (A, B) (B, D) each -> (scalar loss, named terms), e.g. alignment + regulariser.
        scale: what the loss is multiplied by before backward (``1 / grad_accum``), or a callable
            returning the tensor to backward from. With ``torch.amp.GradScaler`` pass
            ``lambda loss: scaler.scale(loss / accum)``: the scaler then knows it was used
            (``unscale_`` needs that) and the cached dL/dv are scaled as in the plain path, so
            fp16 gradients do not underflow.
        context: a factory of the context every forward and the loss run in, e.g.
            ``lambda: torch.autocast("cuda", dtype=torch.bfloat16)``; both passes of a chunk get
            the same one, so the re-forward's vectors have the dtype of the cached gradient.
            The backward passes run outside it, as autocast recommends.

    Returns:
        The detached loss and terms, after adding ``scale * dLoss/dθ`` to the parameters' grads.

    Raises:
        ConfigError: ``chunk_size`` < 1.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"trainer.grad_cache_chunk must be an integer >= 1 (or null to turn "
                          f"gradient caching off), got {chunk_size!r}")
    scaled = scale if callable(scale) else (lambda loss: loss * scale)
    if chunk_size >= batch_size:  # one chunk: nothing to cache, one forward is cheaper
        with context():
            loss, terms = loss_fn(encode("a", slice(None)), encode("b", slice(None)))
        scaled(loss).backward()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    chunks = [slice(i, min(i + chunk_size, batch_size)) for i in range(0, batch_size, chunk_size)]
    # 1. all vectors without a graph, remembering the RNG state each chunk's forward starts from;
    #    side by side as the plain path does (all of A, then all of B)
    states: dict[str, list] = {"a": [], "b": []}
    vectors: dict[str, Tensor] = {}
    with torch.no_grad():
        for side in ("a", "b"):
            parts = []
            for rows in chunks:
                states[side].append(_rng_state())
                with context():
                    parts.append(encode(side, rows))
            vectors[side] = torch.cat(parts).requires_grad_()  # (B, D) leaf: collects dL/dv

    # 2. the full loss (every in-batch negative) and its gradient w.r.t. the vectors, in their dtype
    with context():
        loss, terms = loss_fn(vectors["a"], vectors["b"])
    scaled(loss).backward()

    # 3. re-encode chunk by chunk with a graph, replaying the dropout masks, and backpropagate the
    #    cached gradient; fork_rng puts the RNG back where step 1 left it afterwards
    with torch.random.fork_rng(devices=_cuda_devices()):
        for side in ("a", "b"):
            grad = vectors[side].grad
            if grad is None:  # the loss does not depend on this side
                continue
            for rows, state in zip(chunks, states[side]):
                if _REPLAY_RNG:
                    _set_rng_state(state)
                with context():
                    chunk = encode(side, rows)  # (n, D), now with a graph
                torch.autograd.backward(chunk, grad_tensors=grad[rows])
    return loss.detach(), {k: v.detach() for k, v in terms.items()}
