from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from clse.data.readers import Pair
from clse.data.sampling import LanguageSampler
from clse.errors import ConfigError

COUNTS = {"deu_Latn": 1000, "fra_Latn": 100, "swh_Latn": 10}


@pytest.fixture(scope="module")
def pairs():
    out = [Pair("eng_Latn", lg, f"en {i}", f"{lg} {i}") for lg, n in COUNTS.items()
           for i in range(n)]
    out.append(Pair("swh_Latn", "eng_Latn", "sw", "en"))  # X->eng counts for X as well
    return out


def expected(alpha: float) -> dict[str, float]:
    n = {lg: c + (lg == "swh_Latn") for lg, c in COUNTS.items()}
    w = {lg: c**alpha for lg, c in n.items()}
    return {lg: v / sum(w.values()) for lg, v in w.items()}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_frequencies_follow_n_to_the_alpha(pairs, alpha):
    s = LanguageSampler(pairs, alpha=alpha, seed=3)
    p = expected(alpha)
    assert s.probabilities() == pytest.approx(p)
    steps, bs = 200, 256
    seen = Counter(pairs[i].tgt_lang if pairs[i].src_lang == "eng_Latn" else pairs[i].src_lang
                   for step in range(steps) for i in s.batch(step, bs))
    total = steps * bs
    for lg, q in p.items():
        sigma = (q * (1 - q) / total) ** 0.5
        assert abs(seen[lg] / total - q) < 5 * sigma + 1e-9, (lg, seen[lg] / total, q)


def test_uniform_within_language(pairs):
    s = LanguageSampler(pairs, alpha=0.0, seed=1)
    idx = [i for step in range(100) for i in s.batch(step, 300)]
    fra = Counter(i for i in idx if pairs[i].tgt_lang == "fra_Latn")
    assert len(fra) == 100  # every fra pair drawn (expected ~100 draws each)
    assert max(fra.values()) < 3 * np.mean(list(fra.values()))


def test_batches_are_a_pure_function_of_seed_and_step(pairs):
    a = LanguageSampler(pairs, seed=7)
    run = [a.batch(step, 32) for step in range(10)]
    resumed = LanguageSampler(list(pairs), seed=7)  # a fresh process resuming at step 5
    assert [resumed.batch(step, 32) for step in range(5, 10)] == run[5:]
    assert a.batch(3, 32) == run[3]  # no hidden state
    assert LanguageSampler(pairs, seed=8).batch(3, 32) != run[3]
    assert run[0] != run[1]
    assert all(isinstance(i, int) and 0 <= i < len(pairs) for b in run for i in b)


def test_per_batch_mix(pairs):
    s = LanguageSampler(pairs, alpha=0.0, seed=0, mix="per_batch")
    langs = []
    for step in range(600):
        b = {pairs[i].tgt_lang if pairs[i].src_lang == "eng_Latn" else pairs[i].src_lang
             for i in s.batch(step, 16)}
        assert len(b) == 1
        langs.append(b.pop())
    freq = Counter(langs)
    for lg in COUNTS:  # uniform: 1/3 each, sigma ~0.019
        assert abs(freq[lg] / 600 - 1 / 3) < 0.1


def test_counts_and_errors(pairs):
    s = LanguageSampler(pairs)
    assert s.counts() == {"deu_Latn": 1000, "fra_Latn": 100, "swh_Latn": 11}
    assert s.languages == sorted(COUNTS)
    with pytest.raises(ConfigError):
        LanguageSampler([])
    with pytest.raises(ConfigError):
        LanguageSampler(pairs, alpha=-1)
    with pytest.raises(ConfigError):
        LanguageSampler(pairs, mix="per_language")
    with pytest.raises(ValueError):
        s.batch(-1, 4)
