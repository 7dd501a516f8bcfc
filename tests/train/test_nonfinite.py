"""NaN/Inf policy: stop with the step, terms and languages (checkpoints intact), or skip the update."""

from __future__ import annotations

import pytest
import torch

from clse.train.checkpoint import list_checkpoints, verify
from tests.train.test_train_loop import compose_cfg

COMMON = ["trainer.steps=6", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=5"]


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison(monkeypatch, bad_steps: set[int], kind: str = "loss"):
    """Make `pair_losses` return a NaN loss (or NaN gradients) on the given 1-based steps."""
    from clse.train import loop

    real = loop.pair_losses
    calls = {"n": 0}

    def fake(comp, a, b, groups):
        calls["n"] += 1
        loss, terms = real(comp, a, b, groups)
        if calls["n"] in bad_steps:
            if kind == "loss":
                terms = {**terms, "alignment": terms["alignment"] * float("nan")}
                loss = loss * float("nan")
            else:
                loss = NanGrad.apply(loss)
        return loss, terms

    monkeypatch.setattr(loop, "pair_losses", fake)


class Recorder:
    def __init__(self):
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    def set_tags(self, tags):
        pass

    def log_metrics(self, metrics, step):
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, v))

    def log_artifact(self, *a, **k):
        pass

    log_artifacts = log_artifact


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_stop_names_step_terms_languages_and_keeps_checkpoints(tmp_path, monkeypatch, kind):
    from clse.train.loop import NonFiniteError, train

    poison(monkeypatch, {5}, kind)
    with pytest.raises(NonFiniteError) as info:
        train(compose_cfg(COMMON), tmp_path)
    message = str(info.value)
    assert f"non-finite {'loss' if kind == 'loss' else 'gradient norm'} at step 5" in message
    assert "languages [" in message and "eng_Latn" in message
    if kind == "loss":
        assert "alignment=nan" in message and "objective/mlm=" in message
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [c.name for c in ckpts] == ["step_00000002", "step_00000004"]
    assert all(verify(c) is None for c in ckpts)  # the last good checkpoint is intact


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_skip_drops_the_update_and_counts_it(tmp_path, monkeypatch, kind):
    from clse.train.loop import train

    poison(monkeypatch, {3}, kind)
    recorder = Recorder()
    result = train(compose_cfg(COMMON + ["trainer.nonfinite=skip"]), tmp_path, tracker=recorder)
    assert result.steps == 6
    skipped = dict(recorder.metrics["train/skipped_steps"])
    assert skipped[2] == 0 and skipped[3] == 1 and skipped[6] == 1
    from safetensors.torch import load_file

    last = list_checkpoints(tmp_path / "checkpoints")[-1]
    weights = load_file(str(last / "encoder" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_skip_gives_up_after_too_many_in_a_row(tmp_path, monkeypatch):
    from clse.train.loop import NonFiniteError, train

    poison(monkeypatch, {2, 3, 4})
    with pytest.raises(NonFiniteError, match="3 updates in a row"):
        train(compose_cfg(COMMON + ["trainer.nonfinite=skip", "trainer.max_skipped_in_a_row=2"]),
              tmp_path)


def test_unknown_policy_is_a_config_error(tmp_path):
    from clse.errors import ConfigError
    from clse.train.loop import train

    with pytest.raises(ConfigError, match="trainer.nonfinite must be one of stop, skip"):
        train(compose_cfg(COMMON + ["trainer.nonfinite=ignore"]), tmp_path)
