"""Multi-way loading, evaluate_xsim and the xsim evaluator plugin."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from clse.errors import ClseError, ConfigError, DataError
from clse.eval.flores import BUNDLED_DIR, bundled_languages, evaluate_xsim, load_multiway
from clse.paths import data_root
from clse_plugins.xsim_flores import XsimConfig, XsimEvaluator, clse_evaluators

BUNDLED = ["deu_Latn", "eng_Latn", "fra_Latn", "ita_Latn", "nld_Latn", "pol_Latn", "por_Latn",
           "spa_Latn"]


def char_ngram_encode(texts, dim: int = 2048) -> np.ndarray:
    """A deterministic bag of character 3-grams, hashed: shares names, numbers, cognates."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()}  "
        for i in range(len(padded) - 2):
            out[row, zlib.crc32(padded[i:i + 3].encode()) % dim] += 1.0
    return out


class NgramEncoder:
    def __init__(self):
        self.calls: list[int] = []

    def encode(self, sentences, batch_size: int = 64) -> np.ndarray:
        self.calls.append(len(sentences))
        return char_ngram_encode(list(sentences))


def write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


# --------------------------------------------------------------------------- load_multiway

def test_load_multiway(tmp_path):
    write(tmp_path / "eng_Latn.txt", ["a", "b\u2028c", ""])  # U+2028 is not a line break here
    write(tmp_path / "deu_Latn.txt", ["x", "y", "z"])
    got = load_multiway(tmp_path, ["deu_Latn", "eng_Latn"])
    assert list(got) == ["deu_Latn", "eng_Latn"]
    assert got["eng_Latn"] == ["a", "b\u2028c", ""]


def test_load_multiway_missing_file(tmp_path):
    write(tmp_path / "eng_Latn.txt", ["a"])
    with pytest.raises(DataError, match="fra_Latn") as info:
        load_multiway(tmp_path, ["eng_Latn", "fra_Latn"])
    assert info.value.path == str(tmp_path / "fra_Latn.txt")


def test_load_multiway_unequal_lengths(tmp_path):
    write(tmp_path / "eng_Latn.txt", ["a", "b", "c"])
    write(tmp_path / "deu_Latn.txt", ["x", "y"])
    with pytest.raises(DataError, match="has 2 lines but .*eng_Latn.txt has 3") as info:
        load_multiway(tmp_path, ["eng_Latn", "deu_Latn"])
    assert info.value.path == str(tmp_path / "deu_Latn.txt")


def test_bundled_set_is_multiway():
    assert bundled_languages() == BUNDLED
    sents = load_multiway(BUNDLED_DIR, BUNDLED)
    assert {len(s) for s in sents.values()} == {200}
    assert all(line.strip() for s in sents.values() for line in s)
    assert (BUNDLED_DIR / "README.md").is_file()


# --------------------------------------------------------------------------- evaluate_xsim

def test_evaluate_xsim_on_bundled_set():
    sents = load_multiway(BUNDLED_DIR, BUNDLED)
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return char_ngram_encode(texts)

    metrics = evaluate_xsim(encode, sents, progress=False)
    langs = [lang for lang in BUNDLED if lang != "eng_Latn"]
    assert list(metrics) == [f"xsim/{lang}" for lang in langs] + ["xsim/avg"]
    assert len(calls) == len(BUNDLED)  # target and each language encoded once
    rates = [metrics[f"xsim/{lang}"] for lang in langs]
    assert all(0 <= r < 100 for r in rates)
    assert metrics["xsim/avg"] == pytest.approx(np.mean(rates))
    assert metrics["xsim/avg"] < 90  # the n-gram encoder finds many translations
    # a subset, and identical encodings of the target itself give no error
    same = evaluate_xsim(encode, {"eng_Latn": sents["eng_Latn"], "x": sents["eng_Latn"]},
                         progress=False)
    assert same == {"xsim/x": 0.0, "xsim/avg": 0.0}


def test_evaluate_xsim_errors():
    sents = {"eng_Latn": ["a", "b"], "deu_Latn": ["c", "d"], "fra_Latn": ["e"]}
    with pytest.raises(ClseError, match="target language 'spa_Latn'"):
        evaluate_xsim(char_ngram_encode, sents, target="spa_Latn", progress=False)
    with pytest.raises(ClseError, match="ita_Latn"):
        evaluate_xsim(char_ngram_encode, sents, languages=["ita_Latn"], progress=False)
    with pytest.raises(ClseError, match="multi-way"):
        evaluate_xsim(char_ngram_encode, sents, languages=["fra_Latn"], k=1, progress=False)
    with pytest.raises(ClseError, match="returned 1 embeddings"):
        evaluate_xsim(lambda t: np.ones((1, 3)), sents, languages=["deu_Latn"], progress=False)


# --------------------------------------------------------------------------- the plugin

def test_plugin_spec():
    (spec,) = clse_evaluators()
    assert (spec.kind, spec.name, spec.factory, spec.config) == (
        "evaluator", "xsim", XsimEvaluator, XsimConfig)
    cfg = XsimConfig()
    assert cfg.name == "xsim" and len(cfg.languages) == 10 and cfg.target == "eng_Latn"


