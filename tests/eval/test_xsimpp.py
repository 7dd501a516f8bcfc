"""xsim++: error typing on a hand-made augmented set, file reading, the hard-negative generator."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from clse.errors import ClseError, ConfigError, DataError
from clse.eval.hard_negatives import (ERROR_TYPES, generate_hard_negatives, main,
                                      write_augmented)
from clse.eval.xsimpp import (MISALIGNED, Augmented, evaluate_xsimpp, load_augmented,
                              metric_name, xsimpp)
from clse_plugins.xsimpp import XsimppConfig, XsimppEvaluator

# ----------------------------------------------------------------------------- a known case
# Six English targets t0..t5 on orthonormal axes; sources are the targets, nudged towards the
# augmented sentence (or other target) that each one must pick. With plain cosine (absolute) the
# picks are, by construction:
#   x0 -> a0 (number variant of t0)      error, type number
#   x1 -> a1 (entity variant of t1)      error, type entity
#   x2 -> a2 (a variant of t3, not t2)   error, misaligned
#   x3 -> t4 (another original)          error, misaligned
#   x4 -> t4, x5 -> t5                   correct (a3, a variant of t5, is further away)

ENG = [f"English sentence {i}." for i in range(6)]
AUG_TEXTS = ["English sentence 0 with 7.", "English sentence 1 with Paris.",
             "English sentence 3 turned.", "English sentence 5 negated."]
AUG_TYPES = ["number", "entity", "causality", "causality"]
AUG_SRCS = [ENG[0], ENG[1], ENG[3], ENG[5]]
DIM = 12


def _axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    return v


TGT = np.stack([_axis(i) for i in range(6)])
AUG = np.stack([_axis(0) + 0.8 * _axis(6), _axis(1) + 0.8 * _axis(7),
                _axis(3) + 0.8 * _axis(8), _axis(5) + 0.9 * _axis(9)])
SRC = np.stack([_axis(0) + 0.8 * _axis(6), _axis(1) + 0.8 * _axis(7),
                0.3 * _axis(2) + _axis(8), 0.2 * _axis(3) + _axis(4),
                _axis(4), _axis(5)])
EXPECTED = {"number": 1, "entity": 1, "causality": 0, MISALIGNED: 2}


def known_augmented() -> Augmented:
    return Augmented(list(AUG_TEXTS), list(AUG_TYPES), list(AUG_SRCS), "hand-made")


def test_error_typing_on_a_known_case():
    res = xsimpp(SRC, TGT, AUG, known_augmented(), ENG, margin="absolute")
    assert (res.errors, res.n) == (4, 6)
    assert res.by_type == EXPECTED
    assert sum(res.by_type.values()) == res.errors
    assert res.rate == pytest.approx(100 * 4 / 6)


def test_without_augmented_targets_it_is_xsim():
    """Without the augmented rows only x3 -> t4 is wrong: x0, x1 and x2 find their gold."""
    empty = Augmented([], [], [], "none", ["number"])
    res = xsimpp(SRC, TGT, np.zeros((0, DIM), np.float32), empty, ENG, margin="absolute")
    assert res.errors == 1 and res.by_type == {"number": 0, MISALIGNED: 1}


def test_text_mode_forgives_a_duplicate_gold():
    eng = list(ENG)
    eng[4] = eng[3]  # t3 and t4 have the same text: x3 -> t4 is no error when texts are compared
    res_idx = xsimpp(SRC, TGT, AUG, known_augmented(), eng, margin="absolute")
    res_txt = xsimpp(SRC, TGT, AUG, known_augmented(), eng, margin="absolute", eval_text=True)
    assert res_idx.errors == 4 and res_txt.errors == 3


class LookupEncoder:
    """Encodes the hand-made sentences with the vectors above (any other text is an error)."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, sentences, batch_size: int = 64):
        return np.stack([self.table[s] for s in sentences])


def _table(src_texts):
    return {**dict(zip(ENG, TGT)), **dict(zip(AUG_TEXTS, AUG)), **dict(zip(src_texts, SRC))}


