"""Bottleneck translation (SONAR/LASER): teacher forcing, the decoder written out by hand, the
sentence vector as the only path, DAE, checkpoints and training in the loop."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from clse.interfaces import Views
from clse_plugins.bottleneck import Bottleneck, BottleneckConfig, teacher_forcing
from clse_plugins.cls_pooling import ClsPooling
from clse_plugins.mean_pooling import MeanPooling
from tests.conftest import SPECIAL
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

BOS, PAD, EOS = SPECIAL["bos"], SPECIAL["pad"], SPECIAL["eos"]


def views_for(bundle, batch, pooling=None):
    return Views(batch, bundle.model, pooling or ClsPooling(), torch.Generator().manual_seed(0))


def test_teacher_forcing_hand_made():
    ids = torch.tensor([[BOS, 10, 11, EOS], [BOS, 20, EOS, PAD]])
    inputs, targets, mask = teacher_forcing(ids, (ids != PAD).long(), BOS)
    assert inputs.tolist() == [[BOS, 10, 11], [BOS, 20, EOS]]
    assert targets.tolist() == [[10, 11, EOS], [20, EOS, PAD]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    left = torch.tensor([[BOS, 10, 11, EOS], [PAD, BOS, 20, EOS]])  # left padding: same result
    assert [t.tolist() for t in teacher_forcing(left, (left != PAD).long(), BOS)] == \
        [inputs.tolist(), targets.tolist(), mask.tolist()]
    no_bos = torch.tensor([[10, 11, EOS]])  # a tokenizer without <s>: every token is a target
    assert [t.tolist() for t in teacher_forcing(no_bos, torch.ones_like(no_bos), BOS)] == \
        [[[BOS, 10, 11]], [[10, 11, EOS]], [[1, 1, 1]]]


def _ln(x, norm):
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return x * norm.weight.double() + norm.bias.double()


def manual_ce(dec, sentence, ids, mask):
    """The decoder written out in float64, one sentence at a time without padding."""
    inputs, targets, tmask = teacher_forcing(ids, mask, BOS)
    emb, total, count = dec.embeddings.weight.double(), 0.0, 0
    for i in range(ids.shape[0]):
        n = int(tmask[i].sum())
        x = _ln(emb[inputs[i, :n]] + dec.positions.weight[:n].double(), dec.embed_norm)  # (n, D)
        m = sentence[i].double()
        for layer in dec.layers.layers:
            sa = layer.self_attn
            heads, d = sa.num_heads, x.shape[1]
            q, k, v = (_ln(x, layer.norm1) @ sa.in_proj_weight.double().T
                       + sa.in_proj_bias.double()).split(d, dim=-1)
            split = lambda t: t.view(n, heads, d // heads).transpose(0, 1)  # noqa: E731
            scores = split(q) @ split(k).transpose(1, 2) / math.sqrt(d // heads)  # (h, n, n)
            scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
            att = (scores.softmax(-1) @ split(v)).transpose(0, 1).reshape(n, d)
            x = x + att @ sa.out_proj.weight.double().T + sa.out_proj.bias.double()
            # cross-attention over one memory vector: the softmax weight is 1, the query drops out
            ca = layer.multihead_attn
            v_m = m @ ca.in_proj_weight.double()[2 * d:].T + ca.in_proj_bias.double()[2 * d:]
            x = x + v_m @ ca.out_proj.weight.double().T + ca.out_proj.bias.double()
            h = _ln(x, layer.norm3) @ layer.linear1.weight.double().T + layer.linear1.bias.double()
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
            x = x + h @ layer.linear2.weight.double().T + layer.linear2.bias.double()
        logits = _ln(x, dec.layers.norm) @ emb.T + dec.bias.double()  # (n, V)
        total -= logits.log_softmax(-1)[torch.arange(n), targets[i, :n]].sum().item()
        count += n
    return total / count


def _nontrivial(obj):
    with torch.no_grad():  # fresh LayerNorms are identity and the bias zero: perturb them
        for name, p in obj.decoder.named_parameters():
            if "norm" in name or name == "bias":
                p.add_(0.1 * torch.randn_like(p))


def test_translation_term_matches_the_decoder_written_out(tiny_bundle, batch):
    torch.manual_seed(1)
    obj = Bottleneck(BottleneckConfig(decoder_layers=2), tiny_bundle)
    _nontrivial(obj)
    views = views_for(tiny_bundle, batch)
    out = obj(views)
    model = tiny_bundle.model
    with torch.no_grad():
        s_a = model(input_ids=batch.a_ids, attention_mask=batch.a_mask).last_hidden_state[:, 0]
        s_b = model(input_ids=batch.b_ids, attention_mask=batch.b_mask).last_hidden_state[:, 0]
    ce_ab = manual_ce(obj.decoder, s_a, batch.b_ids, batch.b_mask)
    ce_ba = manual_ce(obj.decoder, s_b, batch.a_ids, batch.a_mask)
    assert out.metrics["ce_a_to_b"] == pytest.approx(ce_ab, rel=1e-5)
    assert out.terms["translation"].item() == pytest.approx((ce_ab + ce_ba) / 2, rel=1e-5)
    assert torch.allclose(out.pair[0], s_a, atol=1e-6) and torch.allclose(out.pair[1], s_b, atol=1e-6)
    assert set(views.keys) == {"clean_a", "clean_b"} and not obj.needs_alignment
    assert obj.decoder.embeddings.weight is model.get_input_embeddings().weight  # tied
    out.terms["translation"].backward()
    layer_grads = [p.grad for n, p in model.named_parameters() if ".layer." in n]
    assert all(g is not None and g.abs().sum() > 0 for g in layer_grads)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_only_the_sentence_vector_reaches_the_decoder(tiny_bundle, batch, pooling):
    """Gradient w.r.t. the encoder's hidden states exists only through the pooled vector."""
    obj = Bottleneck(BottleneckConfig(decoder_layers=1), tiny_bundle)
    views = views_for(tiny_bundle, batch, ClsPooling() if pooling == "cls" else MeanPooling())
    hidden = {}
    for side in "ab":  # stand-ins for the encoder's last hidden states, cached as the clean views
        ids, mask = batch.side(side)
        hidden[side] = torch.randn(*ids.shape, tiny_bundle.hidden_size, requires_grad=True)
        views._hidden[f"clean_{side}"], views._masks[f"clean_{side}"] = hidden[side], mask
    obj(views).terms["translation"].backward()
    for side in "ab":
        grad, mask = hidden[side].grad, batch.side(side)[1].bool()
        if pooling == "cls":  # position 0 only
            assert grad[:, 0].abs().sum() > 0 and torch.equal(grad[:, 1:], torch.zeros_like(grad[:, 1:]))
        else:  # the same gradient at every real token of a row (it flows through the mean), 0 on pads
            assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
            for row in range(grad.shape[0]):
                real = grad[row][mask[row]]
                assert torch.allclose(real, real[:1].expand_as(real), atol=1e-7)
    # changing A's hidden states off position 0 leaves the A -> B loss unchanged (CLS pooling)
    obj2 = Bottleneck(BottleneckConfig(decoder_layers=1), tiny_bundle)
    s = hidden["a"].detach().clone()
    edited = s.clone()
    edited[:, 1:] += 1.0
    same = [obj2.decode(ClsPooling()(h, batch.a_mask), batch.b_ids, batch.b_mask).item()
            for h in (s, edited)]
    assert same[0] == same[1]


