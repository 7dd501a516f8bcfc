"""xsim against a brute-force transcription of LASER's definition (source/xsim.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from clse.eval import xsim, xsim_error_rate
from clse.eval.xsim import margin_nn

MARGINS = ["ratio", "distance", "absolute"]


def brute_force_choice(src: np.ndarray, tgt: np.ndarray, k: int, margin: str) -> np.ndarray:
    """LASER's procedure with explicit loops: the target index each source picks."""
    x = src / np.linalg.norm(src, axis=1, keepdims=True)
    y = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
    n, m = len(x), len(y)
    cos = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            cos[i, j] = float(np.dot(x[i].astype(np.float64), y[j].astype(np.float64)))
    if margin == "absolute":
        return np.array([int(np.argmax(cos[i])) for i in range(n)])
    knn_x = [list(np.argsort(-cos[i], kind="stable")[:k]) for i in range(n)]  # targets of x_i
    avg_x = [np.mean([cos[i, j] for j in knn_x[i]]) for i in range(n)]
    avg_y = [np.mean(sorted(cos[:, j], reverse=True)[:k]) for j in range(m)]  # sources of y_j
    choice = []
    for i in range(n):
        best, best_score = -1, -np.inf
        for j in knn_x[i]:  # only the k forward candidates are rescored
            b = (avg_x[i] + avg_y[j]) / 2
            score = cos[i, j] / b if margin == "ratio" else cos[i, j] - b
            if score > best_score:
                best, best_score = j, score
        choice.append(best)
    return np.array(choice)


def noisy_pairs(n: int = 120, d: int = 24, extra: int = 0, seed: int = 0):
    """Targets = sources + noise of growing size: early rows are found, late rows are not."""
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((n, d)).astype(np.float32)
    noise = rng.standard_normal((n, d)).astype(np.float32) * np.linspace(0.05, 2.5, n)[:, None]
    tgt = (src + noise).astype(np.float32)
    if extra:  # xsim++-style distractors: perturbed copies of some gold targets, appended
        rows = rng.integers(0, n, extra)
        distract = tgt[rows] + 0.6 * rng.standard_normal((extra, d)).astype(np.float32)
        tgt = np.concatenate([tgt, distract.astype(np.float32)])
    return src, tgt


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("extra", [0, 60])
def test_matches_brute_force(margin, extra):
    src, tgt = noisy_pairs(extra=extra)
    expected = brute_force_choice(src, tgt, 4, margin)
    n_err = int((expected != np.arange(len(src))).sum())
    assert 0 < n_err < len(src)  # the case is informative: some errors, some hits
    np.testing.assert_array_equal(margin_nn(src, tgt, 4, margin), expected)
    assert xsim(src, tgt, k=4, margin=margin) == (n_err, len(src))
    assert xsim_error_rate(src, tgt, k=4, margin=margin) == pytest.approx(100 * n_err / len(src))


@pytest.mark.parametrize("k", [1, 2, 7])
def test_other_k_match_brute_force(k):
    src, tgt = noisy_pairs(n=80, extra=20, seed=3)
    np.testing.assert_array_equal(margin_nn(src, tgt, k, "ratio"),
                                  brute_force_choice(src, tgt, k, "ratio"))


def test_margins_differ_on_a_hub():
    """A target close to every source (a hub) fools plain cosine but not the ratio margin."""
    rng = np.random.default_rng(1)
    n, d = 40, 16
    src = rng.standard_normal((n, d)).astype(np.float32)
    tgt = (src + 0.9 * rng.standard_normal((n, d))).astype(np.float32)
    tgt[-1] = src.mean(axis=0) * 6 + 0.2 * src[-1]  # hub: close to all sources
    err_abs, _ = xsim(src, tgt, margin="absolute")
    err_ratio, _ = xsim(src, tgt, margin="ratio")
    assert err_ratio < err_abs


