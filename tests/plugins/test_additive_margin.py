"""LaBSE additive margin softmax against an independent float64 loop (DESIGN.md §3)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from clse.losses import additive_margin, info_nce
from clse.plugins import registry, reset_registry


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _cos(u, v) -> float:
    return float(u @ v / (math.sqrt(u @ u) * math.sqrt(v @ v)))


def _ref_additive_margin(a, b, scale, margin, skip=frozenset()):
    """Sum over both directions of the mean −log softmax of the positive; (i, j) in ``skip``
    are no negatives. The margin is subtracted from the positive's cosine only."""
    n = a.shape[0]
    s = [[scale * (_cos(a[i], b[j]) - (margin if i == j else 0.0)) for j in range(n)]
         for i in range(n)]

    def direction(get):
        total = 0.0
        for i in range(n):
            terms = [get(i, j) for j in range(n) if j == i or (i, j) not in skip]
            total += -(get(i, i) - math.log(sum(math.exp(t) for t in terms)))
        return total / n

    return direction(lambda i, j: s[i][j]) + direction(lambda i, j: s[j][i])


@pytest.mark.parametrize("scale,margin", [(100.0, 0.3), (20.0, 0.0), (5.0, 0.5)])
def test_additive_margin_matches_loop(scale, margin):
    a, b = _rand(6, 5, seed=1), _rand(6, 5, seed=2)
    got = additive_margin(a, b, scale=scale, margin=margin)
    want = _ref_additive_margin(a.numpy(), b.numpy(), scale, margin)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("scale", [1.0, 20.0, 100.0])
def test_zero_margin_is_twice_symmetric_info_nce(scale):
    a, b = _rand(7, 4, seed=3), _rand(7, 4, seed=4)
    got = additive_margin(a, b, scale=scale, margin=0.0)
    want = 2 * info_nce(a, b, temperature=1 / scale, symmetric=True)
    assert torch.allclose(got, want, rtol=1e-12)


def test_margin_increases_loss():
    a, b = _rand(6, 5, seed=5), _rand(6, 5, seed=6)
    losses = [additive_margin(a, b, scale=20.0, margin=m).item() for m in (0.0, 0.1, 0.3)]
    assert losses[0] < losses[1] < losses[2]


def test_duplicates_are_not_negatives():
    a, b = _rand(6, 5, seed=7), _rand(6, 5, seed=8)
    a[4], b[4] = a[1], b[1]  # the pair (A1, B1) twice
    b[5] = b[2]  # one target sentence twice, different sources
    skip = frozenset({(1, 4), (4, 1), (2, 5), (5, 2)})
    got = additive_margin(a, b, scale=10.0, margin=0.3)
    want = _ref_additive_margin(a.numpy(), b.numpy(), 10.0, 0.3, skip)
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert got.item() < _ref_additive_margin(a.numpy(), b.numpy(), 10.0, 0.3) - 1e-3


def test_group_ids_mask():
    a, b = _rand(6, 5, seed=9), _rand(6, 5, seed=10)
    groups = torch.tensor([0, 1, 2, 0, 3, 1])
    skip = frozenset({(0, 3), (3, 0), (1, 5), (5, 1)})
    got = additive_margin(a, b, scale=10.0, margin=0.2, group_ids=groups)
    want = _ref_additive_margin(a.numpy(), b.numpy(), 10.0, 0.2, skip)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_gradients():
    a, b = _rand(6, 5, seed=11), _rand(6, 5, seed=12)
    a[3], b[3] = a[0], b[0]
    a.requires_grad_(), b.requires_grad_()
    additive_margin(a, b).backward()
    for x in (a, b):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        additive_margin(_rand(4, 3), _rand(5, 3))


def test_registry_builds_additive_margin():
    reset_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other, unrelated entry points may be missing
        reg = registry()
    spec = reg.get("alignment", "additive_margin")
    cfg = spec.config()
    assert (cfg.name, cfg.weight, cfg.scale, cfg.margin) == ("additive_margin", 1.0, 100.0, 0.3)
    assert spec.description
    a, b = _rand(5, 3, seed=13), _rand(5, 3, seed=14)
    c = reg.build("alignment", {"name": "additive_margin", "scale": 30, "margin": 0.1,
                                "weight": 0.5})
    assert c.weight == 0.5 and isinstance(c.weight, float)
    assert torch.allclose(c(a, b), additive_margin(a, b, scale=30.0, margin=0.1))
    reset_registry()
