"""Gradient caching against the plain forward/backward: same loss, same parameter gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clse.errors import ConfigError
from clse.interfaces import Views
from clse.train import grad_cache
from clse.train.grad_cache import batch_encoder, grad_cache_backward
from clse_plugins.additive_margin import AdditiveMarginAlignment
from clse_plugins.contrastive import info_nce
from clse_plugins.koleo import KoleoRegularizer
from clse_plugins.mean_pooling import MeanPooling
from tests.conftest import random_batch, tiny_xlmr

B = 7  # ragged rows (row r is r tokens shorter), so later chunks are trimmed


def _model(dropout: float) -> nn.Module:
    model = tiny_xlmr()
    for module in model.modules():  # hidden and attention dropout (sdpa reads .p too)
        if isinstance(module, nn.Dropout):
            module.p = dropout
    return model.train()


def _info_nce(a, b):
    loss = info_nce(a, b, temperature=0.05)
    return loss, {"alignment": loss}


def _margin_koleo(a, b):  # additive margin + KoLeo, weighted as the loop does
    align = AdditiveMarginAlignment(scale=20.0, margin=0.3)(a, b)
    reg = (KoleoRegularizer()(a) + KoleoRegularizer()(b)) / 2
    return align + 0.5 * reg, {"alignment": align, "regularizer": reg}


LOSSES = {"info_nce": _info_nce, "margin_koleo": _margin_koleo}


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def _plain(model, batch, loss_fn, scale=1.0):
    """The loop's path for a dual encoder: one full-batch forward per side, then backward."""
    views = Views(batch, model, MeanPooling(), torch.Generator().manual_seed(0))
    loss, terms = loss_fn(views.sentence("a"), views.sentence("b"))
    (loss * scale).backward()
    return loss.detach(), _grads(model)


def _chunked(encode, chunk, loss_fn):
    """The same chunks encoded once with a graph (what gradient caching must reproduce)."""
    rows = [slice(i, i + chunk) for i in range(0, B, chunk)]
    a = torch.cat([encode("a", r) for r in rows])
    b = torch.cat([encode("b", r) for r in rows])
    loss, _ = loss_fn(a, b)
    loss.backward()
    return loss.detach()