def test_denoising_auto_encoding_term(tiny_bundle, batch):
    torch.manual_seed(2)
    obj = Bottleneck(BottleneckConfig(decoder_layers=1, dae_weight=0.5, dae_noise=0.0), tiny_bundle)
    out = obj(views_for(tiny_bundle, batch))
    model = tiny_bundle.model
    with torch.no_grad():
        s_a = model(input_ids=batch.a_ids, attention_mask=batch.a_mask).last_hidden_state[:, 0]
        s_b = model(input_ids=batch.b_ids, attention_mask=batch.b_mask).last_hidden_state[:, 0]
    ae = (manual_ce(obj.decoder, s_a, batch.a_ids, batch.a_mask)
          + manual_ce(obj.decoder, s_b, batch.b_ids, batch.b_mask)) / 2
    assert out.terms["dae"].item() == pytest.approx(0.5 * ae, rel=1e-5)
    assert out.metrics["dae_ce"] == pytest.approx(ae, rel=1e-5)
    noisy = Bottleneck(BottleneckConfig(decoder_layers=1, dae_weight=1.0, dae_noise=0.5), tiny_bundle)
    views = views_for(tiny_bundle, batch)
    out = noisy(views)
    assert set(views.keys) == {"clean_a", "clean_b", "noised_a", "noised_b"}
    assert torch.isfinite(out.terms["dae"])
    assert "dae" not in Bottleneck(BottleneckConfig(decoder_layers=1), tiny_bundle)(
        views_for(tiny_bundle, batch)).terms  # off by default


def test_resume_restores_the_decoder(tmp_path):
    from clse.train.checkpoint import list_checkpoints
    from clse.train.loop import train

    common = ["recipe=sonar", "trainer.steps=3", "trainer.checkpoint_every=1", "trainer.lr=1e-3"]
    train(compose_cfg(common), tmp_path / "full")
    train(compose_cfg(common + ["trainer.stop_after=2"]), tmp_path / "killed")
    train(compose_cfg(common + [f"trainer.resume={tmp_path / 'killed'}"]), tmp_path / "resumed")

    def last(run):
        ckpt = list_checkpoints(tmp_path / run / "checkpoints")[-1]
        return {**load_file(str(ckpt / "encoder" / "model.safetensors")),
                **{k: v for k, v in load_file(str(ckpt / "extra.safetensors")).items()
                   if k.startswith("module.")}}

    full, resumed = last("full"), last("resumed")
    assert full.keys() == resumed.keys()
    assert "module.bias" in full and "module.embeddings.weight" not in full  # tied: in the encoder
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


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
    cfg = compose_cfg(["recipe=sonar", "trainer.steps=12", "trainer.lr=2e-3",
                       "trainer.warmup_ratio=0.1", "trainer.checkpoint_every=0"])
    train(cfg, tmp_path, tracker=rec)
    first, last = sum(rec.losses[:4]) / 4, sum(rec.losses[-4:]) / 4
    assert last < first - 0.3, rec.losses
