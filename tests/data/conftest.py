"""Shared fixtures of the data tests: a tiny tokenizer trained on the bundled corpus."""

from __future__ import annotations

import pytest

from clse.data.default_corpus import load_default_corpus
from clse.data.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def bundled_pairs():
    return load_default_corpus()


@pytest.fixture(scope="session")
def small_texts(bundled_pairs):
    pairs = bundled_pairs[::8]  # 1500 pairs over all 8 languages
    return [t for p in pairs for t in (p.src, p.tgt)]


@pytest.fixture(scope="session")
def tokenizer(small_texts):
    return train_tokenizer(small_texts, vocab_size=1000)
