"""Built-in poolings against hand computations on padded batches."""

from __future__ import annotations

import warnings

import pytest
import torch

from clse.plugins import registry, reset_registry
from clse_plugins.cls_pooling import cls_pool
from clse_plugins.mean_pooling import mean_pool


def _batch():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    hidden[mask == 0] = 1e6  # padding states must not leak into the result
    return hidden, mask


def test_mean_pooling_by_hand():
    hidden, mask = _batch()
    got = mean_pool(hidden, mask)
    assert got.shape == (3, 4)
    for i, n in enumerate([5, 3, 1]):
        for d in range(4):
            want = sum(hidden[i, t, d].item() for t in range(n)) / n
            assert got[i, d].item() == pytest.approx(want, rel=1e-12)


def test_mean_pooling_gradients_skip_padding():
    hidden, mask = _batch()
    hidden.requires_grad_()
    mean_pool(hidden, mask).sum().backward()
    assert torch.all(hidden.grad[mask == 0] == 0)
    assert torch.allclose(hidden.grad[1, :3], torch.full((3, 4), 1 / 3, dtype=torch.float64))


def test_mean_pooling_bf16_and_bool_mask():
    hidden, mask = _batch()
    hidden[mask == 0] = 0
    got = mean_pool(hidden.bfloat16(), mask.bool())
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.double(), mean_pool(hidden, mask), atol=3e-2)


def test_cls_pooling_is_position_zero():
    hidden, mask = _batch()
    got = cls_pool(hidden, mask)
    for i in range(3):
        assert torch.equal(got[i], hidden[i, 0])


def test_registry_finds_poolings():
    reset_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other, unrelated entry points may be missing
        reg = registry()
    hidden, mask = _batch()
    for name, fn in [("cls", cls_pool), ("mean", mean_pool)]:
        assert reg.get("pooling", name).config().name == name
        pooling = reg.build("pooling", {"name": name})
        assert torch.equal(pooling(hidden, mask), fn(hidden, mask))
    reset_registry()
