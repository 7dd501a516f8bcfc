"""Tatoeba: both directions on a hand-made set, file errors, languages, the real v1 files."""

from __future__ import annotations

import numpy as np
import pytest

from clse.errors import ClseError, ConfigError, DataError
from clse.eval.tatoeba import (LangmapRow, available_codes, evaluate_tatoeba, load_langmap,
                               load_pair, resolve_languages, retrieval_errors)
from clse.paths import data_root
from clse_plugins.tatoeba import TatoebaConfig, TatoebaEvaluator

# ----------------------------------------------------------------------------- a known case
# Unit vectors u0..u5. By construction (cosine nearest neighbour):
#   X -> eng: x2 = 0.6 u2 + 0.8 u3 is closer to e3 (0.8) than to e2 (0.6): 1 error of 6
#   eng -> X: e4 = 0.9 u0 + 0.436 u4 is closer to x0 (0.9) than to x4 (0.436), likewise e5 -> x1:
#             2 errors of 6


def _u(i: int) -> np.ndarray:
    v = np.zeros(6, np.float32)
    v[i] = 1.0
    return v


X_VEC = [_u(0), _u(1), 0.6 * _u(2) + 0.8 * _u(3), _u(3), _u(4), _u(5)]
E_VEC = [_u(0), _u(1), _u(2), _u(3), 0.9 * _u(0) + 0.436 * _u(4), 0.9 * _u(1) + 0.436 * _u(5)]
X_TXT = [f"xx {i}" for i in range(6)]
E_TXT = [f"en {i}" for i in range(6)]


class LookupEncoder:
    def __init__(self, table):
        self.table = table
        self.calls = 0

    def encode(self, sentences, batch_size: int = 64):
        self.calls += 1
        return np.stack([self.table[s] for s in sentences])


def write_pair(folder, code, x_lines, e_lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"tatoeba.{code}-eng.{code}").write_text("".join(f"{s}\n" for s in x_lines),
                                                       encoding="utf-8")
    (folder / f"tatoeba.{code}-eng.eng").write_text("".join(f"{s}\n" for s in e_lines),
                                                    encoding="utf-8")


@pytest.fixture
def known(tmp_path):
    folder = tmp_path / "v1"
    write_pair(folder, "xxx", X_TXT, E_TXT)
    write_pair(folder, "yyy", E_TXT, E_TXT)  # a perfect language: the same vectors both sides
    return folder, LookupEncoder({**dict(zip(X_TXT, X_VEC)), **dict(zip(E_TXT, E_VEC))})


def test_both_directions_on_a_known_case(known):
    folder, enc = known
    metrics, rows = evaluate_tatoeba(enc, folder, ["xxx", "yyy"], progress=False)
    assert metrics["tatoeba/xxx/x2e"] == pytest.approx(100 / 6)
    assert metrics["tatoeba/xxx/e2x"] == pytest.approx(200 / 6)
    assert metrics["tatoeba/yyy/x2e"] == 0.0 and metrics["tatoeba/yyy/e2x"] == 0.0
    assert metrics["tatoeba/avg/x2e"] == pytest.approx(100 / 12)
    assert metrics["tatoeba/avg/e2x"] == pytest.approx(200 / 12)
    assert metrics["tatoeba/avg/both"] == pytest.approx(300 / 24)
    assert metrics["tatoeba/avg/accuracy"] == pytest.approx(100 - 300 / 24)
    assert rows[0] == {"language": "xxx", "pairs": 6, "x2e_errors": 1, "e2x_errors": 2,
                       "x2e": pytest.approx(100 / 6), "e2x": pytest.approx(200 / 6)}


def test_retrieval_errors_modes():
    x, e = np.stack(X_VEC), np.stack(E_VEC)
    assert retrieval_errors(x, e) == 1 and retrieval_errors(e, x) == 2
    dup = list(E_TXT)
    dup[3] = dup[2]  # x2 picks e3, whose text equals its gold e2: forgiven when comparing texts
    assert retrieval_errors(x, e, tgt_texts=dup) == 0
    # the ratio margin is available and runs on the same data (k is clipped to n by the caller)
    assert 0 <= retrieval_errors(x, e, margin="ratio", k=2) <= 6


def test_plugin_end_to_end_with_table(known, tmp_path):
    folder, enc = known
    ev = TatoebaEvaluator(TatoebaConfig(source=str(folder), languages=["xxx"], progress=False))
    metrics = ev(enc, "ignored split", out_dir=tmp_path / "out")
    assert set(metrics) == {"tatoeba/xxx/x2e", "tatoeba/xxx/e2x", "tatoeba/avg/x2e",
                            "tatoeba/avg/e2x", "tatoeba/avg/both", "tatoeba/avg/accuracy"}
    lines = (tmp_path / "out" / "tatoeba.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t")[:4] == ["language", "pairs", "x2e_errors", "e2x_errors"]
    assert lines[1].split("\t")[:4] == ["xxx", "6", "1", "2"]


