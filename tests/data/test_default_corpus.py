from __future__ import annotations

from collections import Counter

from clse.data.default_corpus import DEFAULT_LANGUAGES, default_corpus_path, default_corpus_spec
from clse.data.readers import load_corpus


def test_bundled_corpus_loads(bundled_pairs):
    path = default_corpus_path()
    assert path.is_file() and path.stat().st_size < 1_500_000
    assert (path.parent / "README.md").is_file()
    assert len(bundled_pairs) == 12_000
    assert Counter(p.tgt_lang for p in bundled_pairs) == {lg: 1500 for lg in DEFAULT_LANGUAGES}
    assert {p.src_lang for p in bundled_pairs} == {"eng_Latn"}
    assert load_corpus(default_corpus_spec())[:10] == bundled_pairs[:10]