def test_backends_agree_and_accept_torch():
    src, tgt = noisy_pairs(n=300, d=32, extra=100, seed=5)
    for margin in MARGINS:
        a = margin_nn(src, tgt, 4, margin, backend="faiss")
        b = margin_nn(src, tgt, 4, margin, backend="torch")
        np.testing.assert_array_equal(a, b)
        c = margin_nn(torch.from_numpy(src).double(), torch.from_numpy(tgt), 4, margin)
        np.testing.assert_array_equal(a, c)


def test_torch_backend_in_chunks(monkeypatch):
    import clse.eval.xsim  # noqa: F401  (the package attribute is the function; use sys.modules)

    mod = sys.modules["clse.eval.xsim"]
    src, tgt = noisy_pairs(n=50, extra=10)
    whole = margin_nn(src, tgt, backend="torch")
    monkeypatch.setattr(mod, "_TORCH_CHUNK", 7)
    np.testing.assert_array_equal(margin_nn(src, tgt, backend="torch"), whole)


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    src, tgt = noisy_pairs(n=60)
    expected = xsim(src, tgt, backend="faiss")
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    assert xsim(src, tgt) == expected
    with pytest.raises(ImportError, match="faiss"):
        xsim(src, tgt, backend="faiss")


def test_inputs_are_not_modified():
    src, tgt = noisy_pairs(n=30)
    before = src.copy(), tgt.copy()
    xsim(src, tgt)
    np.testing.assert_array_equal(src, before[0])
    np.testing.assert_array_equal(tgt, before[1])


def test_text_mode_forgives_duplicate_targets():
    rng = np.random.default_rng(2)
    n, d = 20, 16
    src = rng.standard_normal((n, d)).astype(np.float32)
    tgt = (src + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    texts = [f"sentence {i}" for i in range(n)]
    src[1] = tgt[0] + 0.01  # source 1 now finds target 0 ...
    texts[1] = texts[0]  # ... whose text equals its gold target's text: not an error in text mode
    src[5] = tgt[6] + 0.01  # source 5 finds target 6, a different text: an error in both modes
    assert margin_nn(src, tgt)[[1, 5]].tolist() == [0, 6]
    assert xsim(src, tgt) == (2, n)
    assert xsim(src, tgt, tgt_texts=texts, eval_text=True) == (1, n)
    assert xsim(src, tgt, src_texts=texts, tgt_texts=texts) == (2, n)  # index mode by default


def test_perfect_and_identical_embeddings():
    src, _ = noisy_pairs(n=25)
    assert xsim(src, src) == (0, 25)
    assert xsim_error_rate(src, src, margin="distance") == 0.0


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.zeros((4, 3)), np.zeros((4, 5))), {}, "embedding sizes differ"),
    ((np.ones((5, 3)), np.ones((4, 3))), {}, "fewer than"),
    ((np.ones(5), np.ones((5, 3))), {}, "2-D"),
    ((np.ones((5, 3)), np.ones((5, 3, 1))), {}, "2-D"),
    ((np.ones((0, 3)), np.ones((0, 3))), {}, "no rows"),
    ((np.ones((3, 3)), np.ones((3, 3))), {"k": 4}, "larger than"),
    ((np.ones((5, 3)), np.ones((5, 3))), {"k": 0}, "positive"),
    ((np.ones((5, 3)), np.ones((5, 3))), {"margin": "cosine"}, "unknown margin"),
    ((np.ones((5, 3)), np.ones((5, 3))), {"backend": "annoy"}, "unknown backend"),
    ((np.ones((5, 3)), np.ones((5, 3))), {"eval_text": True}, "needs tgt_texts"),
    ((np.ones((5, 3)), np.ones((5, 3))), {"tgt_texts": ["a"] * 4}, "tgt_texts has 4"),
    ((np.ones((5, 3)), np.ones((5, 3))), {"src_texts": ["a"] * 6}, "src_texts has 6"),
    ((np.full((5, 3), np.nan), np.ones((5, 3))), {}, "NaN"),
])
def test_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        xsim(*args, **kwargs)


def test_absolute_ignores_k_bound():
    src, tgt = noisy_pairs(n=3)
    assert xsim(src, tgt, k=10, margin="absolute")[1] == 3