def test_evaluate_xsimpp_metrics():
    de = [f"Deutscher Satz {i}." for i in range(6)]
    fr = [f"Phrase française {i}." for i in range(6)]
    table = {**_table(de), **dict(zip(fr, TGT))}  # French: exact copies of the targets
    enc = LookupEncoder(table)
    metrics, rows = evaluate_xsimpp(lambda texts, label: enc.encode(texts),
                                    {"eng_Latn": ENG, "deu_Latn": de, "fra_Latn": fr},
                                    known_augmented(), margin="absolute", progress=False)
    assert metrics["xsimpp/deu_Latn"] == pytest.approx(100 * 4 / 6)
    assert metrics["xsimpp/fra_Latn"] == 0.0
    assert metrics["xsimpp/avg"] == pytest.approx(100 * 4 / 6 / 2)
    assert metrics["xsimpp/type/number"] == pytest.approx(100 / 6 / 2)
    assert metrics["xsimpp/type/misaligned"] == pytest.approx(200 / 6 / 2)
    assert metrics["xsimpp/type/causality"] == 0.0
    types = sum(v for k, v in metrics.items() if "/type/" in k)
    assert types == pytest.approx(metrics["xsimpp/avg"])
    assert rows[0]["errors_entity"] == 1 and rows[1]["errors"] == 0


def test_evaluate_xsimpp_rejects_files_of_another_split():
    other = Augmented(["x"], ["number"], ["a sentence of another split"], "other")
    with pytest.raises(ClseError, match="another split"):
        evaluate_xsimpp(lambda t, label: np.ones((len(t), 2)), {"eng_Latn": ENG, "deu": ENG},
                        other, progress=False)


def test_metric_name():
    assert metric_name("Entity Replacement") == "entity_replacement"
    assert metric_name("number") == "number"


# ----------------------------------------------------------------------------- files + plugin

def write_official(folder, texts=AUG_TEXTS, types=AUG_TYPES, srcs=AUG_SRCS):
    folder.mkdir(parents=True, exist_ok=True)
    aug = folder / "eng_Latn_augmented.devtest"
    js = folder / "eng_Latn_errtype.devtest.json"
    aug.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
    js.write_text(json.dumps({t: {"errtype": e, "src": s} for t, e, s in zip(texts, types, srcs)}),
                  encoding="utf-8")
    return aug, js


def test_load_augmented_round_trip(tmp_path):
    aug = load_augmented(*write_official(tmp_path))
    assert aug.texts == AUG_TEXTS and aug.errtypes == AUG_TYPES and aug.srcs == AUG_SRCS
    assert aug.types == ["causality", "entity", "number"]


def test_load_augmented_line_missing_from_json(tmp_path, caplog):
    aug_file, js = write_official(tmp_path)
    with aug_file.open("a", encoding="utf-8") as f:
        f.write("a sentence the json does not know\n")
    with caplog.at_level(logging.WARNING, logger="clse.eval"):
        aug = load_augmented(aug_file, js)
    assert aug.srcs[-1] is None and "line 5" in caplog.text


@pytest.mark.parametrize("content, match", [
    ('{"a": {"errtype": "number"}', "invalid JSON"),
    ('["a", "b"]', "top level is a list"),
    ('{"a": {"errtype": 3, "src": "b"}}', "entry 'a'"),
])
def test_load_augmented_bad_json(tmp_path, content, match):
    aug_file, js = write_official(tmp_path)
    js.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as info:
        load_augmented(aug_file, js)
    assert info.value.path == str(js)


