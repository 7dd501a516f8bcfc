"""Export round trips: the HF and SentenceTransformers folders give clse's vectors without clse."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from clse.errors import ConfigError
from clse.export import export_all, export_hf, export_sentence_transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "the cat runs quickly",
    "el perro corre a la casa azul",
    "der Hund läuft schnell nach Hause",
    "кот бежит",
    " ".join(["long"] * 120),  # longer than the 64-token position table: truncation must match
]


def _texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syll = ["ka", "to", "mi", "ra", "ne", "lu", "sa", "po", "di", "ver", "haus", "que", "la",
            "ст", "ко", "ни", "ού", "λα", "ñe", "ß", "ch", "ing", "ed", "st"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    words += "the cat dog runs quickly el perro corre casa azul der Hund läuft schnell".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A tiny XLM-R-style Unigram tokenizer (<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4)."""
    from tokenizers import (Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                            trainers)
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, unk_token="<unk>",
                                      special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", model_max_length=512)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = _texts()
    try:
        from clse.data.tokenizer import train_tokenizer
    except ImportError:
        return _train_tokenizer(texts, 300)
    from transformers import AutoTokenizer

    save_dir = tmp_path_factory.mktemp("tok")
    out = train_tokenizer(texts, 300, save_dir)
    return out if hasattr(out, "save_pretrained") else AutoTokenizer.from_pretrained(save_dir)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return XLMRobertaModel(cfg, add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def exported(model, tokenizer, tmp_path_factory):
    return export_all(model, tokenizer, tmp_path_factory.mktemp("exp") / "model", pooling="cls")


def _reference(model, tokenizer, pooling: str = "cls") -> np.ndarray:
    """What clse computes: last-layer CLS (or masked mean), unnormalised, 64-token positions."""
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return ((hidden * m).sum(1) / m.sum(1)).numpy()


def test_vocab_and_specials(tokenizer):
    assert len(tokenizer) > 100
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
            tokenizer.unk_token_id] == [0, 1, 2, 3]
    assert tokenizer("the cat")["input_ids"][0] == 0


def test_hf_round_trip(model, tokenizer, tmp_path):
    from transformers import AutoTokenizer, XLMRobertaModel

    out = export_hf(model, tokenizer, tmp_path / "hf")
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= set(os.listdir(out))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    loaded, info = XLMRobertaModel.from_pretrained(out, add_pooling_layer=False,
                                                   output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(SENTENCES[:4])["input_ids"] == tokenizer(SENTENCES[:4])["input_ids"]
    assert tok.model_max_length == 64  # capped at the position table (66 - padding_idx - 1)
    assert tokenizer.model_max_length == 512  # the caller's tokenizer is left alone
    batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = model(**batch).last_hidden_state
        b = loaded.eval()(**batch).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_export_all_layout(exported):
    assert set(exported) == {"hf", "sentence_transformers"}
    st = exported["sentence_transformers"]
    names = set(os.listdir(st))
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    modules = json.loads((st / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    pool = json.loads((st / modules[1]["path"] / "config.json").read_text())
    assert pool["pooling_mode"] == "cls"
    cfg = json.loads((st / "sentence_bert_config.json").read_text())
    assert cfg["model_kwargs"] == {"add_pooling_layer": False} and cfg["max_seq_length"] == 64
    tok_cfg = json.loads((st / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tok_cfg
    for folder in exported.values():
        assert "clse" in (folder / "README.md").read_text()


def test_sentence_transformers_cls_matches_clse(exported, model, tokenizer):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(exported["sentence_transformers"]), device="cpu")
    assert st.max_seq_length == 64
    assert getattr(st[0].auto_model, "pooler", None) is None
    emb = st.encode(SENTENCES, batch_size=2, convert_to_numpy=True)
    np.testing.assert_allclose(emb, _reference(model, tokenizer, "cls"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling,normalize", [("mean", False), ("cls", True),
                                               ("weighted_mean", False), ("last_token", False)])
def test_sentence_transformers_variants(model, tokenizer, tmp_path, pooling, normalize):
    """Every built-in pooling exports to stock modules that give clse's own pooled vectors."""
    from clse.plugins import registry

    from sentence_transformers import SentenceTransformer

    out = export_sentence_transformers(model, tokenizer, tmp_path / "st", pooling=pooling,
                                       normalize=normalize, max_seq_length=32)
    assert not (out / ".hf-src").exists()
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 32
    short = SENTENCES[:4]  # all under 32 tokens
    batch = tokenizer(short, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    ref = registry().build("pooling", {"name": pooling})(hidden, batch["attention_mask"])
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # padding is exercised
    if normalize:
        ref = torch.nn.functional.normalize(ref, dim=-1)
    np.testing.assert_allclose(st.encode(short), ref.numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow  # a fresh interpreter imports sentence-transformers (~10 s)
def test_sentence_transformers_loads_without_clse(exported, model, tokenizer, tmp_path):
    code = (
        "import sys, json\n"
        "sys.modules['clse'] = None  # any import of clse now fails\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"st = SentenceTransformer({str(exported['sentence_transformers'])!r}, device='cpu')\n"
        f"print(json.dumps(st.encode({SENTENCES!r}).tolist()))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    emb = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(emb, _reference(model, tokenizer, "cls"), atol=1e-5, rtol=0)


def test_unknown_pooling_is_a_config_error(model, tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="attention"):
        export_sentence_transformers(model, tokenizer, tmp_path / "out", pooling="attention")
    assert not (tmp_path / "out").exists()


def test_plugin_pooling_exports_the_hf_folder_only(model, tokenizer, tmp_path, caplog):
    """A third-party pooling has no stock SentenceTransformers module: the end of a training
    run still exports the encoder, says so, and writes no misleading ST folder."""
    with caplog.at_level("WARNING", logger="clse.export"):
        paths = export_all(model, tokenizer, tmp_path / "out", pooling="attention")
    assert set(paths) == {"hf"} and (paths["hf"] / "model.safetensors").exists()
    assert not (tmp_path / "out" / "sentence_transformers").exists()
    assert "attention" in (paths["hf"] / "README.md").read_text()
    assert "no SentenceTransformers equivalent" in caplog.text


def test_failed_export_leaves_nothing_and_replace_is_atomic(model, tokenizer, tmp_path,
                                                            monkeypatch):
    import clse.export as export

    out = export_hf(model, tokenizer, tmp_path / "m")
    (out / "stale.txt").write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_card", boom)
    with pytest.raises(RuntimeError):
        export_hf(model, tokenizer, tmp_path / "m")
    assert (out / "stale.txt").exists()  # the old export is untouched
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no staging folder left behind
    monkeypatch.undo()
    export_hf(model, tokenizer, tmp_path / "m")
    assert not (out / "stale.txt").exists()  # replaced as a whole
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_wrapped_model_is_unwrapped(model, tokenizer, tmp_path):
    wrapper = torch.nn.Module()  # what DDP / FSDP look like from outside: the model in .module
    wrapper.module = model
    out = export_hf(wrapper, tokenizer, tmp_path / "hf")
    assert (out / "model.safetensors").exists()
    with pytest.raises(TypeError, match="Hugging Face"):
        export_hf(torch.nn.Linear(2, 2), tokenizer, tmp_path / "bad")
