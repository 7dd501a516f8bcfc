"""MEXA: the cross-lingual alignment score of Kargaran et al. (2024), official definition.

For n parallel sentences with pivot (English) embeddings ``e_1..e_n`` and embeddings
``f_1..f_n`` of a language L (``f_i`` the translation of ``e_i``), let ``C[i, j] = cos(e_i, f_j)``.
Pair i is *aligned* when its similarity is **strictly** greater than every other entry of its row
and of its column::

    aligned_i = C[i,i] > max_{j != i} C[i,j]  and  C[i,i] > max_{j != i} C[j,i]
    MEXA(e, f) = (1/n) * sum_i aligned_i                       (in [0, 1])

A tie with any other entry of the row or the column therefore counts as *not* aligned (the
official ``compute_mexa.py`` of cisnlp/MEXA uses ``>`` for both tests). Consequences:

* identical embeddings for two different sentences tie, so neither of their pairs is aligned
  (a collapsed encoder scores 0);
* with n = 1 both maxima are over an empty set (``-inf``): the single pair is aligned (1.0).

Numerics: cosines are computed in float64 (as the official code, which uses scipy in float64).
Embeddings that are bit-identical after l2-normalisation get bit-identical similarity rows or
columns (the matrix is computed on the distinct vectors and expanded), so such ties are exact
whatever the BLAS summation order. A zero vector has cosine 0 with everything (its row ties).
Non-finite embeddings raise ``ValueError``. Unlike the official extractor, embeddings are not
rounded to float16 first.

The per-layer computation, the layer pooling (mean, max over layers) and the correlation with
downstream scores live in the ``mexa`` evaluator plugin (``plugins/mexa_eval.py``).

Reference: Kargaran, Modarressi, Nikeghbal, Diesner, Yvon, Schütze (2024), "MEXA: Multilingual
Evaluation of English-Centric LLMs via Cross-Lingual Alignment", arXiv:2410.05873, §3; released
code github.com/cisnlp/MEXA (``compute_mexa.py``).

Only numpy is imported here (torch tensors are accepted and converted).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["cosine_matrix", "mexa_aligned", "mexa_score"]


def _as_matrix(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, D) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return arr


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.where(norm > 0, norm, 1.0)  # zero rows stay zero: cosine 0 with everything


def cosine_matrix(a: Any, b: Any) -> np.ndarray:
    """``C[i, j] = cos(a_i, b_j)`` in float64, (n, D) x (m, D) -> (n, m).

    Rows of ``a`` (columns of ``b``) whose normalised vectors are bit-identical get bit-identical
    rows (columns) of ``C``; a zero vector has cosine 0 with every vector.
    """
    a = _normalise(_as_matrix(a, "a"))
    b = _normalise(_as_matrix(b, "b"))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    ua, ia = np.unique(a, axis=0, return_inverse=True)
    ub, ib = np.unique(b, axis=0, return_inverse=True)
    return (ua @ ub.T)[ia.reshape(-1)][:, ib.reshape(-1)]


def mexa_aligned(pivot_emb: Any, lang_emb: Any) -> np.ndarray:
    """Boolean (n,) vector: pair i passes the strict row-and-column test (see module docstring).

    Args:
        pivot_emb: (n, D) pivot-language (English) sentence embeddings, numpy or torch.
        lang_emb: (n, D) embeddings of the translations, row i the translation of pivot row i.
    """
    pivot = _as_matrix(pivot_emb, "pivot_emb")
    lang = _as_matrix(lang_emb, "lang_emb")
    if pivot.shape != lang.shape:
        raise ValueError(f"pivot_emb {pivot.shape} and lang_emb {lang.shape} must have the same "
                         f"shape (n parallel sentences, same dimension)")
    n = pivot.shape[0]
    if n == 0:
        raise ValueError("MEXA needs at least one sentence pair")
    sim = cosine_matrix(pivot, lang)  # (n, n)
    diag = np.diagonal(sim).copy()
    off = sim.copy()
    np.fill_diagonal(off, -np.inf)
    return (diag > off.max(axis=1)) & (diag > off.max(axis=0))


def mexa_score(pivot_emb: Any, lang_emb: Any) -> float:
    """MEXA alignment score in [0, 1]: the fraction of aligned pairs (strict row-and-column test).

    ``pivot_emb`` and ``lang_emb`` are (n, D) arrays (numpy or torch) of parallel sentences, row i
    of one the translation of row i of the other. Ties count as not aligned; see the module
    docstring for the exact definition and numerics.
    """
    return float(mexa_aligned(pivot_emb, lang_emb).mean())