def test_plugin_registered_through_entry_point():
    from clse.plugins import registry, reset_registry

    reset_registry()
    assert registry().get("evaluator", "xsim").factory is XsimEvaluator


def test_plugin_falls_back_to_bundled(tmp_path, monkeypatch):
    monkeypatch.setenv("CLSE_DATA", str(tmp_path))  # a data root without flores200/
    encoder = NgramEncoder()
    evaluator = XsimEvaluator(XsimConfig(max_sentences=50))
    with pytest.warns(UserWarning, match="bundled"):
        metrics = evaluator(encoder, "devtest")
    langs = ["deu_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "por_Latn", "nld_Latn", "pol_Latn"]
    assert list(metrics) == [f"xsim/{lang}" for lang in langs] + ["xsim/avg"]
    assert encoder.calls == [50] * 8
    assert metrics["xsim/avg"] < 100


def test_language_groups_add_their_means(tmp_path, monkeypatch):
    monkeypatch.setenv("CLSE_DATA", str(tmp_path))
    groups = {"romance": ["fra_Latn", "spa_Latn", "ita_Latn"], "other": ["deu_Latn", "rus_Cyrl"]}
    evaluator = XsimEvaluator(XsimConfig(source="bundled", max_sentences=40, groups=groups))
    with pytest.warns(UserWarning, match="bundled"):
        metrics = evaluator(NgramEncoder(), "devtest")
    romance = [metrics[f"xsim/{lang}"] for lang in groups["romance"]]
    assert metrics["xsim/avg_romance"] == pytest.approx(sum(romance) / 3)
    assert metrics["xsim/avg_other"] == pytest.approx(metrics["xsim/deu_Latn"])  # no bundled rus
    bad = XsimEvaluator(XsimConfig(source="bundled", max_sentences=40,
                                   groups={"x": ["tha_Thai"]}))
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="not among the evaluated"):
        bad(NgramEncoder(), "devtest")


def test_plugin_folder_source(tmp_path):
    sents = load_multiway(BUNDLED_DIR, ["eng_Latn", "fra_Latn", "deu_Latn"])
    for split in ("dev", None):
        folder = tmp_path / (split or "flat")
        folder.mkdir()
        for lang, lines in sents.items():
            write(folder / f"{lang}.txt", lines[:30])
    cfg = XsimConfig(source=str(tmp_path), languages=["fra_Latn", "deu_Latn"])
    assert set(XsimEvaluator(cfg)(NgramEncoder(), "dev")) == {
        "xsim/fra_Latn", "xsim/deu_Latn", "xsim/avg"}
    cfg = XsimConfig(source=str(tmp_path / "flat"), languages=["fra_Latn"], margin="absolute")
    assert set(XsimEvaluator(cfg)(NgramEncoder(), "devtest")) == {"xsim/fra_Latn", "xsim/avg"}
    with pytest.raises(DataError, match="rus_Cyrl"):
        XsimEvaluator(XsimConfig(source=str(tmp_path), languages=["rus_Cyrl"]))(
            NgramEncoder(), "dev")
    with pytest.raises(ClseError, match="not a folder"):
        XsimEvaluator(XsimConfig(source=str(tmp_path / "nope")))(NgramEncoder(), "dev")


def test_plugin_requires_flores(tmp_path, monkeypatch):
    monkeypatch.setenv("CLSE_DATA", str(tmp_path))
    with pytest.raises(ClseError, match="CLSE_DATA"):
        XsimEvaluator(XsimConfig(source="flores200"))(NgramEncoder(), "dev")


@pytest.mark.parametrize("kwargs", [{"margin": "cos"}, {"k": 0}, {"max_sentences": 0}])
def test_plugin_config_validation(kwargs):
    with pytest.raises(ConfigError):
        XsimEvaluator(XsimConfig(**kwargs))


# --------------------------------------------------------------------------- real FLORES

@pytest.mark.shared_data
def test_flores_dev_with_ngram_encoder():
    root = data_root()
    if root is None or not (root / "flores200" / "dev").is_dir():
        pytest.skip("FLORES-200 dev not found (set CLSE_DATA or run beside shared/data)")
    evaluator = XsimEvaluator(XsimConfig(source="flores200", languages=["deu_Latn", "fra_Latn",
                                                                         "rus_Cyrl"]))
    encoder = NgramEncoder()
    metrics = evaluator(encoder, "dev")
    assert encoder.calls == [997] * 4
    # Latin-script languages share many n-grams with English; Cyrillic shares almost none
    assert metrics["xsim/deu_Latn"] < 80 and metrics["xsim/fra_Latn"] < 80
    assert metrics["xsim/rus_Cyrl"] > metrics["xsim/deu_Latn"]
    assert metrics["xsim/avg"] == pytest.approx(np.mean([metrics[f"xsim/{x}"] for x in
                                                         ("deu_Latn", "fra_Latn", "rus_Cyrl")]))
