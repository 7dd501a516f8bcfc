"""Encode many sentences with a progress bar, whatever the encoder.

Evaluators only see ``encoder.encode(sentences, batch_size) -> (N, D)``. To show progress while a
large set is encoded, :func:`encode_texts` sorts the sentences by length (longest first, as
:class:`clse.model.sentence_encoder.ClseSentenceEncoder` does), feeds them to ``encode`` in chunks
of a few batches and advances a tqdm bar after each chunk. Sorting globally before chunking keeps
the padding as small as one big ``encode`` call would, so the bar costs nothing measurable.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from clse.errors import ClseError
from clse.progress import bars_off

CHUNK_BATCHES = 8  # batches per encode() call when a bar is shown


def encode_texts(encoder: Any, texts: Sequence[str], batch_size: int = 64, *,
                 progress: bool = True, desc: str = "encoding") -> np.ndarray:
    """``(len(texts), D)`` float32 embeddings of ``texts`` in their original order.

    Args:
        encoder: anything with ``encode(sentences, batch_size=...)``.
        texts: the sentences.
        batch_size: sentences per forward pass.
        progress: show a tqdm bar (sentences encoded so far).
        desc: the bar's label.

    Raises:
        ClseError: the encoder returned a different number of rows than it was given.
    """
    texts = list(texts)
    if bars_off(progress) or len(texts) <= batch_size * CHUNK_BATCHES:
        return _check(encoder.encode(texts, batch_size=batch_size), len(texts), desc)

    from tqdm.auto import tqdm

    order = np.argsort([-len(t) for t in texts], kind="stable")
    chunk = batch_size * CHUNK_BATCHES
    parts: list[np.ndarray] = []
    with tqdm(total=len(texts), desc=desc, unit="sent", leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            emb = _check(encoder.encode([texts[i] for i in idx], batch_size=batch_size),
                         len(idx), desc)
            parts.append(emb)
            bar.update(len(idx))
    sorted_emb = np.concatenate(parts)
    out = np.empty_like(sorted_emb)
    out[order] = sorted_emb
    return out


def _check(emb: Any, n: int, desc: str) -> np.ndarray:
    if hasattr(emb, "detach"):  # a torch tensor
        emb = emb.detach().float().cpu().numpy()
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ClseError(f"{desc}: the encoder returned an array of shape {emb.shape} for {n} "
                        f"sentences (expected ({n}, D))")
    return emb
