"""Packed attention: identical hidden states, loss terms and gradients to the padded model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from clse.errors import ConfigError
from clse.interfaces import Views
from clse.model import packing
from clse_plugins.cls_pooling import ClsPooling
from tests.conftest import SPECIAL, VOCAB, random_batch, tiny_xlmr


def ragged(batch_size=5, length=11, seed=0):
    """Right-padded ids/mask with very different lengths (1 token .. full)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch_size, length), generator=g)
    lengths = [length, 1, 4, length - 3, 2][:batch_size]
    mask = torch.zeros(batch_size, length, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = SPECIAL["pad"]
        ids[row, 0] = SPECIAL["bos"]
    return ids, mask


def pair(dropout=0.0):
    """The same tiny model twice: stock SDPA, and switched to packed attention."""
    padded = tiny_xlmr(layers=3, heads=4, hidden=32)
    padded.config.hidden_dropout_prob = dropout
    packed_model = copy.deepcopy(padded)
    wrapper = packing.configure_packing(packed_model, mode="packed")
    return padded, packed_model, wrapper


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(g1, g2):
    assert g1.keys() == g2.keys() and g1
    # one scale for all: some gradients are exactly zero in theory (a key bias under softmax)
    scale = max(g.abs().max() for g in g1.values())
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-6 * scale, rtol=1e-4), name


def test_hidden_states_and_gradients_match_padded():
    padded, packed_model, wrapper = pair()
    ids, mask = ragged()
    h1 = padded(input_ids=ids, attention_mask=mask).last_hidden_state
    h2 = wrapper(ids, mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(h1[real], h2[real], atol=1e-5)
    assert (h2[~real] == 0).all()  # padding positions are zeros, not computed
    weights = torch.randn(h1.shape)
    (h1 * weights * mask[..., None]).sum().backward()
    (h2 * weights * mask[..., None]).sum().backward()
    assert_grads_close(grads(padded), grads(packed_model))


def test_no_attention_across_sentences():
    """Changing one sentence leaves every other sentence's states unchanged (positions too)."""
    _, _, wrapper = pair()
    wrapper.eval()
    ids, mask = ragged()
    changed = ids.clone()
    changed[0, 1:] = torch.randint(5, VOCAB, (ids.shape[1] - 1,))
    with torch.no_grad():
        h1, h2 = wrapper(ids, mask).last_hidden_state, wrapper(changed, mask).last_hidden_state
        alone = wrapper(ids[3:4, :int(mask[3].sum())], mask[3:4, :int(mask[3].sum())])
    assert not torch.allclose(h1[0], h2[0])
    assert torch.allclose(h1[1:], h2[1:], atol=1e-6)
    # a sentence packed among others = the same sentence encoded on its own
    assert torch.allclose(h1[3, :int(mask[3].sum())], alone.last_hidden_state[0], atol=1e-5)


def test_sdpa_blocks_against_a_loop_over_sentences():
    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 7, 5]
    q, k, v = (torch.randn(1, 2, sum(lengths), 8, generator=g) for _ in range(3))
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).int()
    out = packing._sdpa_blocks(q, k, v, cu, max(lengths), 0.0, 8 ** -0.5)  # (1, N, H, d)
    start = 0
    for n in lengths:
        s = slice(start, start + n)
        scores = q[0, :, s] @ k[0, :, s].transpose(-1, -2) * 8 ** -0.5  # (H, n, n)
        expected = (scores.softmax(-1) @ v[0, :, s]).transpose(0, 1)  # (n, H, d)
        assert torch.allclose(out[0, s], expected, atol=1e-6)
        start += n


def test_padded_calls_still_work_on_a_packed_model():
    padded, packed_model, _ = pair()
    ids, mask = ragged()
    with torch.no_grad():
        h1 = padded(input_ids=ids, attention_mask=mask).last_hidden_state
        h2 = packed_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(h1[mask.bool()], h2[mask.bool()], atol=1e-6)


