"""The shared loop in-process: losses decrease, resume is exact, bad configs fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

from clse.errors import ClseError

FAST = [
    "quickstart=none", "encoder.vocab_size=400", "encoder.tokenizer_sample=4000",
    "data.batch_size=8", "data.max_length=32", "eval=none", "trainer.log_every=1",
    "trainer.export=false", "progress=false", "tracking.enabled=false",
]


def compose_cfg(overrides: list[str]):
    from clse.config import setup

    setup()
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        mexma = [] if any(o.startswith(("objective=", "recipe=")) for o in overrides) else ["objective.head_layers=1"]
        return compose(config_name="train", overrides=FAST + mexma + overrides)


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    from clse.train.checkpoint import list_checkpoints

    last = list_checkpoints(run_dir / "checkpoints")[-1]
    return {**load_file(str(last / "encoder" / "model.safetensors")),
            **{k: v for k, v in load_file(str(last / "extra.safetensors")).items()
               if k.startswith("module.")}}


def test_resume_matches_uninterrupted_run(tmp_path):
    from clse.train.loop import train

    common = ["trainer.steps=6", "trainer.checkpoint_every=2", "trainer.lr=1e-3"]
    train(compose_cfg(common), tmp_path / "full")
    train(compose_cfg(common + ["trainer.stop_after=4"]), tmp_path / "killed")
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())[-1] == "step_00000004"
    train(compose_cfg(common + [f"trainer.resume={tmp_path / 'killed'}"]), tmp_path / "resumed")
    full, resumed = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_resume_skips_a_corrupt_checkpoint(tmp_path):
    from clse.train.checkpoint import find_resumable
    from clse.train.loop import train

    train(compose_cfg(["trainer.steps=4", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3"]),
          tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "step_00000004"
    weights = last / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a crash
    with pytest.warns(UserWarning, match="step_00000004"):
        assert find_resumable(tmp_path / "run").name == "step_00000002"
    with pytest.raises(ClseError, match="checksum"):
        find_resumable(last)


@pytest.mark.parametrize("recipe", [
    [],
    ["alignment=contrastive", "regularizer=none"],
    ["objective.token_grads=false"],
    ["objective.symmetric=false", "objective.align=clean_masked", "alignment=none", "regularizer=none"],
    ["objective=none", "alignment=additive_margin", "regularizer=none"],
    ["objective=tlm", "alignment=contrastive", "regularizer=none", "pooling=weighted_mean"],
    ["objective=mlm", "alignment=none", "regularizer=none", "pooling=last_token"],
])
def test_loss_decreases(tmp_path, recipe):
    import json

    from clse.train.loop import train

    cfg = compose_cfg(["trainer.steps=30", "trainer.lr=2e-3", "trainer.checkpoint_every=0",
                       "trainer.warmup_ratio=0.1", "data.batch_size=16"] + recipe)

    class Recorder:
        losses: list[float] = []

        def log_metrics(self, metrics, step):
            if "train/loss" in metrics:
                self.losses.append(metrics["train/loss"])

        def set_tags(self, tags):
            pass

        def log_artifact(self, *a, **k):
            pass

    rec = Recorder()
    rec.losses = []
    train(cfg, tmp_path, tracker=rec)
    first, last = sum(rec.losses[:5]) / 5, sum(rec.losses[-5:]) / 5
    assert last < first, json.dumps(rec.losses)


def test_unknown_option_is_a_clear_error(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["objective.mask_ration=0.3"])
    assert "mask_ration" in str(info.value)


def test_resume_from_missing_folder(tmp_path):
    from clse.train.loop import train

    with pytest.raises(ClseError, match="no such file"):
        train(compose_cfg([f"trainer.resume={tmp_path / 'nope'}"]), tmp_path / "run")


def test_nonsense_combination_is_refused(tmp_path):
    from clse.errors import ConfigError
    from clse.train.loop import train

    with pytest.raises(ConfigError, match="nothing to train"):
        train(compose_cfg(["objective=none", "alignment=none"]), tmp_path / "run")


def test_init_from_an_mlm_pretraining_run(tmp_path):
    """objective=mlm pre-training, then any recipe starts from its encoder (encoder.init_from)."""
    from clse.train.loop import train
    from clse.train.checkpoint import list_checkpoints

    train(compose_cfg(["objective=mlm", "alignment=none", "regularizer=none", "trainer.steps=3",
                       "trainer.checkpoint_every=3"]), tmp_path / "mlm")
    pre = load_file(str(list_checkpoints(tmp_path / "mlm" / "checkpoints")[-1] / "encoder" / "model.safetensors"))

    from clse.train.build import build_components, load_pairs

    cfg = compose_cfg([f"encoder.init_from={tmp_path / 'mlm'}", "recipe=labse"])
    comp = build_components(cfg, load_pairs(cfg.data), tmp_path / "labse")
    state = {k: v for k, v in comp.encoder.model.state_dict().items()}
    for key, value in pre.items():
        assert torch.equal(state[key], value), key
    assert comp.encoder.tokenizer.mask_token_id is not None
