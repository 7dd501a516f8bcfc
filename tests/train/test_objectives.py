"""Objectives none (dual encoder), mlm and tlm: terms against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from clse.data.masking import mask_tokens
from clse.interfaces import Views
from clse_plugins.cls_pooling import ClsPooling
from clse_plugins.dual_encoder import NoObjective, NoObjectiveConfig
from clse_plugins.mlm import Mlm, MlmConfig
from clse_plugins.mse import mse_alignment
from clse_plugins.tlm import Tlm, TlmConfig, concat_pair
from tests.conftest import SPECIAL, VOCAB, random_batch

BOS, PAD, EOS, MASK = SPECIAL["bos"], SPECIAL["pad"], SPECIAL["eos"], SPECIAL["mask"]
SPECIAL_IDS = torch.tensor(sorted(SPECIAL.values()))


def views_for(bundle, batch, seed=0):
    return Views(batch, bundle.model, ClsPooling(), torch.Generator().manual_seed(seed))


def manual_ce(head, hidden, labels):
    """Independent CE: the head written out, log_softmax-gather over each masked token."""
    total, count = 0.0, 0
    for i in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[i, t] != -100:
                x = hidden[i, t].double() @ head.dense.weight.double().T + head.dense.bias.double()
                x = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # exact GELU
                x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + head.layer_norm.eps)
                x = x * head.layer_norm.weight.double() + head.layer_norm.bias.double()
                logits = x @ head.embeddings.weight.double().T + head.bias.double()
                total = total - torch.log_softmax(logits, -1)[labels[i, t]]
                count += 1
    return total / count


def mask_kw(ratio, g):
    return dict(special_ids=SPECIAL_IDS, mask_id=MASK, vocab_size=VOCAB, ratio=ratio, generator=g)


def test_mlm_term_matches_independent_computation(tiny_bundle, batch):
    torch.manual_seed(1)
    obj = Mlm(MlmConfig(), tiny_bundle)
    with torch.no_grad():  # a non-trivial head (fresh LayerNorm/bias are identity/zero)
        obj.head.bias.normal_()
        obj.head.layer_norm.weight.normal_()
    views = views_for(tiny_bundle, batch)
    out = obj(views)
    model = tiny_bundle.model
    g = torch.Generator().manual_seed(0)  # same draws as the objective: A then B
    ma, la = mask_tokens(batch.a_ids, batch.a_mask, **mask_kw(0.15, g))
    mb, lb = mask_tokens(batch.b_ids, batch.b_mask, **mask_kw(0.15, g))
    ce_a = manual_ce(obj.head, model(input_ids=ma, attention_mask=batch.a_mask).last_hidden_state, la)
    ce_b = manual_ce(obj.head, model(input_ids=mb, attention_mask=batch.b_mask).last_hidden_state, lb)
    assert out.terms["mlm"].item() == pytest.approx(((ce_a + ce_b) / 2).item(), rel=1e-5)
    assert out.metrics["mlm_a"] == pytest.approx(ce_a.item(), rel=1e-5)
    assert set(views.keys) == {"masked_a", "masked_b", "clean_a", "clean_b"}
    s_a = model(input_ids=batch.a_ids, attention_mask=batch.a_mask).last_hidden_state[:, 0]
    assert torch.allclose(out.pair[0], s_a, atol=1e-6)
    assert obj.head.embeddings.weight is model.get_input_embeddings().weight  # tied


def test_concat_pair_hand_made():
    a_ids = torch.tensor([[BOS, 10, 11, 12, EOS], [BOS, 20, EOS, PAD, PAD]])
    a_mask = (a_ids != PAD).long()
    b_ids = torch.tensor([[BOS, 30, EOS, PAD], [BOS, 40, 41, EOS]])
    b_mask = (b_ids != PAD).long()
    ids, mask, pos = concat_pair(a_ids, a_mask, b_ids, b_mask, bos_id=BOS, eos_id=EOS,
                                 pad_id=PAD, padding_idx=PAD)
    assert ids.tolist() == [[BOS, 10, 11, 12, EOS, EOS, 30, EOS],
                            [BOS, 20, EOS, EOS, 40, 41, EOS, PAD]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]]
    assert pos.tolist() == [[2, 3, 4, 5, 6, 2, 3, 4], [2, 3, 4, 2, 3, 4, 5, 1]]


def test_tlm_positions_reach_the_encoder(tiny_bundle):
    """A row's first segment encodes as A alone would (positions match XLM-R's own numbering)."""
    b = random_batch(batch_size=2)
    ids, mask, pos = concat_pair(b.a_ids, b.a_mask, b.b_ids, b.b_mask, bos_id=BOS, eos_id=EOS,
                                 pad_id=PAD, padding_idx=PAD)
    model = tiny_bundle.model
    emb = model.embeddings
    default = emb.create_position_ids_from_input_ids(b.a_ids, PAD)
    n = int(b.a_mask[1].sum())
    assert torch.equal(pos[1, :n], default[1, :n])
    with torch.no_grad():  # restarted positions change the encoding of the second segment
        h1 = model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        h2 = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(h1, h2)


def test_tlm_term_matches_independent_computation(tiny_bundle, batch):
    torch.manual_seed(1)
    obj = Tlm(TlmConfig(), tiny_bundle)
    with torch.no_grad():
        obj.head.bias.normal_()
    out = obj(views_for(tiny_bundle, batch))
    ids, mask, pos = concat_pair(batch.a_ids, batch.a_mask, batch.b_ids, batch.b_mask,
                                 bos_id=BOS, eos_id=EOS, pad_id=PAD, padding_idx=PAD)
    masked, labels = mask_tokens(ids, mask, **mask_kw(0.15, torch.Generator().manual_seed(0)))
    hidden = tiny_bundle.model(input_ids=masked, attention_mask=mask,
                               position_ids=pos).last_hidden_state
    assert out.terms["tlm"].item() == pytest.approx(manual_ce(obj.head, hidden, labels).item(),
                                                     rel=1e-5)
    assert abs(out.terms["tlm"].item() - math.log(VOCAB)) < 2.0
    s_b = tiny_bundle.model(input_ids=batch.b_ids, attention_mask=batch.b_mask).last_hidden_state[:, 0]
    assert torch.allclose(out.pair[1], s_b, atol=1e-6)


def test_masking_never_touches_special_tokens():
    b = random_batch(batch_size=8, len_a=12, len_b=10, seed=3)
    ids, mask, _ = concat_pair(b.a_ids, b.a_mask, b.b_ids, b.b_mask, bos_id=BOS, eos_id=EOS,
                               pad_id=PAD, padding_idx=PAD)
    for x, m in ((ids, mask), (b.a_ids, b.a_mask)):
        masked, labels = mask_tokens(x, m, **mask_kw(0.9, torch.Generator().manual_seed(0)))
        special = torch.isin(x, SPECIAL_IDS) | ~m.bool()
        assert torch.equal(masked[special], x[special])
        assert (labels[special] == -100).all()
        assert (labels != -100).sum() > 0.5 * (~special).sum()


def test_none_returns_clean_pair_with_gradient(tiny_bundle, batch):
    obj = NoObjective(NoObjectiveConfig(), tiny_bundle)
    assert obj.modules() is None
    views = views_for(tiny_bundle, batch)
    out = obj(views)
    assert out.terms == {}
    assert set(views.keys) == {"clean_a", "clean_b"}
    model = tiny_bundle.model
    s_a = model(input_ids=batch.a_ids, attention_mask=batch.a_mask).last_hidden_state[:, 0]
    assert torch.allclose(out.pair[0], s_a, atol=1e-6)
    assert out.pair[0].requires_grad and out.pair[1].requires_grad
    # the loop's sum of terms starts from a zero tensor: the total stays a tensor
    loss = obj.weight * sum(out.terms.values(), torch.zeros(())) + mse_alignment(*out.pair)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ["none", "mlm", "tlm"])
def test_total_loss_decreases(tiny_bundle, name):
    build = {"none": lambda: NoObjective(NoObjectiveConfig(), tiny_bundle),
             "mlm": lambda: Mlm(MlmConfig(), tiny_bundle),
             "tlm": lambda: Tlm(TlmConfig(), tiny_bundle)}[name]
    torch.manual_seed(1)
    obj = build()
    batch = random_batch()
    model = tiny_bundle.model
    params = list(model.parameters())
    if obj.modules() is not None:
        seen = {id(p) for p in params}
        params += [p for p in obj.modules().parameters() if id(p) not in seen]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(15):  # same masks every step: one fixed batch, one fixed target
        out = obj(views_for(tiny_bundle, batch, seed=0))
        loss = obj.weight * sum(out.terms.values(), torch.zeros(())) + mse_alignment(*out.pair)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert torch.is_tensor(loss)
    assert losses[-1] < 0.7 * losses[0], losses


def test_mlm_without_sentence_pair_skips_the_clean_passes(tiny_bundle, batch, tmp_path):
    """Pure MLM pre-training: no pair, so no clean encoder calls; the loop refuses to run it
    with an alignment loss that would silently never train."""
    from clse.errors import ConfigError
    from clse.train.loop import train
    from tests.train.test_train_loop import compose_cfg

    calls = []
    model = tiny_bundle.model
    model.register_forward_hook(lambda *a: calls.append(1))
    out = Mlm(MlmConfig(sentence_pair=False), tiny_bundle)(
        Views(batch, model, ClsPooling(), torch.Generator().manual_seed(0)))
    assert out.pair is None and len(calls) == 2 and torch.isfinite(out.terms["mlm"])
    with pytest.raises(ConfigError, match="returned no sentence pair"):
        train(compose_cfg(["objective=mlm", "objective.sentence_pair=false", "alignment=mse",
                           "regularizer=none", "trainer.steps=1"]), tmp_path)
