"""xsim: the multilingual similarity search error rate of LASER (``source/xsim.py``).

For source sentences ``x_1..x_n`` and targets ``y_1..y_m`` (``m >= n``; target ``i`` is the gold
translation of source ``i``, rows past ``n`` are extra distractors as in xsim++):

1. l2-normalise both sides, so that inner product = cosine;
2. k nearest neighbours each way by inner product (faiss ``IndexFlatIP``):
   ``NN_k(x)`` = the k targets closest to ``x``, ``NN_k(y)`` = the k sources closest to ``y``;
3. neighbourhood averages ``avg(x) = mean_{y' in NN_k(x)} cos(x, y')`` and
   ``avg(y) = mean_{x' in NN_k(y)} cos(x', y)``;
4. rescore only the k candidates ``y in NN_k(x)`` of each source (forward direction, x -> y)::

       ratio:    cos(x, y) / ((avg(x) + avg(y)) / 2)
       distance: cos(x, y) - (avg(x) + avg(y)) / 2
       absolute: cos(x, y)            (plain nearest neighbour, no averages)

5. the source picks its best-scoring candidate; it is an error when that is not target ``i``
   (index mode) or, in text mode, when the chosen target's text differs from target ``i``'s text
   (LASER's CLI default, which forgives duplicate targets).

``xsim`` returns ``(errors, n)``; the error rate is ``100 * errors / n``.

Reference: Artetxe & Schwenk (2019), "Margin-based parallel corpus mining with multilingual
sentence embeddings" (the margins); LASER ``source/xsim.py`` (facebookresearch/LASER) for the exact
procedure; Chen et al. (2023), "xSIM++" for the extra targets.

Only numpy is imported at module import; faiss and torch are imported when a search runs.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np

MARGINS = ("ratio", "distance", "absolute")
BACKENDS = ("auto", "faiss", "torch")

_TORCH_CHUNK = 4096  # query rows per similarity block in the torch backend (bounds memory)

KnnFn = Callable[[np.ndarray, np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]


def xsim(src_emb: Any, tgt_emb: Any, k: int = 4, margin: str = "ratio", *,
         src_texts: Sequence[str] | None = None, tgt_texts: Sequence[str] | None = None,
         eval_text: bool = False, backend: str = "auto") -> tuple[int, int]:
    """Number of xsim errors and number of source sentences.

    Args:
        src_emb: (n, D) source embeddings, numpy or torch, any float dtype (used as float32).
        tgt_emb: (m, D) target embeddings with ``m >= n``; row ``i < n`` is the gold translation of
            source ``i``, rows ``n..m-1`` are extra candidates (xsim++ hard negatives).
        k: neighbourhood size of the margin (LASER: 4). Unused by ``margin="absolute"``.
        margin: ``"ratio"`` (default), ``"distance"`` or ``"absolute"``.
        src_texts: the source sentences; optional, only checked for length (LASER's text mode
            compares target texts only).
        tgt_texts: the m target sentences; required when ``eval_text`` is true.
        eval_text: compare the chosen target's text with the gold target's text instead of
            comparing indices.
        backend: ``"auto"`` (faiss when importable, else torch), ``"faiss"`` or ``"torch"``;
            both give the same neighbours. faiss runs on GPU when it sees one; torch runs on the
            device of ``src_emb`` when that is a tensor, else on CPU.

    Returns:
        ``(errors, n)`` as Python ints.

    Raises:
        ValueError: on malformed shapes, texts or options.
    """
    n_src = _num_rows(src_emb, "src_emb")
    n_tgt = _num_rows(tgt_emb, "tgt_emb")
    if src_texts is not None and len(src_texts) != n_src:
        raise ValueError(f"src_texts has {len(src_texts)} sentences but src_emb has {n_src} rows")
    if tgt_texts is not None and len(tgt_texts) != n_tgt:
        raise ValueError(f"tgt_texts has {len(tgt_texts)} sentences but tgt_emb has {n_tgt} rows")
    if eval_text and tgt_texts is None:
        raise ValueError("eval_text=True needs tgt_texts (the target sentences)")

    chosen = margin_nn(src_emb, tgt_emb, k, margin, backend=backend)  # (n,)
    if eval_text:
        assert tgt_texts is not None
        err = sum(tgt_texts[int(c)] != tgt_texts[i] for i, c in enumerate(chosen))
    else:
        err = int(np.count_nonzero(chosen != np.arange(n_src)))
    return int(err), n_src


def xsim_error_rate(src_emb: Any, tgt_emb: Any, k: int = 4, margin: str = "ratio", *,
                    src_texts: Sequence[str] | None = None,
                    tgt_texts: Sequence[str] | None = None, eval_text: bool = False,
                    backend: str = "auto") -> float:
    """xsim error rate in percent: ``100 * errors / n`` (see :func:`xsim` for the arguments)."""
    err, n = xsim(src_emb, tgt_emb, k, margin, src_texts=src_texts, tgt_texts=tgt_texts,
                  eval_text=eval_text, backend=backend)
    return 100.0 * err / n


def margin_nn(src_emb: Any, tgt_emb: Any, k: int = 4, margin: str = "ratio", *,
              backend: str = "auto") -> np.ndarray:
    """Index of the target each source picks under the xsim margin: (n,) int64.

    The building block of :func:`xsim`; useful on its own to see *which* target was chosen
    (e.g. the error type of an xsim++ hard negative).
    """
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; choose one of {', '.join(MARGINS)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    x, device = _as_matrix(src_emb, "src_emb")
    y, _ = _as_matrix(tgt_emb, "tgt_emb")
    n_src, n_tgt = x.shape[0], y.shape[0]
    if n_src == 0:
        raise ValueError("src_emb has no rows")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding sizes differ: src_emb is {x.shape}, tgt_emb is {y.shape}")
    if n_tgt < n_src:
        raise ValueError(f"tgt_emb has {n_tgt} rows, fewer than the {n_src} of src_emb: target i "
                         f"must be the gold translation of source i (extra targets go after them)")
    if margin != "absolute" and k > n_src:
        raise ValueError(f"k={k} is larger than the number of sentences ({n_src})")
    knn = _knn_backend(backend, device)
    x, y = _l2_normalize(x), _l2_normalize(y)

    if margin == "absolute":
        _, idx = knn(x, y, 1)
        return idx[:, 0]

    cos_xy, idx_xy = knn(x, y, k)  # (n, k): each source's k nearest targets
    cos_yx, _ = knn(y, x, k)  # (m, k): each target's k nearest sources
    avg_x = cos_xy.mean(axis=1)  # (n,)
    avg_y = cos_yx.mean(axis=1)  # (m,)
    denom = (avg_x[:, None] + avg_y[idx_xy]) / 2  # (n, k): only the k candidates are rescored
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = cos_xy / denom if margin == "ratio" else cos_xy - denom
    best = scores.argmax(axis=1)  # (n,)
    return idx_xy[np.arange(n_src), best]


# --------------------------------------------------------------------------- internals


def _num_rows(x: Any, name: str) -> int:
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D (sentences, dim) matrix, got shape {tuple(shape)}")
    return int(shape[0])


def _as_matrix(x: Any, name: str) -> tuple[np.ndarray, Any]:
    """float32 C-contiguous numpy copy of ``x`` and the torch device it came from (or None)."""
    device = None
    torch = sys.modules.get("torch")  # if torch was never imported, x cannot be a tensor
    if torch is not None and isinstance(x, torch.Tensor):
        device = x.device
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (sentences, dim) matrix, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has embedding size 0")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr, device


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise l2 normalisation into a new array (LASER normalises in place; we never mutate
    the caller's embeddings). All-zero rows stay zero, as with ``faiss.normalize_L2``."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def _knn_backend(backend: str, device: Any) -> KnnFn:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("auto", "faiss"):
        try:
            import faiss  # noqa: F401
        except ImportError:
            if backend == "faiss":
                raise ImportError("xsim backend='faiss' needs faiss: pip install faiss-cpu "
                                  "(or faiss-gpu-cu12)") from None
        else:
            return _knn_faiss
    return lambda q, b, k: _knn_torch(q, b, k, device)


def _knn_faiss(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN with faiss ``IndexFlatIP`` (on GPU 0 when faiss sees a GPU)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    resources = None
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        resources = faiss.StandardGpuResources()  # must outlive the search
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    index.add(base)
    sims, ids = index.search(query, k)
    del resources
    return sims, ids.astype(np.int64)


def _knn_torch(query: np.ndarray, base: np.ndarray, k: int,
               device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN with ``torch.topk`` over blocks of the similarity matrix."""
    import torch

    device = device if device is not None else "cpu"
    b = torch.from_numpy(base).to(device)  # (m, D)
    sims, ids = [], []
    with torch.no_grad():
        for start in range(0, query.shape[0], _TORCH_CHUNK):
            q = torch.from_numpy(query[start:start + _TORCH_CHUNK]).to(device)  # (c, D)
            s, i = torch.topk(q @ b.T, k, dim=1, largest=True, sorted=True)  # (c, k)
            sims.append(s.cpu().numpy())
            ids.append(i.cpu().numpy())
    return np.concatenate(sims), np.concatenate(ids).astype(np.int64)