def test_explicit_position_ids_are_packed_with_the_tokens():
    """TLM passes restarted positions: packed must use them, not recount them."""
    padded, _, wrapper = pair()
    ids, mask = ragged()
    pos = packing.own_position_ids(padded, ids, mask)
    pos = torch.where(mask.bool(), pos.flip(1).clamp(min=2), pos)  # any valid numbering
    with torch.no_grad():
        h1 = padded(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        h2 = wrapper(ids, mask, position_ids=pos).last_hidden_state
    assert torch.allclose(h1[mask.bool()], h2[mask.bool()], atol=1e-5)


@pytest.mark.parametrize("objective", ["mexma", "tlm", "mexma_one_sided"])
def test_objective_terms_and_gradients_match_padded(objective):
    """Every view of an objective (and the MEXMA head) computes packed with the same result."""
    from clse.interfaces import EncoderBundle
    from tests.conftest import fake_tokenizer

    def build(model):
        bundle = EncoderBundle(model=model, tokenizer=fake_tokenizer())
        torch.manual_seed(1)
        if objective == "tlm":
            from clse_plugins.tlm import Tlm, TlmConfig
            return Tlm(TlmConfig(), bundle)
        from clse_plugins.mexma import Mexma, MexmaConfig
        one_sided = objective == "mexma_one_sided"
        return Mexma(MexmaConfig(head_layers=2, symmetric=not one_sided,
                                 align="clean_masked" if one_sided else "clean"), bundle)

    padded = tiny_xlmr(layers=2, heads=2)
    packed_model = copy.deepcopy(padded)
    obj1, obj2 = build(padded), build(packed_model)
    obj2.modules().load_state_dict(obj1.modules().state_dict())
    wrapper = packing.configure_packing(packed_model, obj2.modules(), mode="packed")
    assert packing.is_packed(obj2.modules()) or objective == "tlm"
    batch = random_batch(batch_size=5, len_a=10, len_b=8)
    results = []
    for model, forward, obj in ((padded, padded, obj1), (packed_model, wrapper, obj2)):
        out = obj(Views(batch, forward, ClsPooling(), torch.Generator().manual_seed(3)))
        loss = sum(out.terms.values()) + F.mse_loss(*out.pair)
        loss.backward()
        results.append(({k: v.item() for k, v in out.terms.items()}, grads(model),
                        grads(obj.modules())))
    (t1, g1, m1), (t2, g2, m2) = results
    assert t1.keys() == t2.keys()
    for k in t1:
        assert t1[k] == pytest.approx(t2[k], rel=1e-5, abs=1e-6)
    assert_grads_close(g1, g2)
    assert_grads_close(m1, m2)


def test_modes_and_errors():
    model = tiny_xlmr()
    assert packing.configure_packing(model, mode="padded") is model
    assert not packing.is_packed(model)
    wrapper = packing.configure_packing(model, mode="auto")
    assert isinstance(wrapper, packing.PackedEncoder) and packing.is_packed(model)
    assert packing.describe(wrapper, torch.device("cpu"), None) == "packed:sdpa"
    packing.disable_packing(model)
    assert not packing.is_packed(model)
    with pytest.raises(ConfigError, match="encoder.packing must be"):
        packing.configure_packing(model, mode="yes")
    with pytest.raises(ConfigError, match="encoder.packing_backend"):
        packing.configure_packing(model, backend="triton")
    with pytest.raises(ConfigError, match="encoder.packing=packed"):
        packing.configure_packing(torch.nn.Linear(2, 2), mode="packed")
    assert packing.configure_packing(torch.nn.Linear(2, 2), mode="auto").__class__ is torch.nn.Linear
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        packing.Packing.from_mask(left)


def test_backend_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert packing.choose_backend(cpu, torch.float32) == "sdpa"
    assert packing.choose_backend(cpu, torch.float32, "flash_attn") == "flash_attn"
    expected = ("xformers" if packing._has("xformers")
                else "flash_attn" if packing._has("flash_attn") else "sdpa")
    assert packing.choose_backend(cuda, torch.bfloat16) == expected
