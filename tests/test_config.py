"""Hydra config composition: plugin dataclasses as groups, third-party YAML folders, resolvers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

import clse.plugins as plugins_mod
from clse.hookspecs import hookimpl


def _compose(overrides):
    from clse.config import setup

    setup()
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        if not any(o.startswith("quickstart=") for o in overrides):
            overrides = ["quickstart=none", *overrides]  # the components' own defaults
        return compose(config_name="train", overrides=overrides)


def test_default_composition():
    cfg = _compose([])
    assert cfg.objective.name == "mexma" and cfg.objective.mask_ratio == 0.4
    assert cfg.alignment.name == "mse" and cfg.regularizer.name == "koleo"
    assert cfg.regularizer.weight == 0.01 and cfg.pooling.name == "cls"
    assert cfg.trainer.warmup_ratio == 0.3 and cfg.trainer.clip_norm == 1.2
    assert cfg.eval.evaluators.xsim.name == "xsim"


def test_group_selection_and_typed_overrides():
    cfg = _compose(["alignment=contrastive", "alignment.temperature=0.1", "encoder=small"])
    assert cfg.alignment.temperature == 0.1 and cfg.encoder.preset == "small"
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose(["objective.mask_ratio=lots"])  # a float field


def test_experiment_config_composes():
    cfg = _compose(["experiment=learn_tiny"])
    assert cfg.alignment.name == "contrastive" and cfg.regularizer.name == "none"
    assert cfg.objective.head_layers == 2 and cfg.tracking.experiment == "learnability"


def test_third_party_yaml_config_dir(tmp_path, monkeypatch):
    (tmp_path / "alignment").mkdir()
    (tmp_path / "alignment" / "scaled_mse.yaml").write_text("name: mse\nweight: 3.0\n")

    class ThirdParty:
        @hookimpl
        def clse_config_dirs(self):
            return [str(tmp_path)]

    class EP:
        name, dist = "thirdparty", type("D", (), {"name": "thirdparty"})

        def load(self):
            return ThirdParty()

    real = plugins_mod.entry_points
    monkeypatch.setattr(plugins_mod, "entry_points", lambda group: [*real(group=group), EP()])
    plugins_mod.reset_registry()
    try:
        cfg = _compose(["alignment=scaled_mse"])
        assert cfg.alignment.name == "mse" and cfg.alignment.weight == 3.0
    finally:
        monkeypatch.undo()
        plugins_mod.reset_registry()


def test_data_resolver_without_data(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    from clse.errors import ClseError

    monkeypatch.setenv("CLSE_DATA", str(tmp_path / "missing"))
    cfg = _compose(["data=shared"])
    assert cfg.data.corpora[0].path.startswith(str(tmp_path / "missing"))
    monkeypatch.delenv("CLSE_DATA")
    monkeypatch.chdir(tmp_path)
    import clse.paths

    monkeypatch.setattr(clse.paths, "data_root", lambda: None)
    with pytest.raises(Exception) as info:
        OmegaConf.to_container(_compose(["data=shared"]).data, resolve=True)
    from clse.cli import _user_error

    assert isinstance(_user_error(info.value), ClseError)
    assert "CLSE_DATA" in str(_user_error(info.value))


@pytest.mark.parametrize("recipe,objective,alignment,regularizer", [
    ("mexma", "mexma", "mse", "koleo"),
    ("labse", "none", "additive_margin", "none"),
    ("contrastive_xlmr", "none", "contrastive", "none"),
    ("mexma_contrastive", "mexma", "contrastive", "none"),
    ("tlm", "tlm", "contrastive", "none"),
])
def test_recipes_compose(recipe, objective, alignment, regularizer):
    from importlib.resources import files

    cfg = _compose([f"recipe={recipe}"])
    assert (cfg.objective.name, cfg.alignment.name, cfg.regularizer.name) == (
        objective, alignment, regularizer)
    text = (files("clse_configs") / "recipe" / f"{recipe}.yaml").read_text()
    assert f"clse train recipe={recipe}" in text.splitlines()[1]  # opens with its command
    # a recipe can still be changed on the command line
    assert _compose([f"recipe={recipe}", "pooling=mean"]).pooling.name == "mean"


def test_paper_experiment_starts_from_pretrained_xlmr_large():
    cfg = _compose(["experiment=mexma_paper"])
    assert cfg.encoder.pretrained == "FacebookAI/xlm-roberta-large"
    assert cfg.encoder.attention_dropout == 0.0 and cfg.pooling.name == "cls"
    assert cfg.objective.head_layers == 6 and cfg.data.batch_size == 150
    assert cfg.trainer.steps == 300_000 and cfg.alignment.name == "mse"


def test_encoder_preset_chooses_its_pooling_and_the_command_line_still_wins():
    cfg = _compose(["encoder=me5_small"])  # (encoder.pretrained resolves lazily: not imported)
    assert cfg.pooling.name == "mean" and cfg.encoder.prompt == "query"
    assert cfg.encoder.prompts.query == "query: "
    assert _compose(["encoder=me5_small", "pooling=cls"]).pooling.name == "cls"


def test_the_default_run_fine_tunes_e5_on_shipped_low_resource_pairs():
    cfg = _compose(["quickstart=e5"])  # what `clse train` alone composes
    assert cfg.objective.name == "none" and cfg.alignment.name == "contrastive"
    assert cfg.pooling.name == "mean" and cfg.encoder.prompt == "query"
    assert cfg.trainer.steps == 60 and cfg.eval.every == 0 and cfg.eval.split == "devtest"
    assert cfg.data.corpora[0].path.endswith("ntrex_lowres.tsv")
    assert len(cfg.eval.evaluators.xsim.languages) == 8
    # each group can still be swapped: encoder=small leaves no e5 settings behind
    small = _compose(["quickstart=e5", "encoder=small"])
    assert small.encoder.preset == "small" and small.encoder.vocab_from is None
    assert small.encoder.pretrained is None


def test_bundled_files_resolve_and_a_missing_one_is_named():
    from clse.config import _bundled_path
    from clse.errors import ConfigError

    assert _bundled_path("data/bundled/ntrex_lowres.tsv").endswith("ntrex_lowres.tsv")
    with pytest.raises(ConfigError, match="clse ships no data/bundled/nothing.tsv"):
        _bundled_path("data/bundled/nothing.tsv")
