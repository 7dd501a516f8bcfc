"""XLCO (InfoXLM): MoCo loss, EMA order, queue, gradient flow, checkpoints, training in the loop."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from clse.interfaces import Views
from clse_plugins.cls_pooling import ClsPooling
from clse_plugins.xlco import MomentumQueue, Xlco, XlcoConfig, moco_loss
from tests.conftest import random_batch
from tests.train.test_train_loop import compose_cfg as _compose


@pytest.fixture(autouse=True)
def _restore_threads():
    """The loop tests run with trainer.threads=1 (on a shared 2-core machine, two threads per
    process spin against each other: 7x slower here); the process's setting is restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_cfg(overrides):
    return _compose(["trainer.threads=1"] + overrides)


def views_for(bundle, batch):
    return Views(batch, bundle.model, ClsPooling(), torch.Generator().manual_seed(0))


def cls(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]


def manual_moco(q, k, queue, tau):
    """Row by row in float64: −log(exp(cos(q,k)/τ) / (exp(cos(q,k)/τ) + Σ_j exp(cos(q,Q_j)/τ)))."""
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i].double() / q[i].double().norm()
        pos = qi @ (k[i].double() / k[i].double().norm()) / tau
        negs = [qi @ (n.double() / n.double().norm()) / tau for n in queue]
        total += -pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs))
    return total / q.shape[0]


def test_moco_loss_matches_independent_computation():
    g = torch.Generator().manual_seed(0)
    q, k, queue = (torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g),
                   torch.randn(7, 8, generator=g))
    for tau in (0.05, 0.5):
        assert moco_loss(q, k, queue, tau).item() == pytest.approx(manual_moco(q, k, queue, tau),
                                                                   rel=1e-5)
    assert moco_loss(q, k, queue[:0], 0.1).item() == 0.0  # no negatives yet: softmax over one logit


def test_queue_enqueue_and_wrap_around():
    mq = MomentumQueue(torch.nn.Linear(2, 2), queue_size=5, dim=2)
    rows = torch.arange(16, dtype=torch.float32).view(8, 2)
    mq.enqueue(rows[:3])
    assert (int(mq.ptr), int(mq.filled)) == (3, 3)
    assert torch.equal(mq.negatives(), rows[:3])
    mq.enqueue(rows[3:6])  # slots 3, 4 then 0
    assert (int(mq.ptr), int(mq.filled)) == (1, 5)
    assert torch.equal(mq.queue, torch.stack([rows[5], rows[1], rows[2], rows[3], rows[4]]))
    mq.enqueue(rows)  # more keys than slots: the newest 5, written from the pointer on
    assert (int(mq.ptr), int(mq.filled)) == (1, 5)
    assert torch.equal(mq.queue, torch.stack([rows[7], rows[3], rows[4], rows[5], rows[6]]))


def test_term_pair_and_queue_after_two_calls(tiny_bundle):
    obj = Xlco(XlcoConfig(momentum=0.5, queue_size=6, temperature=0.1), tiny_bundle)
    model = tiny_bundle.model
    first, second = random_batch(batch_size=4, seed=1), random_batch(batch_size=4, seed=2)
    out = obj(views_for(tiny_bundle, first))  # empty queue: the loss is 0
    assert out.terms["xlco"].item() == 0.0 and out.metrics["queue_fill"] == 0.0
    # the key encoder equals the encoder (EMA of equal weights), so keys are the encoder's CLS
    keys_first = torch.cat([cls(model, first.a_ids, first.a_mask), cls(model, first.b_ids, first.b_mask)])
    keys_first = torch.nn.functional.normalize(keys_first, dim=-1)
    assert int(obj.memory.filled) == 6 and int(obj.memory.ptr) == 0
    assert torch.allclose(obj.memory.queue, keys_first[-6:], atol=1e-6)  # the newest 6 of 8
    queue = obj.memory.queue.clone()

    views = views_for(tiny_bundle, second)
    out = obj(views)
    s_a, s_b = cls(model, second.a_ids, second.a_mask), cls(model, second.b_ids, second.b_mask)
    expected = (manual_moco(s_a, s_b, queue, 0.1) + manual_moco(s_b, s_a, queue, 0.1)) / 2
    assert out.terms["xlco"].item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(out.pair[0], s_a, atol=1e-6) and torch.allclose(out.pair[1], s_b, atol=1e-6)
    assert set(views.keys) == {"clean_a", "clean_b"}  # the queries are the shared clean views
    assert out.metrics["queue_fill"] == 1.0 and 0.0 <= out.metrics["xlco_acc"] <= 1.0
    assert out.metrics["key_query_cos"] == pytest.approx(
        torch.nn.functional.cosine_similarity(torch.cat([s_a, s_b]), torch.cat([s_b, s_a])).mean().item(),
        rel=1e-5)
    assert obj.weight == 1.0 and not obj.needs_alignment


