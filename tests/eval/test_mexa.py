"""mexa_score against a literal implementation of the definition (ties included), and the mexa
evaluator end to end on a tiny random XLM-R with a FLORES-like folder."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clse.errors import ClseError, ConfigError
from clse.eval import mexa_score
from clse.eval.mexa import cosine_matrix, mexa_aligned


def reference_mexa(pivot, lang) -> float:
    """The definition, literally: cosine per pair (float64), strict > against every other entry of
    row i and of column i (cisnlp/MEXA compute_mexa.py semantics)."""
    n = len(pivot)

    def cos(u, v) -> float:
        nu = math.sqrt(sum(float(a) * float(a) for a in u))
        nv = math.sqrt(sum(float(b) * float(b) for b in v))
        if nu == 0 or nv == 0:
            return 0.0
        return sum(float(a) * float(b) for a, b in zip(u, v)) / (nu * nv)

    sim = [[cos(pivot[i], lang[j]) for j in range(n)] for i in range(n)]
    count = 0
    for i in range(n):
        row_ok = all(sim[i][i] > sim[i][j] for j in range(n) if j != i)
        col_ok = all(sim[i][i] > sim[j][i] for j in range(n) if j != i)
        count += row_ok and col_ok
    return count / n


# ----------------------------------------------------------------------------- hand-made cases

def test_identity_and_permutation():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(6, 5))
    assert mexa_score(e, e) == 1.0
    assert mexa_score(e, 3.0 * e) == 1.0  # cosine: scale-free
    assert mexa_score(e, e[::-1]) == 0.0  # even n: no row maps onto itself
    perm = [1, 0, 2, 3, 5, 4]
    assert mexa_score(e, e[perm]) == pytest.approx(2 / 6)


def test_row_tie_is_not_aligned():
    # f_1 == f_0: C[0,0] == C[0,1] (row 0 ties) and C[1,1] == C[1,0] (row 1 ties)
    e = np.eye(3)
    f = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    assert mexa_aligned(e, f).tolist() == [False, False, True]
    assert mexa_score(e, f) == pytest.approx(1 / 3) == reference_mexa(e, f)


def test_column_tie_only_is_not_aligned():
    # pivot rows 0 and 1 identical: column 0 ties (C[0,0] == C[1,0]), rows are strict
    e = np.array([[1.0, 0.0], [1.0, 0.0]])
    f = np.array([[1.0, 0.0], [0.6, 0.8]])
    sim = cosine_matrix(e, f)
    assert sim[0, 0] > sim[0, 1] and sim[0, 0] == sim[1, 0]  # row strict, column tied
    assert mexa_aligned(e, f).tolist() == [False, False]
    assert reference_mexa(e, f) == 0.0


def test_row_strict_but_column_beaten_is_not_aligned():
    # pair 0: row 0 is strict (0.9996 > 0) but pivot 1 is closer to f_0 (column 0): not aligned
    e = np.array([[1.0, 0.0], [1.0, 0.02]])
    f = np.array([[1.0, 0.03], [0.0, 1.0]])
    sim = cosine_matrix(e, f)
    assert sim[0, 0] > sim[0, 1] and sim[1, 0] > sim[0, 0]
    assert mexa_aligned(e, f).tolist() == [False, False]
    assert mexa_aligned(f, e).tolist() == [False, False]  # transposed: the row test fails
    assert mexa_score(e, f) == reference_mexa(e, f) == 0.0


def test_collapsed_encoder_scores_zero_and_single_pair_scores_one():
    assert mexa_score(np.ones((4, 3)), np.ones((4, 3))) == 0.0
    assert mexa_score(np.ones((1, 3)), -np.ones((1, 3))) == 1.0  # empty max: vacuously aligned


def test_zero_vector_has_cosine_zero():
    e = np.array([[0.0, 0.0], [0.0, 1.0]])
    f = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert cosine_matrix(e, f)[0].tolist() == [0.0, 0.0]
    assert mexa_score(e, f) == reference_mexa(e, f) == 0.5


def test_torch_input_and_errors():
    t = torch.randn(5, 4)
    assert mexa_score(t, t) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        mexa_score(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        mexa_score(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        mexa_score(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least one"):
        mexa_score(np.ones((0, 2)), np.ones((0, 2)))


def test_duplicates_at_any_position_tie_exactly():
    # bit-identical normalised vectors must tie whatever BLAS does with the column position
    rng = np.random.default_rng(1)
    f = rng.normal(size=(37, 13))
    f[29] = f[3]
    e = f + 0.01 * rng.normal(size=f.shape)
    sim = cosine_matrix(e, f)
    assert np.array_equal(sim[:, 3], sim[:, 29])
    aligned = mexa_aligned(e, f)
    assert not aligned[3] and not aligned[29]
    assert mexa_score(e, f) == reference_mexa(e, f)


# ----------------------------------------------------------------------------- properties

def _tie_heavy(n: int, d: int):
    """Signed one-hots scaled by powers of two: cosines are exactly -1, 0 or 1 (many ties)."""
    vec = st.tuples(st.integers(0, d - 1), st.sampled_from([-4.0, -1.0, 0.5, 1.0, 2.0]))

    def build(items):
        out = np.zeros((n, d))
        for row, (axis, scale) in enumerate(items):
            out[row, axis] = scale
        return out

    return st.lists(vec, min_size=n, max_size=n).map(build)


@st.composite
def tie_heavy_pairs(draw):
    n = draw(st.integers(1, 7))
    d = draw(st.integers(1, 5))
    return draw(_tie_heavy(n, d)), draw(_tie_heavy(n, d))


@settings(max_examples=200, deadline=None)
@given(tie_heavy_pairs())
def test_matches_reference_with_ties(pair):
    pivot, lang = pair
    assert mexa_score(pivot, lang) == reference_mexa(pivot, lang)


@st.composite
def gaussian_pairs(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pivot = rng.normal(size=(n, d))
    lang = pivot + draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])) * rng.normal(size=(n, d))
    dup = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3))
    for a, b in dup:  # exact duplicates on either side: ties by construction
        lang[b] = lang[a]
        pivot[a] = pivot[b] if seed % 2 else pivot[a]
    return pivot, lang


@settings(max_examples=100, deadline=None)
@given(gaussian_pairs())
def test_matches_reference_random(pair):
    pivot, lang = pair
    assert mexa_score(pivot, lang) == reference_mexa(pivot, lang)


# ----------------------------------------------------------------------------- the evaluator

LANGS = ["eng_Latn", "deu_Latn", "fra_Latn", "cpy_Latn"]  # cpy_Latn: a copy of English
N_SENT = 24


def _corpus(seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    syll = ["ka", "to", "mi", "ra", "ne", "lu", "sa", "po", "di", "ver", "haus", "que", "la"]
    out = {}
    for lang in ("eng_Latn", "deu_Latn", "fra_Latn"):
        words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(60)]
        out[lang] = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                     for _ in range(N_SENT)]
    out["cpy_Latn"] = list(out["eng_Latn"])
    return out


@pytest.fixture(scope="module")
def flores_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flores")
    (folder / "devtest").mkdir()
    for lang, lines in _corpus().items():
        (folder / "devtest" / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_model(flores_dir):
    from clse.data.tokenizer import train_tokenizer
    from clse.eval.model import EvalModel
    from tests.conftest import tiny_xlmr

    texts = [s for lines in _corpus().values() for s in lines]
    tokenizer = train_tokenizer(texts, 200)
    model = tiny_xlmr(vocab_size=len(tokenizer), hidden=32, layers=2, heads=2).eval()
    return EvalModel(model, tokenizer, "cls", name="tiny", max_length=64)


def _evaluator(flores_dir, **overrides):
    from clse.plugins import registry

    cfg = {"name": "mexa", "source": str(flores_dir), "progress": False, **overrides}
    return registry().build("evaluator", cfg)


def test_mexa_evaluator_end_to_end(tiny_model, flores_dir, tmp_path):
    from clse.eval.analyses import pool_states
    from clse.plugins import registry

    downstream = tmp_path / "scores.tsv"
    downstream.write_text("# a comment\nlang\tbelebele\ndeu_Latn\t0.31\nfra_Latn\t0.45\n"
                          "cpy_Latn\t0.93\nzzz_Latn\t0.5\n", encoding="utf-8")
    ev = _evaluator(flores_dir, max_sentences=20, pooling="weighted_mean",
                    downstream=str(downstream))
    out = tmp_path / "out"
    metrics = ev(tiny_model, "devtest", out_dir=out)

    layers = tiny_model.num_layers + 1  # embedding layer included
    others = ["cpy_Latn", "deu_Latn", "fra_Latn"]  # every language of the folder but English
    expected = {f"mexa/{lang}/{p}" for lang in [*others, "avg"] for p in ("mean", "max")}
    expected |= {f"mexa/layer{k}/avg" for k in range(layers)}
    expected |= {"mexa/pearson/mean", "mexa/pearson/max", "mexa/pearson/n"}
    assert set(metrics) == expected
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if "pearson" not in k)
    # an exact copy of English is perfectly aligned at every layer
    assert metrics["mexa/cpy_Latn/mean"] == metrics["mexa/cpy_Latn/max"] == 1.0

    # per-layer scores equal mexa_score on the pooled layer states
    sample = {lang: (flores_dir / "devtest" / f"{lang}.txt").read_text().split("\n")[:20]
              for lang in ("eng_Latn", "deu_Latn")}
    pool = registry().build("pooling", {"name": "weighted_mean"})
    eng = pool_states(tiny_model, sample["eng_Latn"], {"p": pool})["p"]
    deu = pool_states(tiny_model, sample["deu_Latn"], {"p": pool})["p"]
    per_layer = [mexa_score(eng[k], deu[k]) for k in range(layers)]
    assert metrics["mexa/deu_Latn/mean"] == pytest.approx(np.mean(per_layer))
    assert metrics["mexa/deu_Latn/max"] == pytest.approx(max(per_layer))

    # Pearson over the 3 shared languages (zzz_Latn has no MEXA score)
    from scipy.stats import pearsonr

    x = [metrics[f"mexa/{lang}/mean"] for lang in ("deu_Latn", "fra_Latn", "cpy_Latn")]
    if np.ptp(x) > 0:
        want = pearsonr(x, [0.31, 0.45, 0.93]).statistic
        assert metrics["mexa/pearson/mean"] == pytest.approx(want)
    assert metrics["mexa/pearson/n"] == 3

    table = json.loads((out / "mexa.json").read_text())
    assert table["per_layer"]["deu_Latn"] == pytest.approx(per_layer)
    assert table["n_sentences"] == 20 and table["layers"] == layers
    tsv = (out / "mexa.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["lang", *(f"layer{k}" for k in range(layers)), "mean", "max"]
    assert len(tsv) == 1 + len(others)
    assert (out / "mexa_layers.png").stat().st_size > 1000
    assert (out / "mexa_vs_downstream.png").is_file()


@pytest.mark.parametrize("pooling", ["last_token", "cls", "mean"])
def test_mexa_evaluator_poolings_and_languages(tiny_model, flores_dir, pooling):
    ev = _evaluator(flores_dir, max_sentences=10, pooling=pooling, languages=["cpy_Latn"])
    metrics = ev(tiny_model, "devtest")
    assert metrics["mexa/cpy_Latn/max"] == 1.0
    if pooling == "cls":  # layer 0 at position 0 is the same <s> embedding for every sentence:
        assert metrics["mexa/layer0/avg"] == 0.0  # all pairs tie, none is aligned
    if pooling == "mean":
        assert metrics["mexa/cpy_Latn/mean"] == 1.0
    per_language = {k for k in metrics if not k.startswith(("mexa/layer", "mexa/avg"))}
    assert per_language == {"mexa/cpy_Latn/mean", "mexa/cpy_Latn/max"}


def test_mexa_config_errors(flores_dir, tmp_path):
    with pytest.raises(ConfigError, match="max_sentences"):
        _evaluator(flores_dir, max_sentences=1)
    with pytest.raises(ClseError, match="not found"):
        _evaluator(flores_dir, downstream=str(tmp_path / "missing.tsv"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("deu_Latn\t0.1\nfra_Latn\tlots\n", encoding="utf-8")
    with pytest.raises(ClseError, match="not a number"):
        _evaluator(flores_dir, downstream=str(bad))


def test_too_few_downstream_languages_warns(tiny_model, flores_dir, tmp_path):
    scores = tmp_path / "two.tsv"
    scores.write_text("deu_Latn\t0.1\nfra_Latn\t0.2\n", encoding="utf-8")
    ev = _evaluator(flores_dir, max_sentences=8, downstream=str(scores))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = ev(tiny_model, "devtest")
    assert not any("pearson" in k for k in metrics)
    assert any("only 2 languages" in str(w.message) for w in caught)


def test_mexa_config_file_composes():
    from hydra import compose, initialize_config_module

    from clse.config import setup

    setup()
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["model=x", "eval=[mexa,analyses]"])
    evaluators = cfg.eval.evaluators
    assert set(evaluators) == {"mexa", "token_matching", "cls_attention", "pooling_compare"}
    assert evaluators.mexa.pooling == "weighted_mean" and evaluators.mexa.max_sentences == 100
