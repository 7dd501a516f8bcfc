from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from clse.data.tokenizer import load_tokenizer, train_tokenizer
from clse.errors import ConfigError

SAMPLE = ["Hello world.", "Das ist ein Test.", "Привет, мир!", "ｆｕｌｌｗｉｄｔｈ ﬁ",
          "x <mask> y"]


def test_special_ids(tokenizer):
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
            tokenizer.unk_token_id] == [0, 1, 2, 3]
    assert tokenizer.cls_token_id == 0 and tokenizer.sep_token_id == 2
    assert tokenizer.mask_token_id == len(tokenizer) - 1  # last, as in XLM-R
    assert len(tokenizer) <= 1000
    ids = tokenizer("Hello world.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    pair = tokenizer("a", "b")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3  # <s> A </s></s> B </s>
    assert tokenizer.mask_token_id in tokenizer("x <mask> y")["input_ids"]


def test_nfkc_normaliser(tokenizer):
    assert tokenizer("ｆｕｌｌ")["input_ids"] == tokenizer("full")["input_ids"]


def test_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path)):
        assert loaded(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
        assert loaded.all_special_ids == tokenizer.all_special_ids
        assert loaded.mask_token_id == tokenizer.mask_token_id
        assert loaded.decode(loaded("Das ist ein Test.")["input_ids"],
                             skip_special_tokens=True) == "Das ist ein Test."


def test_reload_beside_an_xlmr_config(tokenizer, tmp_path):
    """A model folder says model_type xlm-roberta: AutoTokenizer must still keep our pipeline."""
    from transformers import XLMRobertaConfig

    XLMRobertaConfig(vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]


@pytest.mark.parametrize("model", ["unigram", "bpe"])
def test_deterministic_and_saved(small_texts, tmp_path, model):
    a = train_tokenizer(small_texts, 800, save_dir=tmp_path, model=model)
    b = train_tokenizer(iter(small_texts), 800, model=model)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert (tmp_path / "tokenizer.json").exists()
    assert AutoTokenizer.from_pretrained(tmp_path)(SAMPLE)["input_ids"] == a(SAMPLE)["input_ids"]


@pytest.mark.slow  # ~7 s; real multilingual Tatoeba (100k lines) takes ~12 s on 2 cores
def test_trains_on_many_lines_quickly():
    texts = [f"sentence number {i} with words {i % 97} and {i % 13}." for i in range(100_000)]
    t = time.perf_counter()
    tok = train_tokenizer(texts, 2000)
    assert time.perf_counter() - t < 30
    assert 3 not in tok(texts[123])["input_ids"]


def test_errors(small_texts, tmp_path):
    with pytest.raises(ConfigError, match="unknown tokenizer model"):
        train_tokenizer(small_texts, 100, model="wordpiece")
    with pytest.raises(ConfigError, match="no text"):
        train_tokenizer(["", "  "], 100)
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "missing")


@pytest.mark.slow  # importing sentence-transformers takes ~8 s
def test_works_as_sentence_transformer(tokenizer, tmp_path):
    st_models = pytest.importorskip("sentence_transformers.models")
    from sentence_transformers import SentenceTransformer
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "enc")
    tokenizer.save_pretrained(tmp_path / "enc")
    module = st_models.Transformer(str(tmp_path / "enc"), max_seq_length=64)
    st = SentenceTransformer(modules=[module, st_models.Pooling(32, "cls")], device="cpu")
    st.save(str(tmp_path / "st"))
    again = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert again[0].tokenizer(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
    assert again.encode(SAMPLE).shape == (len(SAMPLE), 32)
