"""The encoder plugin's three sources: a size preset, a local HF folder, a hub id (same loader)."""

from __future__ import annotations

import pytest
import torch

from clse.errors import ConfigError
from clse.model.loader import load_encoder as load_pretrained
from clse_plugins.xlmr import XlmrConfig, build_xlmr

TEXTS = [f"sentence number {i} with some words, and more {i % 7} words." for i in range(300)]


def test_preset_trains_a_tokenizer_and_sizes_the_model(tmp_path):
    bundle = build_xlmr(XlmrConfig(preset="tiny", vocab_size=200), texts=lambda: iter(TEXTS),
                        work_dir=tmp_path)
    cfg = bundle.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 128, 2)
    assert cfg.vocab_size == len(bundle.tokenizer)
    assert cfg.attention_probs_dropout_prob == 0.0  # MEXMA: attention dropout off
    assert bundle.model.pooler is None
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_local_folder_round_trip(tmp_path):
    from clse.export import export_hf

    bundle = build_xlmr(XlmrConfig(preset="tiny", vocab_size=200, num_layers=1),
                        texts=lambda: iter(TEXTS))
    export_hf(bundle.model, bundle.tokenizer, tmp_path / "hf")
    loaded = build_xlmr(XlmrConfig(pretrained=str(tmp_path / "hf")))
    assert loaded.source == str(tmp_path / "hf")
    enc = loaded.tokenizer(["sentence number 3"], return_tensors="pt")
    bundle.model.eval(), loaded.model.eval()
    with torch.no_grad():
        a = bundle.model(**enc).last_hidden_state
        b = loaded.model(**enc).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)


def test_hub_id_uses_the_same_loader_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not load encoder 'someorg/not-cached-model'.*offline"):
        load_pretrained("someorg/not-cached-model")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_pretrained(str(tmp_path))


def test_bad_preset_and_shape():
    with pytest.raises(ConfigError, match="presets: tiny"):
        build_xlmr(XlmrConfig(preset="huge"), texts=lambda: iter(TEXTS))
    with pytest.raises(ConfigError, match="not divisible"):
        build_xlmr(XlmrConfig(preset="tiny", hidden_size=100, num_heads=3, vocab_size=200),
                   texts=lambda: iter(TEXTS))
