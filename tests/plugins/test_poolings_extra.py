"""Weighted-mean (MEXA) and last-token poolings against hand computations on padded batches."""

from __future__ import annotations

import warnings

import pytest
import torch

from clse.plugins import registry, reset_registry
from clse_plugins.last_token_pooling import last_token_pool
from clse_plugins.weighted_mean_pooling import weighted_mean_pool

_LENGTHS = [5, 3, 1, 4]


def _batch(left: bool = False):
    """Ragged batch; padding states are huge so any leak shows."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.zeros(4, 5, dtype=torch.long)
    for i, n in enumerate(_LENGTHS):
        if left:
            mask[i, 5 - n:] = 1
        else:
            mask[i, :n] = 1
    hidden[mask == 0] = 1e6
    return hidden, mask


def _real(hidden, mask, i):
    return [hidden[i, t] for t in range(hidden.shape[1]) if mask[i, t]]


@pytest.mark.parametrize("left", [False, True])
def test_weighted_mean_by_hand(left):
    hidden, mask = _batch(left)
    got = weighted_mean_pool(hidden, mask)
    assert got.shape == (4, 3)
    for i, n in enumerate(_LENGTHS):
        states = _real(hidden, mask, i)
        for d in range(3):
            want = sum((t + 1) * states[t][d].item() for t in range(n)) / sum(range(1, n + 1))
            assert got[i, d].item() == pytest.approx(want, rel=1e-12)


def test_weighted_mean_ignores_padding_side_and_grads():
    right, mask_r = _batch(False)
    left, mask_l = _batch(True)
    for i, n in enumerate(_LENGTHS):  # the same real tokens on both sides
        left[i, 5 - n:] = right[i, :n]
    assert torch.allclose(weighted_mean_pool(right, mask_r), weighted_mean_pool(left, mask_l),
                          rtol=1e-12)
    right.requires_grad_()
    weighted_mean_pool(right, mask_r.bool()).sum().backward()
    assert torch.all(right.grad[mask_r == 0] == 0)
    want = torch.tensor([1, 2, 3], dtype=torch.float64) / 6  # row 1: 3 tokens, weights 1, 2, 3
    assert torch.allclose(right.grad[1, :3], want[:, None].expand(3, 3))


@pytest.mark.parametrize("left", [False, True])
def test_last_token_by_hand(left):
    hidden, mask = _batch(left)
    got = last_token_pool(hidden, mask)
    assert got.shape == (4, 3)
    for i, n in enumerate(_LENGTHS):
        assert torch.equal(got[i], hidden[i, 4 if left else n - 1])
    hidden.requires_grad_()
    last_token_pool(hidden, mask.bool()).sum().backward()
    assert hidden.grad.sum().item() == pytest.approx(4 * 3)


def test_registry_finds_extra_poolings():
    reset_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other, unrelated entry points may be missing
        reg = registry()
    hidden, mask = _batch()
    for name, fn in [("weighted_mean", weighted_mean_pool), ("last_token", last_token_pool)]:
        spec = reg.get("pooling", name)
        assert spec.config().name == name and spec.description
        pooling = reg.build("pooling", {"name": name})
        assert torch.equal(pooling(hidden, mask), fn(hidden, mask))
    reset_registry()
