from __future__ import annotations

import pytest

from clse.data.languages import FLORES200, MEXMA_LANGUAGES, check_language, suggest
from clse.errors import DataError


def test_code_sets():
    assert len(FLORES200) == 205  # NLLB-200's 202 + arb_Latn, min_Arab, sat_Olck
    assert len(MEXMA_LANGUAGES) == 81 and MEXMA_LANGUAGES <= FLORES200
    assert {"eng_Latn", "lao_Laoo", "zho_Hant", "zho_Hans", "sat_Olck", "sat_Beng"} <= FLORES200
    assert all(len(c) == 8 and c[3] == "_" for c in FLORES200)


def test_known_code_passes():
    assert check_language("deu_Latn", "f.tsv", 3) == "deu_Latn"


@pytest.mark.parametrize("bad, hint", [("deu_latn", "deu_Latn"), ("deu", "deu_Latn"),
                                       ("dwu_Latn", "deu_Latn")])
def test_unknown_code_suggests(bad, hint):
    with pytest.raises(DataError) as e:
        check_language(bad, "corpus.tsv", 7)
    msg = str(e.value)
    assert "corpus.tsv:7" in msg and repr(bad) in msg and hint in msg and "FLORES-200" in msg
    assert hint in suggest(bad)


def test_allow_unknown():
    assert check_language("xyz_Abcd", "f", 1, allow_unknown=True) == "xyz_Abcd"
    with pytest.raises(DataError):
        check_language("", "f", 1, allow_unknown=True)
