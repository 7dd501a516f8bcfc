"""clse trim-vocab: the trimmed copy emits renumbered ids and computes the same hidden states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clse.errors import ClseError, ConfigError
from clse.model.trim import trim_vocabulary, trimmed_tokenizer_json
from tests.conftest import tiny_xlmr

TRAIN = [f"alpha{i % 13} beta{i % 7} gamma delta{i % 3} épsilon" for i in range(400)]
CORPUS = ["alpha3 beta2 gamma", "delta1 épsilon alpha12", "gamma gamma beta6"]


def _hidden(folder_or_model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = folder_or_model(**enc).last_hidden_state
    return out, enc["attention_mask"]


def test_trimmed_unigram_model_is_the_same_on_its_corpus(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from clse.data.tokenizer import train_tokenizer
    from clse.export import export_hf

    tok = train_tokenizer(TRAIN, vocab_size=120)
    model = tiny_xlmr(vocab_size=len(tok)).eval()
    export_hf(model, tok, tmp_path / "src")
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    summary = trim_vocabulary(tmp_path / "src", tmp_path / "out", [tmp_path / "corpus.txt"])
    assert summary["kept"] < summary["original"] and summary["parameters_after"] < summary["parameters_before"]
    new_tok = AutoTokenizer.from_pretrained(tmp_path / "out")  # stock transformers
    new_model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert len(new_tok) == summary["kept"] == new_model.config.vocab_size
    h_old, m = _hidden(model, tok, CORPUS)
    h_new, m_new = _hidden(new_model, new_tok, CORPUS)
    assert torch.equal(m, m_new)
    assert torch.allclose(h_old[m.bool()], h_new[m.bool()], atol=1e-6)
    assert new_tok.mask_token_id == len(new_tok) - 1 and new_tok.pad_token_id == 1
    assert json.loads((tmp_path / "out" / "clse_trim.json").read_text())["kept"] == summary["kept"]


def test_bpe_and_missing_corpus_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not BPE"):
        trimmed_tokenizer_json({"model": {"type": "BPE", "vocab": {}, "merges": []}}, np.arange(3))
    with pytest.raises(ConfigError, match="at least one --corpus"):
        trim_vocabulary(tmp_path, tmp_path / "out", [])


def test_cli_trims_the_real_model(me5_dir, tmp_path):
    """e5: the trimmed SentenceTransformers folder keeps its pooling and prompt, and embeds the
    corpus as the original does."""
    from sentence_transformers import SentenceTransformer

    from clse.cli import main

    lines = ["Hello world, this is a test.", "Hallo Welt, das ist ein Test.",
             "Привет, мир.", "世界你好", "ሰላም ለዓለም"]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["trim-vocab", str(me5_dir), str(tmp_path / "t"), "--corpus",
                 str(tmp_path / "c.txt")]) == 0
    trimmed = SentenceTransformer(str(tmp_path / "t"), device="cpu")
    assert trimmed.default_prompt_name == "query" and len(trimmed.tokenizer) < 2000
    original = SentenceTransformer(str(me5_dir), device="cpu")
    np.testing.assert_allclose(trimmed.encode(lines), original.encode(lines), atol=1e-5)
    with pytest.raises(ClseError, match="no such file"):
        trim_vocabulary(me5_dir, tmp_path / "x", [tmp_path / "missing.txt"])


def test_vocab_from_trims_once_into_the_cache(tmp_path, monkeypatch):
    """encoder.vocab_from: folders filtered by language, one cached copy per source + corpora."""
    from clse.data.tokenizer import train_tokenizer
    from clse.export import export_hf
    from clse.model.trim import cached_trim, corpus_files

    monkeypatch.setenv("CLSE_CACHE", str(tmp_path / "cache"))
    tok = train_tokenizer(TRAIN, vocab_size=120)
    export_hf(tiny_xlmr(vocab_size=len(tok)).eval(), tok, tmp_path / "src")
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "aaa_Latn.txt").write_text(CORPUS[0] + "\n", encoding="utf-8")
    (corpora / "bbb_Latn.txt").write_text(CORPUS[1] + "\n", encoding="utf-8")
    entries = [{"path": str(corpora), "languages": ["aaa_Latn"]}]
    assert corpus_files(entries) == [corpora / "aaa_Latn.txt"]
    first = cached_trim(tmp_path / "src", entries)
    assert first.parent == tmp_path / "cache" / "models"
    stamp = (first / "clse_trim.json").stat().st_mtime_ns
    assert cached_trim(tmp_path / "src", entries) == first  # found, not made again
    assert (first / "clse_trim.json").stat().st_mtime_ns == stamp
    assert cached_trim(tmp_path / "src", [str(corpora)]) != first  # other corpora, other copy
    with pytest.raises(ConfigError, match="no file for"):
        corpus_files([{"path": str(corpora), "languages": ["ccc_Latn"]}])
    with pytest.raises(ConfigError, match="no such file or folder"):
        corpus_files([str(tmp_path / "nowhere")])