def test_ema_runs_before_the_keys(tiny_bundle):
    """m = 0: the key encoder becomes the current encoder *before* the keys are computed."""
    obj = Xlco(XlcoConfig(momentum=0.0, queue_size=8), tiny_bundle)
    model = tiny_bundle.model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = random_batch(batch_size=3)
    obj(views_for(tiny_bundle, batch))
    keys = torch.cat([cls(model, batch.a_ids, batch.a_mask), cls(model, batch.b_ids, batch.b_mask)])
    assert torch.allclose(obj.memory.queue[:6], torch.nn.functional.normalize(keys, dim=-1), atol=1e-5)


def test_gradients_and_the_optimizer_leave_the_key_encoder_to_the_ema(tiny_bundle):
    obj = Xlco(XlcoConfig(momentum=0.9, queue_size=16), tiny_bundle)
    model, extra = tiny_bundle.model, obj.modules()
    assert all(not p.requires_grad for p in extra.parameters())
    with torch.no_grad():  # make the two encoders differ, so the EMA moves the key encoder
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    obj(views_for(tiny_bundle, random_batch(seed=3)))  # fill the queue: a non-zero loss next
    # even an optimizer handed every parameter (the loop leaves frozen ones out) cannot move them
    params = list(model.parameters()) + list(extra.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    before_q = [p.detach().clone() for p in model.parameters()]
    before_k = [p.detach().clone() for p in extra.encoder.parameters()]
    out = obj(views_for(tiny_bundle, random_batch(seed=4)))
    out.terms["xlco"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None for p in extra.parameters())
    opt.step()
    for pk, k0, q0 in zip(extra.encoder.parameters(), before_k, before_q):
        assert torch.allclose(pk, 0.9 * k0 + 0.1 * q0, atol=1e-6)  # the EMA and nothing else
    assert all(len(opt.state[p]) == 0 for p in extra.parameters())
    assert any(not torch.equal(p, q0) for p, q0 in zip(model.parameters(), before_q))


def test_resume_restores_queue_and_key_encoder(tmp_path):
    from clse.train.checkpoint import list_checkpoints
    from clse.train.loop import train

    common = ["recipe=infoxlm", "objective.queue_size=24", "objective.momentum=0.9",
              "trainer.steps=3", "trainer.checkpoint_every=1", "trainer.lr=1e-3"]
    train(compose_cfg(common), tmp_path / "full")
    train(compose_cfg(common + ["trainer.stop_after=2"]), tmp_path / "killed")
    train(compose_cfg(common + [f"trainer.resume={tmp_path / 'killed'}"]), tmp_path / "resumed")

    def last(run):
        ckpt = list_checkpoints(tmp_path / run / "checkpoints")[-1]
        return {**load_file(str(ckpt / "encoder" / "model.safetensors")),
                **load_file(str(ckpt / "extra.safetensors"))}

    full, resumed = last("full"), last("resumed")
    assert full.keys() == resumed.keys()
    assert {"module.queue", "module.ptr", "module.filled"} <= full.keys()
    assert any(k.startswith("module.encoder.") for k in full)
    for key in full:
        if not key.startswith("rng."):
            assert torch.equal(full[key], resumed[key]), key
    # 3 steps x 2 sides x 8 sentences = 48 keys through 24 slots: wrapped twice
    assert int(full["module.ptr"]) == 0 and int(full["module.filled"]) == 24
    assert full["module.queue"].norm(dim=1).allclose(torch.ones(24), atol=1e-5)


def test_loss_decreases_in_the_training_loop(tmp_path):
    from clse.train.loop import train

    class Recorder:
        def __init__(self):
            self.losses = []

        def log_metrics(self, metrics, step):
            if "train/loss" in metrics:
                self.losses.append(metrics["train/loss"])

        def set_tags(self, tags):
            pass

        def log_artifact(self, *a, **k):
            pass

    rec = Recorder()
    # queue = 2 x batch (8): the negatives are the previous step's keys, from step 1 on
    cfg = compose_cfg(["recipe=infoxlm", "objective.queue_size=16", "objective.momentum=0.9",
                       "trainer.steps=14", "trainer.lr=1e-3", "trainer.warmup_ratio=0.1",
                       "trainer.checkpoint_every=0"])
    train(cfg, tmp_path, tracker=rec)
    assert rec.losses[0] == 0.0  # the first step has no negatives yet
    first, last = sum(rec.losses[1:6]) / 5, sum(rec.losses[-5:]) / 5
    assert last < first - 0.1, rec.losses