def _assert_same_grads(got, want, atol=1e-5):
    assert got.keys() == want.keys()
    for name in want:
        assert (got[name] is None) == (want[name] is None), name
        if want[name] is not None:
            torch.testing.assert_close(got[name], want[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("chunk", [2, 3])
def test_equals_chunked_backward_with_dropout(chunk, loss_name):
    model, batch, loss_fn = _model(0.1), random_batch(B, len_a=12, len_b=10), LOSSES[loss_name]
    encode = batch_encoder(batch, model, MeanPooling())
    torch.manual_seed(1)
    want_loss = _chunked(encode, chunk, loss_fn)
    want, want_rng = _grads(model), torch.get_rng_state()

    torch.manual_seed(1)
    loss, terms = grad_cache_backward(encode, B, chunk, loss_fn)
    torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=0)
    assert not loss.requires_grad and all(not t.requires_grad for t in terms.values())
    _assert_same_grads(_grads(model), want)
    # the RNG ends where one encoding of the batch leaves it (later steps draw the same numbers)
    assert torch.equal(torch.get_rng_state(), want_rng)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("chunk", [2, 3])
def test_equals_full_batch_without_dropout(chunk, loss_name):
    """No dropout: the chunked, trimmed passes equal the loop's full-batch forward."""
    model, batch, loss_fn = _model(0.0), random_batch(B, len_a=12, len_b=10), LOSSES[loss_name]
    want_loss, want = _plain(model, batch, loss_fn)
    loss, _ = grad_cache_backward(batch_encoder(batch, model, MeanPooling()), B, chunk, loss_fn)
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
    _assert_same_grads(_grads(model), want)


def test_without_rng_replay_the_gradients_differ(monkeypatch):
    """Guards the test above: it is the dropout replay that makes the gradients exact."""
    model, batch = _model(0.1), random_batch(B, len_a=12, len_b=10)
    encode = batch_encoder(batch, model, MeanPooling())
    torch.manual_seed(1)
    _chunked(encode, 3, _info_nce)
    want = _grads(model)
    monkeypatch.setattr(grad_cache, "_REPLAY_RNG", False)
    torch.manual_seed(1)
    grad_cache_backward(encode, B, 3, _info_nce)
    got = _grads(model)
    worst = max((got[n] - want[n]).abs().max().item() for n in want if want[n] is not None)
    assert worst > 1e-3


@pytest.mark.parametrize("chunk", [B, B + 5])
def test_one_chunk_is_the_plain_path(chunk):
    model, batch = _model(0.1), random_batch(B, len_a=12, len_b=10)
    torch.manual_seed(1)
    want_loss, want = _plain(model, batch, _margin_koleo)
    torch.manual_seed(1)
    loss, _ = grad_cache_backward(batch_encoder(batch, model, MeanPooling()), B, chunk,
                                  _margin_koleo)
    torch.testing.assert_close(loss, want_loss, atol=0, rtol=0)
    _assert_same_grads(_grads(model), want, atol=0)


@pytest.mark.parametrize("chunk", [0, -2, 2.5, True])
def test_bad_chunk_size_is_a_config_error(chunk):
    with pytest.raises(ConfigError, match="trainer.grad_cache_chunk"):
        grad_cache_backward(lambda side, rows: None, B, chunk, _info_nce)


def test_scale_float_callable_and_grad_scaler():
    model, batch = _model(0.0), random_batch(B, len_a=12, len_b=10)
    encode = batch_encoder(batch, model, MeanPooling())
    _, want = _plain(model, batch, _info_nce)
    grad_cache_backward(encode, B, 3, _info_nce, scale=0.25)
    _assert_same_grads(_grads(model), {n: g * 0.25 for n, g in want.items()})
    grad_cache_backward(encode, B, 3, _info_nce, scale=lambda loss: loss * 4)
    _assert_same_grads(_grads(model), {n: g * 4 for n, g in want.items()}, atol=4e-5)
    # the documented GradScaler use: scale() is called, so unscale_ works and yields grads / accum
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grad_cache_backward(encode, B, 3, _info_nce, scale=lambda loss: scaler.scale(loss / 2))
    scaler.unscale_(optimizer)
    _assert_same_grads(_grads(model), {n: g / 2 for n, g in want.items()})


def test_autocast_context_reaches_both_passes():
    """bf16 autocast through ``context``: the re-forward runs under it too, so it matches."""
    model, batch = _model(0.1), random_batch(B, len_a=12, len_b=10)
    encode = batch_encoder(batch, model, MeanPooling())
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    torch.manual_seed(1)
    with bf16():
        rows = [slice(i, i + 3) for i in range(0, B, 3)]
        a = torch.cat([encode("a", r) for r in rows])
        b = torch.cat([encode("b", r) for r in rows])
        want_loss, _ = _info_nce(a, b)
    want_loss.backward()
    want = _grads(model)
    torch.manual_seed(1)
    loss, _ = grad_cache_backward(encode, B, 3, _info_nce, context=bf16)
    torch.testing.assert_close(loss, want_loss.detach(), atol=1e-6, rtol=0)
    # bf16 rounding (~5e-4 here): the reference's chunks share one cached bf16 weight cast and sum
    # their weight gradients in bf16; each re-forward has its own autocast region, summed in fp32
    _assert_same_grads(_grads(model), want, atol=2e-3)


def test_trimming_keeps_the_vectors():
    model, batch = _model(0.0).eval(), random_batch(B, len_a=12, len_b=10)
    trimmed = batch_encoder(batch, model, MeanPooling())
    padded = batch_encoder(batch, model, MeanPooling(), trim=False)
    with torch.no_grad():
        for side in ("a", "b"):
            torch.testing.assert_close(trimmed(side, slice(4, 7)), padded(side, slice(4, 7)),
                                       atol=1e-5, rtol=1e-5)
