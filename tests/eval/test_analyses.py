"""The MEXMA analyses: token matching on a hand-built case, attention entropy on hand-made
attention, and token_matching / cls_attention / pooling_compare end to end on a tiny XLM-R."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clse.errors import ClseError
from clse.eval.analyses import attention_entropy, boundary_token_mask, token_matching
from clse.eval.model import TokenBatch
from tests.eval.test_mexa import _corpus

BOS, PAD, EOS, UNK = 0, 1, 2, 3
NAMES = {BOS: "<s>", PAD: "<pad>", EOS: "</s>", UNK: "<unk>"}


def fake_tokenizer(**ids):
    base = dict(all_special_ids=[BOS, PAD, EOS, UNK], unk_token_id=UNK, bos_token_id=BOS,
                eos_token_id=EOS, cls_token_id=BOS, sep_token_id=EOS)
    base.update(ids)
    return SimpleNamespace(**base, convert_ids_to_tokens=lambda seq: [NAMES.get(i, f"t{i}")
                                                                       for i in seq])


class FakeModel:
    """EvalModel-like: ``token_batches`` yields chosen states (and attentions) per sentence text.

    ``seqs[text] = (ids, hidden (T, D), cls attention (H, T) or None)``. Batches come in reverse
    order with right padding, as a length-sorted encoder may give them.
    """

    def __init__(self, seqs, tokenizer=None):
        self.seqs = seqs
        self.tokenizer = tokenizer or fake_tokenizer()

    def token_batches(self, sentences, batch_size=32, *, attentions=False):
        order = list(range(len(sentences)))[::-1]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            items = [self.seqs[sentences[i]] for i in idx]
            t = max(len(it[0]) for it in items)
            d = items[0][1].shape[1]
            ids = torch.full((len(idx), t), PAD, dtype=torch.long)
            mask = torch.zeros((len(idx), t), dtype=torch.long)
            hidden = torch.zeros((len(idx), t, d))
            att = None
            if attentions:
                heads = items[0][2].shape[0]
                att = torch.zeros((len(idx), heads, t, t))
            for row, (tok, vec, cls_att) in enumerate(items):
                n = len(tok)
                ids[row, :n] = torch.tensor(tok)
                mask[row, :n] = 1
                hidden[row, :n] = torch.as_tensor(vec, dtype=torch.float32)
                if attentions:
                    att[row, :, 0, :n] = torch.as_tensor(cls_att, dtype=torch.float32)
            yield TokenBatch(np.array(idx), ids, mask, (hidden,), att)


# ----------------------------------------------------------------------------- token matching

def _direction(*parts, dim=12):
    v = np.zeros(dim)
    for axis, weight in parts:
        v[axis] += weight
    return v


def _token_case():
    """Hand-built: the nearest neighbour of every English content token is known.

    Directions: A=0 B=1 C=2 D=3 E=4 F=5, fillers 6..10. BOS/EOS point exactly along F, and F's
    partner only approximately (cos 0.995): excluding special tokens matters for F.
    """
    A, B, C, D, E, F = ((i, 1.0) for i in range(6))
    special = _direction(F)

    def sentence(tokens):
        ids = [BOS, *(t for t, _ in tokens), EOS]
        vecs = np.stack([special, *(v for _, v in tokens), special])
        return ids, vecs, None

    seqs = {
        # eng 0: A, B, B, C      eng 1: C, D, E, F
        "eng0": sentence([(10, _direction(A)), (11, _direction(B)), (11, _direction(B)),
                          (12, _direction(C))]),
        "eng1": sentence([(12, _direction(C)), (13, _direction(D)), (14, _direction(E)),
                          (15, _direction(F))]),
        # deu 0: A', x, D', x    deu 1: x, E', F'
        "deu0": sentence([(20, _direction(A)), (26, _direction((6, 1.0))), (23, _direction(D)),
                          (27, _direction((7, 1.0)))]),
        "deu1": sentence([(28, _direction((8, 1.0))), (24, _direction(E)),
                          (25, _direction(F, (10, 0.1)))]),
    }
    sentences = {"eng_Latn": ["eng0", "eng1"], "deu_Latn": ["deu0", "deu1"]}
    return FakeModel(seqs), sentences


def test_token_matching_hand_built_case():
    model, sentences = _token_case()
    res = token_matching(model, sentences, pivot="eng_Latn", queries_per_sentence=4, k=1,
                         batch_size=1, n_examples=100)
    # A -> deu A' (translation); B <-> B (same sentence, x2); C <-> C across English sentences
    # (same language, x2); D -> deu sentence 0 while D is in English sentence 1 (other);
    # E -> deu E', F -> deu F' (translation; the BOS/EOS along F are not candidates)
    assert res["n_queries"] == 8
    assert res["counts"]["top1"] == {"same_sentence": 2, "translation": 3, "same_language": 2,
                                     "other": 1}
    assert res["top1"] == pytest.approx({"same_sentence": 25.0, "translation": 37.5,
                                         "same_language": 25.0, "other": 12.5})
    assert res["topk"] == res["top1"]  # k = 1
    assert res["identical_token"] == pytest.approx(50.0)  # B-B and C-C share ids
    by_token = {(ex["sentence"], ex["token"]): ex["neighbours"][0] for ex in res["examples"]}
    assert by_token[(1, "t15")]["language"] == "deu_Latn" and by_token[(1, "t15")]["token"] == "t25"
    assert by_token[(1, "t13")]["category"] == "other"
    assert by_token[(0, "t12")]["sentence"] == 1 and by_token[(0, "t12")]["category"] == \
        "same_language"
    assert res["n_candidates"] == 15  # 8 English + 7 German content tokens (no BOS/EOS)


def test_token_matching_with_special_tokens():
    model, sentences = _token_case()
    res = token_matching(model, sentences, queries_per_sentence=6, k=1, include_special=True,
                         n_examples=100)
    assert res["n_queries"] == 12  # BOS and EOS are queries too
    f_query = next(ex for ex in res["examples"] if ex["token"] == "t15")
    assert f_query["neighbours"][0]["token"] in ("<s>", "</s>")  # cos 1 beats F' (0.995)


def test_token_matching_needs_the_pivot():
    model, sentences = _token_case()
    with pytest.raises(ClseError, match="pivot"):
        token_matching(model, {"deu_Latn": sentences["deu_Latn"]})


# ----------------------------------------------------------------------------- entropy

def test_attention_entropy_hand_made():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert attention_entropy(probs).tolist() == pytest.approx([math.log(4), 0.0, math.log(2)])
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    keep = torch.tensor([[False, True, True, True]])
    assert attention_entropy(p, keep).item() == pytest.approx(math.log(2))  # renormalised
    assert math.isnan(attention_entropy(p, torch.tensor([[False, False, False, True]])).item())


def test_boundary_tokens_by_id_and_by_position():
    ids = torch.tensor([[BOS, 7, 8, EOS, PAD], [BOS, 7, EOS, PAD, PAD]])
    mask = (ids != PAD).long()
    want = [[True, False, False, True, False], [True, False, True, False, False]]
    assert boundary_token_mask(ids, mask, fake_tokenizer()).tolist() == want
    ids = torch.tensor([[5, 7, 8, 9, PAD]])  # a tokenizer naming no BOS/EOS: first and last
    assert boundary_token_mask(ids, (ids != PAD).long(), SimpleNamespace()).tolist() == \
        [[True, False, False, True, False]]


def _entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def _attention_case():
    """Two languages x two sentences with hand-made CLS attention (2 heads)."""
    hid = np.zeros((4, 3))
    s0 = ([BOS, 10, 11, EOS], hid, [[0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.1, 0.2]])
    s1 = ([BOS, 12, EOS], hid[:3], [[0.2, 0.6, 0.2], [0.5, 0.5, 0.0]])
    seqs = {"e0": s0, "e1": s1, "d0": s1, "d1": s1}
    return FakeModel({k: (ids, h, np.array(a)) for k, (ids, h, a) in seqs.items()})


def test_cls_attention_stats_hand_made():
    from clse_plugins.cls_attention import cls_attention_stats

    model = _attention_case()
    stats, examples = cls_attention_stats(model, ["e0", "e1"], batch_size=2, examples={0})
    h0 = (math.log(4) + _entropy([0.4, 0.3, 0.1, 0.2])) / 2
    h1 = (_entropy([0.2, 0.6, 0.2]) + _entropy([0.5, 0.5])) / 2
    assert stats["entropy"] == pytest.approx((h0 + h1) / 2)
    # without BOS/EOS, renormalised: s0 -> [.5,.5] and [.75,.25]; s1 -> one token: 0
    r0 = (math.log(2) + _entropy([0.75, 0.25])) / 2
    assert stats["entropy_no_bos_eos"] == pytest.approx((r0 + 0.0) / 2)
    assert stats["bos_eos_mass"] == pytest.approx(((0.5 + 0.6) / 2 + (0.4 + 0.5) / 2) / 2)
    assert stats["uniform_entropy"] == pytest.approx((math.log(4) + math.log(3)) / 2)
    (ex,) = examples
    assert ex["tokens"] == ["<s>", "t10", "t11", "</s>"]
    assert ex["attention"] == pytest.approx([0.325, 0.275, 0.175, 0.225])
    assert ex["bos_eos"] == [True, False, False, True]


def test_cls_attention_evaluator_on_hand_made_attention(tmp_path):
    from clse.plugins import registry

    (tmp_path / "eng_Latn.txt").write_text("e0\ne1\n", encoding="utf-8")
    (tmp_path / "deu_Latn.txt").write_text("d0\nd1\n", encoding="utf-8")
    ev = registry().build("evaluator", {"name": "cls_attention", "source": str(tmp_path),
                                        "progress": False})
    metrics = ev(_attention_case(), "devtest", out_dir=tmp_path / "out")
    h_eng = ((math.log(4) + _entropy([0.4, 0.3, 0.1, 0.2])) / 2
             + (_entropy([0.2, 0.6, 0.2]) + _entropy([0.5, 0.5])) / 2) / 2
    h_deu = (_entropy([0.2, 0.6, 0.2]) + _entropy([0.5, 0.5])) / 2
    assert metrics["cls_attention/eng_Latn/entropy"] == pytest.approx(h_eng)
    assert metrics["cls_attention/deu_Latn/entropy"] == pytest.approx(h_deu)
    assert metrics["cls_attention/avg/entropy"] == pytest.approx((h_eng + h_deu) / 2)
    assert metrics["cls_attention/deu_Latn/entropy_no_bos_eos"] == 0.0
    assert {k.rsplit("/", 1)[1] for k in metrics} == {"entropy", "entropy_no_bos_eos",
                                                      "bos_eos_mass"}
    table = json.loads((tmp_path / "out" / "cls_attention.json").read_text())
    assert [(e["language"], e["sentence"]) for e in table["examples"]] == \
        [("eng_Latn", 0), ("eng_Latn", 1), ("deu_Latn", 0), ("deu_Latn", 1)]
    assert (tmp_path / "out" / "cls_attention_examples.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- tiny XLM-R

@pytest.fixture(scope="module")
def flores_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flores")
    for lang, lines in _corpus().items():
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny(flores_dir):
    from clse.data.tokenizer import train_tokenizer
    from tests.conftest import tiny_xlmr

    texts = [s for lines in _corpus().values() for s in lines]
    tokenizer = train_tokenizer(texts, 200)
    return tiny_xlmr(vocab_size=len(tokenizer), hidden=32, layers=2, heads=2).eval(), tokenizer


def _eval_model(tiny, pooling="cls"):
    from clse.eval.model import EvalModel

    model, tokenizer = tiny
    return EvalModel(model, tokenizer, pooling, name="tiny", max_length=64)


def _build(name, flores_dir, **cfg):
    from clse.plugins import registry

    return registry().build("evaluator", {"name": name, "source": str(flores_dir),
                                          "progress": False, **cfg})


def test_pooling_compare_end_to_end(tiny, flores_dir, tmp_path):
    from clse.eval.flores import evaluate_xsim, load_multiway

    ev = _build("pooling_compare", flores_dir)
    metrics = ev(_eval_model(tiny, "weighted_mean"), "devtest", out_dir=tmp_path)
    langs = ["cpy_Latn", "deu_Latn", "fra_Latn"]
    assert set(metrics) == {f"pooling/{p}/{lang}" for p in ("cls", "mean")
                            for lang in [*langs, "avg"]} | {"pooling/delta_rel"}
    sentences = load_multiway(flores_dir, ["eng_Latn", *langs])
    for pooling in ("cls", "mean"):  # the same figures as the xsim path with that pooling
        model = _eval_model(tiny, pooling)
        want = evaluate_xsim(lambda s, m=model: m.encode(s), sentences, progress=False)
        for lang in [*langs, "avg"]:
            assert metrics[f"pooling/{pooling}/{lang}"] == pytest.approx(want[f"xsim/{lang}"])
    assert metrics["pooling/mean/cpy_Latn"] == 0.0  # identical texts: identical vectors
    cls, mean = metrics["pooling/cls/avg"], metrics["pooling/mean/avg"]
    assert metrics["pooling/delta_rel"] == pytest.approx(100 * (cls - mean) / cls)
    saved = json.loads((tmp_path / "pooling_compare.json").read_text())
    assert saved["avg"] == pytest.approx({"cls": cls, "mean": mean})
    assert (tmp_path / "pooling_compare.png").is_file()
    assert (tmp_path / "pooling_compare.tsv").read_text().splitlines()[0] == "lang\tcls\tmean"


def test_token_matching_end_to_end(tiny, flores_dir, tmp_path):
    ev = _build("token_matching", flores_dir, max_sentences=12, languages=["deu_Latn", "cpy_Latn"])
    metrics = ev(_eval_model(tiny), "devtest", out_dir=tmp_path)
    cats = ("same_sentence", "translation", "same_language", "other")
    assert sum(metrics[f"token_matching/{c}"] for c in cats) == pytest.approx(100.0)
    assert sum(metrics[f"token_matching/top1/{c}"] for c in cats) == pytest.approx(100.0)
    # cpy_Latn repeats English: each query's twin in the copy is its nearest token
    assert metrics["token_matching/top1/translation"] >= 95.0
    saved = json.loads((tmp_path / "token_matching.json").read_text())
    assert saved["n_queries"] == 36 and saved["languages"] == ["eng_Latn", "deu_Latn", "cpy_Latn"]
    assert all(len(ex["neighbours"]) == 5 for ex in saved["examples"])
    assert (tmp_path / "token_matching.png").is_file()


def test_cls_attention_end_to_end(tiny, flores_dir, tmp_path):
    ev = _build("cls_attention", flores_dir, max_sentences=8)
    metrics = ev(_eval_model(tiny), "devtest", out_dir=tmp_path)
    table = json.loads((tmp_path / "cls_attention.json").read_text())
    for lang, stats in table["per_language"].items():
        assert 0.0 < stats["entropy"] <= stats["uniform_entropy"] + 1e-6
        assert 0.0 < stats["bos_eos_mass"] < 1.0
        assert metrics[f"cls_attention/{lang}/entropy"] == pytest.approx(stats["entropy"])
    assert set(table["per_language"]) == {"eng_Latn", "cpy_Latn", "deu_Latn", "fra_Latn"}
    # default plot: English and the first other language, sentences 0 and 1
    assert [(e["language"], e["sentence"]) for e in table["examples"]] == \
        [("eng_Latn", 0), ("eng_Latn", 1), ("cpy_Latn", 0), ("cpy_Latn", 1)]
    assert (tmp_path / "cls_attention_examples.png").stat().st_size > 1000
