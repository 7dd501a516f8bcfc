"""MEXMA: every loss term against an independent computation, and the ablation switches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clse.errors import ConfigError
from clse.interfaces import Views
from clse_plugins.cls_pooling import ClsPooling
from clse_plugins.mexma import Mexma, MexmaConfig
from tests.conftest import SPECIAL, VOCAB


class RecordingViews(Views):
    """Views that keep every encoded hidden state with its gradient."""

    def encode(self, key, input_ids, attention_mask):
        first = key not in self._hidden
        hidden = super().encode(key, input_ids, attention_mask)
        if first and hidden.requires_grad:
            hidden.retain_grad()
            self.inputs = getattr(self, "inputs", {})
            self.inputs[key] = input_ids
        return hidden


def run(bundle, batch, seed=0, **overrides):
    cfg = MexmaConfig(head_layers=2, **overrides)
    torch.manual_seed(1)
    obj = Mexma(cfg, bundle)
    views = RecordingViews(batch, bundle.model, ClsPooling(), torch.Generator().manual_seed(seed))
    out = obj(views)
    return obj, views, out


def manual_ce(head, sentence, hidden_tokens, mask, labels):
    """Independent CE: head layers as a black box, projection and CE written out."""
    from transformers.masking_utils import create_bidirectional_mask

    x = torch.cat([sentence[:, None], hidden_tokens], 1)
    m = create_bidirectional_mask(config=head.config, inputs_embeds=x, attention_mask=mask)
    h = head.layers(x, attention_mask=m).last_hidden_state
    total, count = 0.0, 0
    for i in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[i, t] != -100:
                logits = h[i, t] @ head.embeddings.weight.T + head.bias
                total = total - torch.log_softmax(logits.double(), -1)[labels[i, t]]
                count += 1
    return total / count


def test_views_and_masking(tiny_bundle, batch):
    _, views, out = run(tiny_bundle, batch)
    assert set(views.keys) == {"masked_a", "masked_b", "clean_a", "clean_b"}
    for side, ids, mask in (("a", batch.a_ids, batch.a_mask), ("b", batch.b_ids, batch.b_mask)):
        masked = views.inputs[f"masked_{side}"]
        eligible = mask.bool() & (ids > SPECIAL["mask"])
        changed = masked != ids
        assert not (changed & ~eligible).any(), "special tokens and padding are never masked"
        assert (masked[changed] == SPECIAL["mask"]).float().mean() > 0.5


def test_masking_ratio_and_80_10_10():
    from clse.data.masking import mask_tokens

    ids = torch.randint(5, 1000, (200, 100))
    mask = torch.ones_like(ids)
    masked, labels = mask_tokens(ids, mask, special_ids=torch.tensor([0, 1, 2, 3, 4]), mask_id=4,
                                 vocab_size=1000, ratio=0.4, generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.4) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked[chosen] == 4).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # random ids: the remaining ~10%
    assert not ((masked != ids) & ~chosen).any()


def test_mlm_term_matches_independent_computation(tiny_bundle, batch):
    obj, views, out = run(tiny_bundle, batch)
    model = tiny_bundle.model
    from clse.data.masking import mask_tokens

    g = torch.Generator().manual_seed(0)  # same draws as the objective: A then B
    special = torch.tensor(sorted(SPECIAL.values()))
    kw = dict(special_ids=special, mask_id=SPECIAL["mask"], vocab_size=VOCAB, ratio=0.4, generator=g)
    ma, la = mask_tokens(batch.a_ids, batch.a_mask, **kw)
    mb, lb = mask_tokens(batch.b_ids, batch.b_mask, **kw)
    h_ma = model(input_ids=ma, attention_mask=batch.a_mask).last_hidden_state
    h_mb = model(input_ids=mb, attention_mask=batch.b_mask).last_hidden_state
    s_a = model(input_ids=batch.a_ids, attention_mask=batch.a_mask).last_hidden_state[:, 0]
    s_b = model(input_ids=batch.b_ids, attention_mask=batch.b_mask).last_hidden_state[:, 0]
    ce_a = manual_ce(obj.head, s_b, h_ma[:, 1:], batch.a_mask, la)
    ce_b = manual_ce(obj.head, s_a, h_mb[:, 1:], batch.b_mask, lb)
    assert out.terms["mlm"].item() == pytest.approx(((ce_a + ce_b) / 2).item(), rel=1e-5)
    assert out.metrics["mlm_a"] == pytest.approx(ce_a.item(), rel=1e-5)
    # the pair to align is the clean CLS of A and B
    assert torch.allclose(out.pair[0], s_a, atol=1e-6) and torch.allclose(out.pair[1], s_b, atol=1e-6)
    # untrained head over a tied vocabulary: CE near log(V)
    assert abs(out.terms["mlm"].item() - math.log(VOCAB)) < 1.5


def test_total_loss_weights(tiny_bundle, batch):
    """1.0*MSE + 1.0*(CE_A+CE_B)/2 + 0.01*(KoLeo(S_A)+KoLeo(S_B))/2, each written out here."""
    _, _, out = run(tiny_bundle, batch)
    a, b = out.pair
    mse = ((a - b) ** 2).mean()

    def koleo(x):
        z = F.normalize(x.double(), dim=-1)
        d = torch.cdist(z, z) + torch.diag(torch.full((len(z),), float("inf"), dtype=z.dtype))
        return -torch.log(d.min(1).values + 1e-8).mean()

    expected = mse + out.terms["mlm"] + 0.01 * (koleo(a) + koleo(b)) / 2
    from clse_plugins.koleo import koleo as koleo_loss
    from clse_plugins.mse import mse_alignment

    got = mse_alignment(a, b) + 1.0 * out.terms["mlm"] + 0.01 * (koleo_loss(a) + koleo_loss(b)) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("token_grads", [True, False])
def test_token_grad_switch(tiny_bundle, batch, token_grads):
    obj, views, out = run(tiny_bundle, batch, token_grads=token_grads)
    out.terms["mlm"].backward()
    for key in ("masked_a", "masked_b"):
        grad = views._hidden[key].grad
        token_grad = torch.zeros(()) if grad is None else grad[:, 1:].abs().sum()
        if token_grads:
            assert token_grad > 0
        else:
            assert token_grad == 0, "no direct MLM gradient on the masked token states"
    for key in ("clean_a", "clean_b"):  # the sentence vectors always carry the MLM gradient
        assert views._hidden[key].grad[:, 0].abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_bundle.model.parameters())


@pytest.mark.parametrize("tied_grads", [True, None])
def test_token_grad_switch_changes_only_the_token_path(tiny_bundle, batch, tied_grads):
    """Without token grads, encoder gradients equal those of the loss with Â detached by hand;
    with tied_grads unset (strict reading), the tied projection weight is detached too, so the
    encoder learns from the MLM loss only through the sentence vectors."""
    obj, views, out = run(tiny_bundle, batch, token_grads=False, tied_grads=tied_grads)
    out.terms["mlm"].backward()
    got = [p.grad.clone() for p in tiny_bundle.model.parameters()]
    tiny_bundle.model.zero_grad()
    obj.head.zero_grad()
    obj2, views2, _ = run(tiny_bundle, batch, token_grads=True)
    obj2.head.load_state_dict(obj.head.state_dict())
    obj2.head.tied_grads = bool(tied_grads)  # the hand computation's reading
    b = batch
    h_ma = views2._hidden["masked_a"].detach()
    h_mb = views2._hidden["masked_b"].detach()
    from clse.data.masking import mask_tokens

    g = torch.Generator().manual_seed(0)
    special = torch.tensor(sorted(SPECIAL.values()))
    kw = dict(special_ids=special, mask_id=SPECIAL["mask"], vocab_size=VOCAB, ratio=0.4, generator=g)
    _, la = mask_tokens(b.a_ids, b.a_mask, **kw)
    _, lb = mask_tokens(b.b_ids, b.b_mask, **kw)
    s_a, s_b = views2.sentence("a"), views2.sentence("b")
    loss = (obj2.head(s_b, h_ma[:, 1:], b.a_mask, la) + obj2.head(s_a, h_mb[:, 1:], b.b_mask, lb)) / 2
    loss.backward()
    for g1, p in zip(got, tiny_bundle.model.parameters()):
        g2 = torch.zeros_like(g1) if p.grad is None else p.grad
        assert torch.allclose(g1, g2, atol=1e-6)


def test_clean_masked_alignment_pair(tiny_bundle, batch):
    _, views, out = run(tiny_bundle, batch, align="clean_masked")
    assert torch.allclose(out.pair[0], views._hidden["masked_a"][:, 0])
    assert torch.allclose(out.pair[1], views._hidden["clean_b"][:, 0])


def test_non_symmetric_two_passes(tiny_bundle, batch):
    _, views, out = run(tiny_bundle, batch, symmetric=False, align="clean_masked")
    assert set(views.keys) == {"masked_x", "clean_y"}
    assert out.terms["mlm"].requires_grad and torch.isfinite(out.terms["mlm"])
    # each row's clean side is A or B unchanged, and the masked side is the other one
    clean = views.inputs["clean_y"]
    for i in range(len(batch)):
        row_a = torch.nn.functional.pad(batch.a_ids[i], (0, clean.shape[1] - batch.a_ids.shape[1]), value=1)
        row_b = torch.nn.functional.pad(batch.b_ids[i], (0, clean.shape[1] - batch.b_ids.shape[1]), value=1)
        assert torch.equal(clean[i], row_a) or torch.equal(clean[i], row_b)


def test_bad_switches(tiny_bundle):
    with pytest.raises(ConfigError, match="clean_masked"):
        Mexma(MexmaConfig(symmetric=False, align="clean"), tiny_bundle)
    with pytest.raises(ConfigError, match="align"):
        Mexma(MexmaConfig(align="dirty"), tiny_bundle)


def test_head_depth_and_tied_projection(tiny_bundle):
    obj = Mexma(MexmaConfig(head_layers=3), tiny_bundle)
    assert len(obj.head.layers.layer) == 3
    assert obj.head.embeddings.weight is tiny_bundle.model.get_input_embeddings().weight
    own = {id(p) for p in obj.head.parameters()}
    assert id(tiny_bundle.model.get_input_embeddings().weight) in own  # shared, trained once
