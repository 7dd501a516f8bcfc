"""Built-in losses against independent float64 loops of their formulas (DESIGN.md §3)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from clse.losses import info_nce, koleo, mse_alignment
from clse.plugins import registry, reset_registry
from clse_plugins.none import NoneAlignment, NoneRegularizer


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- references (python loops)

def _ref_mse(a: np.ndarray, b: np.ndarray) -> float:
    total = sum((a[i, d] - b[i, d]) ** 2 for i in range(a.shape[0]) for d in range(a.shape[1]))
    return total / a.size


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (math.sqrt(u @ u) * math.sqrt(v @ v)))


def _ref_info_nce(a, b, tau, symmetric, skip=frozenset()):
    """Mean over anchors of −log softmax of the positive; (i, j) in ``skip`` are no negatives."""
    n = a.shape[0]
    s = [[_cos(a[i], b[j]) / tau for j in range(n)] for i in range(n)]

    def direction(get):
        total = 0.0
        for i in range(n):
            terms = [get(i, j) for j in range(n) if j == i or (i, j) not in skip]
            total += -(get(i, i) - math.log(sum(math.exp(t) for t in terms)))
        return total / n

    fwd = direction(lambda i, j: s[i][j])
    if not symmetric:
        return fwd
    return (fwd + direction(lambda i, j: s[j][i])) / 2


def _ref_koleo(x: np.ndarray, eps: float = 1e-8) -> float:
    """Brute force over the distinct rows: explicit pairwise distances, nearest other point."""
    distinct: list[np.ndarray] = []
    for row in x:
        if not any(np.array_equal(row, r) for r in distinct):
            distinct.append(row)
    z = [r / math.sqrt(float(r @ r)) for r in distinct]
    logs = []
    for i in range(len(z)):
        d = min(math.sqrt(sum((z[i][k] - z[j][k]) ** 2 for k in range(len(z[i]))))
                for j in range(len(z)) if j != i)
        logs.append(math.log(d + eps))
    return -sum(logs) / len(logs)


def _assert_grads(*xs: torch.Tensor) -> None:
    for x in xs:
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0


# ---------------------------------------------------------------- MSE

def test_mse_matches_loop_and_torch():
    a, b = _rand(5, 7, seed=1), _rand(5, 7, seed=2) * 3
    got = mse_alignment(a, b)
    assert got.item() == pytest.approx(_ref_mse(a.numpy(), b.numpy()), rel=1e-12)
    assert torch.allclose(got, torch.nn.functional.mse_loss(a, b))


def test_mse_gradients():
    a, b = _rand(4, 3, seed=3).requires_grad_(), _rand(4, 3, seed=4).requires_grad_()
    mse_alignment(a, b).backward()
    _assert_grads(a, b)


# ---------------------------------------------------------------- InfoNCE

@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_info_nce_matches_loop(symmetric, tau):
    a, b = _rand(6, 5, seed=5), _rand(6, 5, seed=6)
    got = info_nce(a, b, temperature=tau, symmetric=symmetric)
    want = _ref_info_nce(a.numpy(), b.numpy(), tau, symmetric)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_info_nce_symmetric_is_mean_of_directions():
    a, b = _rand(6, 5, seed=7), _rand(6, 5, seed=8)
    fwd = info_nce(a, b, symmetric=False)
    bwd = info_nce(b, a, symmetric=False)
    assert not torch.allclose(fwd, bwd)
    assert torch.allclose(info_nce(a, b, symmetric=True), (fwd + bwd) / 2)


def test_info_nce_temperature_changes_loss():
    a, b = _rand(6, 5, seed=9), _rand(6, 5, seed=10)
    assert not torch.allclose(info_nce(a, b, temperature=0.05), info_nce(a, b, temperature=0.5))


def test_info_nce_is_scale_invariant():  # cosine: the vectors' norms do not matter
    a, b = _rand(6, 5, seed=11), _rand(6, 5, seed=12)
    assert torch.allclose(info_nce(a, b), info_nce(a * 3, b * 0.5))


def test_info_nce_duplicate_pair_is_not_a_negative():
    a, b = _rand(6, 5, seed=13), _rand(6, 5, seed=14)
    a[4], b[4] = a[1], b[1]  # the pair (A1, B1) appears twice
    skip = frozenset({(1, 4), (4, 1)})
    got = info_nce(a, b, temperature=0.1)
    assert got.item() == pytest.approx(_ref_info_nce(a.numpy(), b.numpy(), 0.1, True, skip),
                                       rel=1e-10)
    # and the duplicate's logit would have counted without the mask
    unmasked = _ref_info_nce(a.numpy(), b.numpy(), 0.1, True)
    assert got.item() < unmasked - 1e-3


def test_info_nce_duplicate_on_one_side_only():
    a, b = _rand(6, 5, seed=15), _rand(6, 5, seed=16)
    b[5] = b[2]  # the same target sentence twice, different sources
    skip = frozenset({(2, 5), (5, 2)})
    got = info_nce(a, b, temperature=0.2, symmetric=False)
    want = _ref_info_nce(a.numpy(), b.numpy(), 0.2, False, skip)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_info_nce_group_ids_mask():
    a, b = _rand(6, 5, seed=17), _rand(6, 5, seed=18)
    groups = torch.tensor([0, 1, 2, 0, 3, 1])
    skip = frozenset({(0, 3), (3, 0), (1, 5), (5, 1)})
    got = info_nce(a, b, temperature=0.1, group_ids=groups)
    assert got.item() == pytest.approx(_ref_info_nce(a.numpy(), b.numpy(), 0.1, True, skip),
                                       rel=1e-10)


def test_info_nce_gradients():
    a, b = _rand(6, 5, seed=19), _rand(6, 5, seed=20)
    a[3], b[3] = a[0], b[0]
    a.requires_grad_(), b.requires_grad_()
    info_nce(a, b).backward()
    _assert_grads(a, b)


def test_info_nce_under_bf16_autocast_is_finite():
    a, b = _rand(8, 16, seed=21).bfloat16(), _rand(8, 16, seed=22).bfloat16()
    a[5], b[5] = a[2], b[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = info_nce(a, b)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- KoLeo

def test_koleo_matches_brute_force():
    x = _rand(7, 4, seed=23)
    got = koleo(x)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_ref_koleo(x.numpy()), rel=1e-5)


def test_koleo_exact_duplicates_are_one_point():
    x = _rand(6, 4, seed=24)
    x[4] = x[1]
    x[5] = x[1]
    got = koleo(x)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(_ref_koleo(x.numpy()), rel=1e-5)
    assert got.item() == pytest.approx(koleo(x[:4]).item(), rel=1e-6)


def test_koleo_duplicates_gradients_finite():
    x = _rand(6, 4, seed=25)
    x[3] = x[0]
    x.requires_grad_()
    koleo(x).backward()
    _assert_grads(x)


def test_koleo_all_identical_is_zero_with_grad():
    x = _rand(1, 4, seed=26).repeat(3, 1).requires_grad_()
    loss = koleo(x)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_koleo_fp32_under_bf16_autocast():
    x = _rand(16, 32, seed=27).bfloat16()
    x[7] = x[3]
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = koleo(x)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(koleo(x.detach().float()).item(), rel=1e-6)
    loss.backward()
    assert x.grad.dtype == torch.bfloat16
    _assert_grads(x)


# ---------------------------------------------------------------- none

def test_none_keeps_the_graph():
    a, b = _rand(3, 4, seed=28).requires_grad_(), _rand(3, 4, seed=29).requires_grad_()
    for loss in (NoneAlignment()(a, b), NoneRegularizer()(a)):
        assert loss.dim() == 0 and loss.item() == 0.0 and loss.requires_grad
        loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))


# ---------------------------------------------------------------- registry

@pytest.fixture
def reg():
    reset_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other, unrelated entry points may be missing
        yield registry()
    reset_registry()


@pytest.mark.parametrize("kind,name", [
    ("alignment", "mse"), ("alignment", "contrastive"), ("alignment", "info_nce"),
    ("alignment", "none"), ("regularizer", "koleo"), ("regularizer", "none"),
])
def test_registry_builds_losses_with_weight(reg, kind, name):
    spec = reg.get(kind, name)
    assert spec.kind == kind and spec.description
    assert spec.config().name == name
    component = reg.build(kind, {"name": name})
    assert isinstance(component.weight, float)
    x, y = _rand(4, 3, seed=30), _rand(4, 3, seed=31)
    out = component(x, y) if kind == "alignment" else component(x)
    assert out.dim() == 0 and torch.isfinite(out)


def test_registry_passes_options(reg):
    a, b = _rand(5, 3, seed=32), _rand(5, 3, seed=33)
    c = reg.build("alignment", {"name": "contrastive", "temperature": 0.1, "symmetric": False,
                                "weight": 0.5})
    assert c.weight == 0.5
    assert torch.allclose(c(a, b), info_nce(a, b, temperature=0.1, symmetric=False))
    alias = reg.build("alignment", {"name": "info_nce", "temperature": 0.1})
    assert torch.allclose(alias(a, b), info_nce(a, b, temperature=0.1))
    assert reg.build("regularizer", {"name": "koleo"}).weight == 0.01
    assert reg.build("alignment", {"name": "mse", "weight": 2.0}).weight == 2.0
