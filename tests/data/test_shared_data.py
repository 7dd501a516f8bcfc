"""The real shared training files load without error, with the documented counts."""

from __future__ import annotations

from collections import Counter

import pytest

from clse.data.readers import read_multiway, read_tsv
from clse.paths import data_root

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def train_dir():
    root = data_root()
    if root is None:
        pytest.skip("shared data folder not found (set CLSE_DATA or run beside shared/data)")
    if not (root / "train").is_dir():
        pytest.skip(f"{root / 'train'} not found")
    return root / "train"


def test_tatoeba_challenge_tsv(train_dir):
    pairs = read_tsv(train_dir / "tatoeba_challenge.eng-x.tsv")
    assert len(pairs) == 100_980
    counts = Counter(p.tgt_lang for p in pairs)
    assert len(counts) == 65 and max(counts.values()) == 3000 and counts["ary_Arab"] == 5
    assert {p.src_lang for p in pairs} == {"eng_Latn"}


def test_ntrex_multiway(train_dir):
    pairs = read_multiway(train_dir / "ntrex128")
    counts = Counter(p.tgt_lang for p in pairs)
    assert len(counts) == 69 and set(counts.values()) == {1997}
    assert len(pairs) == 69 * 1997