def test_progress_bars_encode_in_chunks(tmp_path):
    """With progress on, a large side is encoded in chunks, and the result is unchanged."""
    n = 40
    x = [f"x{i}" * (1 + i % 7) for i in range(n)]
    e = [f"e{i}" * (1 + i % 5) for i in range(n)]
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, 8)).astype(np.float32)
    table = {**dict(zip(x, vecs)), **dict(zip(e, vecs + 0.01))}
    write_pair(tmp_path, "zzz", x, e)
    enc = LookupEncoder(table)
    metrics, _ = evaluate_tatoeba(enc, tmp_path, ["zzz"], batch_size=2, progress=True)
    assert enc.calls > 2 and metrics["tatoeba/zzz/x2e"] == 0.0


# ----------------------------------------------------------------------------- files + languages

def test_missing_file(tmp_path):
    write_pair(tmp_path, "abc", ["a"], ["b"])
    (tmp_path / "tatoeba.abc-eng.eng").unlink()
    with pytest.raises(DataError, match="tatoeba.abc-eng.eng: file not found"):
        load_pair(tmp_path, "abc")


def test_unequal_files(tmp_path):
    write_pair(tmp_path, "abc", ["a", "b", "c"], ["x", "y"])
    with pytest.raises(DataError, match=r"tatoeba.abc-eng.abc:3: has 3 lines but .*eng has 2"):
        load_pair(tmp_path, "abc")


def test_empty_line(tmp_path):
    write_pair(tmp_path, "abc", ["a", " ", "c"], ["x", "y", "z"])
    with pytest.raises(DataError, match=r"tatoeba.abc-eng.abc:2: empty line"):
        load_pair(tmp_path, "abc")


LANGMAP = [LangmapRow("deu_Latn", "German", "deu", False),
           LangmapRow("zho_Hant", "Chinese", "cmn", True),
           LangmapRow("acm_Arab", "Mesopotamian Arabic", None, False),
           LangmapRow("fra_Latn", "French", "fra", False)]


def test_resolve_languages():
    available = ["cmn", "deu", "tzl"]
    assert resolve_languages(None, LANGMAP, available) == ["deu", "cmn"]  # fra has no files
    assert resolve_languages(["zho_Hant", "tzl", "deu", "deu_Latn"], LANGMAP, available) == [
        "cmn", "tzl", "deu"]
    with pytest.raises(ConfigError, match="acm_Arab has no LASER Tatoeba"):
        resolve_languages(["acm_Arab"], LANGMAP, available)
    with pytest.raises(ConfigError, match="no files tatoeba.fra-eng"):
        resolve_languages(["fra_Latn"], LANGMAP, available)


def test_load_langmap(tmp_path):
    path = tmp_path / "langmap.tsv"
    path.write_text("flores200_code\tlanguage\ttatoeba_v1_code\ttatoeba_v1_pairs\n"
                    "deu_Latn\tGerman\tdeu\t1000\nzho_Hant\tChinese\tcmn*\t1000\n"
                    "acm_Arab\tMesopotamian Arabic\t-\t-\n", encoding="utf-8")
    assert load_langmap(path) == LANGMAP[:3]
    path.write_text("code\tname\n", encoding="utf-8")
    with pytest.raises(DataError, match="lacks"):
        load_langmap(path)


def test_plugin_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError):
        TatoebaEvaluator(TatoebaConfig(margin="cosine"))
    with pytest.raises(ClseError, match="not a folder"):
        TatoebaEvaluator(TatoebaConfig(source=str(tmp_path / "none"))).resolve()
    with pytest.raises(ClseError, match="no tatoeba"):
        TatoebaEvaluator(TatoebaConfig(source=str(tmp_path))).resolve()
    monkeypatch.setenv("CLSE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ClseError, match="CLSE_DATA"):
        TatoebaEvaluator(TatoebaConfig()).resolve()


# ----------------------------------------------------------------------------- the real files

@pytest.mark.shared_data
def test_real_v1_files_two_languages():
    from tests.eval.test_flores import NgramEncoder

    folder = data_root() / "tatoeba" / "v1"
    assert len(available_codes(folder)) == 112
    x, e = load_pair(folder, "tzl")
    assert len(x) == len(e) == 104
    ev = TatoebaEvaluator(TatoebaConfig(languages=["deu_Latn", "tzl"], max_sentences=300,
                                        progress=False))
    assert ev.resolve()[1] == ["deu", "tzl"]
    default = TatoebaEvaluator(TatoebaConfig()).resolve()[1]
    assert len(default) == 62 and "cmn" in default and "srp" in default
    metrics = ev(NgramEncoder(), "devtest")
    for code in ("deu", "tzl"):
        for direction in ("x2e", "e2x"):
            assert 0.0 <= metrics[f"tatoeba/{code}/{direction}"] < 90.0  # far from chance (~99%)