def test_load_augmented_empty_line(tmp_path):
    aug_file, js = write_official(tmp_path)
    aug_file.write_text("first\n\nthird\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"augmented.devtest:2: empty line"):
        load_augmented(aug_file, js)


def test_plugin_needs_the_official_files():
    with pytest.raises(ClseError, match="dl.fbaipublicfiles.com/nllb/laser/xsimplusplus") as info:
        XsimppEvaluator(XsimppConfig())
    assert "source=generated" in str(info.value)


def test_plugin_official_files_not_found(tmp_path):
    ev = XsimppEvaluator(XsimppConfig(augmented_file=str(tmp_path / "nope.devtest"),
                                      errtype_file=str(tmp_path / "nope.json"), data=str(tmp_path)))
    (tmp_path / "eng_Latn.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "deu_Latn.txt").write_text("b\n", encoding="utf-8")
    with pytest.raises(ClseError, match="nope.devtest, .*nope.json not found"):
        ev(LookupEncoder({}), "devtest")


@pytest.mark.parametrize("kwargs", [{"source": "meta"}, {"margin": "cosine"}, {"k": 0},
                                    {"source": "generated", "types": ["antonym"]}])
def test_plugin_config_validation(kwargs):
    with pytest.raises(ConfigError):
        XsimppEvaluator(XsimppConfig(**{"augmented_file": "a", "errtype_file": "b", **kwargs}))


def _flores_folder(tmp_path):
    data = tmp_path / "flores" / "devtest"
    data.mkdir(parents=True)
    de = [f"Deutscher Satz {i}." for i in range(6)]
    (data / "eng_Latn.txt").write_text("".join(f"{s}\n" for s in ENG), encoding="utf-8")
    (data / "deu_Latn.txt").write_text("".join(f"{s}\n" for s in de), encoding="utf-8")
    return tmp_path / "flores", de


def test_plugin_official_mode_end_to_end(tmp_path):
    data, de = _flores_folder(tmp_path)
    aug_file, js = write_official(tmp_path / "xsimpp")
    ev = XsimppEvaluator(XsimppConfig(augmented_file=str(aug_file), errtype_file=str(js),
                                      data=str(data), margin="absolute", progress=False))
    out = tmp_path / "out"
    metrics = ev(LookupEncoder(_table(de)), "devtest", out_dir=out)
    assert metrics["xsimpp/deu_Latn"] == pytest.approx(100 * 4 / 6)
    assert {k: round(v * 6 / 100) for k, v in metrics.items() if "/type/" in k} == {
        f"xsimpp/type/{t}": c for t, c in EXPECTED.items()}
    table = (out / "xsimpp.tsv").read_text(encoding="utf-8").splitlines()
    assert table[0].startswith("# xsim++") and table[2].split("\t")[:3] == ["deu_Latn", "6", "4"]


def test_plugin_generated_mode_is_labelled(tmp_path):
    data, de = _flores_folder(tmp_path)

    class HashEncoder:  # any text -> a fixed pseudo-random vector
        def encode(self, sentences, batch_size=64):
            return np.stack([np.random.default_rng(abs(hash(s)) % 2**32).standard_normal(8)
                             for s in sentences]).astype(np.float32)

    eng = ["Tom met Anna in Paris in 1990.", "It rained because it was cold.",
           "Anna flew to Berlin with two friends.", "The museum is open.",
           "We saw 12 birds near Berlin.", "Tom did not come."]
    (data / "devtest" / "eng_Latn.txt").write_text("".join(f"{s}\n" for s in eng), "utf-8")
    ev = XsimppEvaluator(XsimppConfig(source="generated", data=str(data), progress=False))
    with pytest.warns(UserWarning, match="NOT comparable"):
        metrics = ev(HashEncoder(), "devtest", out_dir=tmp_path / "out")
    assert metrics and all(k.startswith("xsimpp_generated/") for k in metrics)
    assert {"xsimpp_generated/type/number", "xsimpp_generated/type/entity",
            "xsimpp_generated/type/causality"} <= set(metrics)
    gen = tmp_path / "out" / "generated" / "devtest_augmented"
    assert "NOT the official" in (gen / "NOTE.md").read_text(encoding="utf-8")
    assert "NOT" in (tmp_path / "out" / "xsimpp_generated.tsv").read_text("utf-8").splitlines()[0]
    aug = load_augmented(gen / "eng_Latn_augmented.devtest", gen / "eng_Latn_errtype.devtest.json")
    assert set(aug.srcs) <= set(eng) and len(aug.texts) >= 6


# ----------------------------------------------------------------------------- generator

CORPUS = ["Yesterday Maria visited Paris with Tom.",
          "The mayor of Berlin met Angela Merkel in 2015.",
          "They flew from Paris to Berlin because the trains were on strike.",
          "He didn't sign the contract before the meeting.",
          "Because it rained, three games and 1,250 tickets were cancelled."]


def test_generator_is_deterministic():
    a = generate_hard_negatives(CORPUS, seed=3, per_type=3)
    assert a == generate_hard_negatives(CORPUS, seed=3, per_type=3)
    assert a != generate_hard_negatives(CORPUS, seed=4, per_type=3)  # numbers and picks move


def test_causality_swaps_are_exact():
    negs = generate_hard_negatives(["He stayed home because it was raining.",
                                    "She didn't go.", "Because of rain, less people came."],
                                   types=["causality"], per_type=10)
    got = {(n.index, n.text) for n in negs}
    assert got == {(0, "He stayed home although it was raining."),
                   (0, "He stayed home because it was not raining."),
                   (1, "She did go."),
                   (2, "Despite rain, less people came."),
                   (2, "Because of rain, more people came.")}
    assert all(n.errtype == "causality" for n in negs)


def test_number_substitutions():
    negs = generate_hard_negatives(CORPUS, types=["number"], per_type=10)
    by_src: dict[int, list[str]] = {}
    for n in negs:
        assert n.errtype == "number" and n.text != n.src
        by_src.setdefault(n.index, []).append(n.text)
    assert set(by_src) == {1, 4}  # the sentences with a number
    (year,) = by_src[1]
    assert year.startswith("The mayor of Berlin met Angela Merkel in ") and year[-5:-1] != "2015"
    assert 1985 <= int(year[-5:-1]) <= 2045  # years stay plausible
    texts = by_src[4]
    assert len(texts) == 2  # "three" and "1,250"
    assert any(t.startswith("Because it rained, three games and ") and "1,250" not in t
               and t.count(",") == 2 for t in texts)  # same digit grouping
    assert any("1,250 tickets" in t and "three" not in t for t in texts)


def test_entity_substitutions():
    negs = generate_hard_negatives(CORPUS, types=["entity"], per_type=10)
    pool1 = {"Paris", "Tom", "Berlin"}  # "Yesterday Maria" starts the sentence: not used
    for n in negs:
        assert n.errtype == "entity"
        old = [w for w in n.src.rstrip(".").split() if w not in n.text.rstrip(".").split()]
        new = [w for w in n.text.rstrip(".").split() if w not in n.src.rstrip(".").split()]
        if old == ["Angela", "Merkel"]:
            pytest.fail("a two-word entity needs another two-word run; the corpus has none")
        assert len(old) == len(new) == 1 and old[0] in pool1 and new[0] in pool1, n
    first = {n.text for n in negs if n.index == 0}
    assert "Yesterday Maria visited Berlin with Tom." in first
    assert not any(n.text.startswith(("Berlin", "Paris", "Tom")) for n in negs)  # initial words


def test_variants_never_equal_an_original():
    corpus = ["It is open.", "It is not open."]  # toggling one gives the other
    negs = generate_hard_negatives(corpus, types=["causality"], per_type=5)
    assert not {n.text for n in negs} & set(corpus)
    assert {n.text for n in negs} == {"It is closed.", "It is not closed."}


def test_generator_options():
    with pytest.raises(ConfigError, match="antonym"):
        generate_hard_negatives(CORPUS, types=["antonym"])
    with pytest.raises(ConfigError):
        generate_hard_negatives(CORPUS, per_type=0)
    assert set(ERROR_TYPES) == {"number", "entity", "causality"}


def test_write_augmented_official_layout(tmp_path):
    negs = generate_hard_negatives(CORPUS, per_type=2)
    aug_file, js = write_augmented(negs, tmp_path, split="dev")
    assert aug_file == tmp_path / "dev_augmented" / "eng_Latn_augmented.dev"
    assert js == tmp_path / "dev_augmented" / "eng_Latn_errtype.dev.json"
    aug = load_augmented(aug_file, js)
    assert aug.texts == [n.text for n in negs] and aug.srcs == [n.src for n in negs]
    assert set(aug.types) == set(ERROR_TYPES)


def test_cli(tmp_path, capsys):
    src = tmp_path / "eng.txt"
    src.write_text("".join(f"{s}\n" for s in CORPUS), encoding="utf-8")
    main([str(src), str(tmp_path / "out"), "--seed", "1", "--types", "number,causality"])
    assert "variants of 5 sentences" in capsys.readouterr().out
    table = json.loads((tmp_path / "out" / "devtest_augmented" /
                        "eng_Latn_errtype.devtest.json").read_text(encoding="utf-8"))
    assert {v["errtype"] for v in table.values()} == {"number", "causality"}
