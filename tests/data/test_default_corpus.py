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


def test_shipped_low_resource_pairs_and_eval_sentences():
    """The default run's data: 500 eng-X pairs per language, and 300 multi-way FLORES devtest
    lines per language (README beside each, no overlap between the two)."""
    from pathlib import Path

    import clse
    from clse.eval.flores import load_multiway

    root = Path(clse.__file__).resolve().parent
    pairs = load_corpus({"kind": "tsv", "path": str(root / "data/bundled/ntrex_lowres.tsv")})
    langs = ["hau_Latn", "som_Latn", "uig_Arab", "xho_Latn", "amh_Ethi", "khm_Khmr", "lao_Laoo",
             "mya_Mymr"]
    assert Counter(p.tgt_lang for p in pairs) == {lg: 500 for lg in langs}
    folder = root / "eval/bundled_lowres"
    assert (folder / "README.md").is_file()
    sentences = load_multiway(folder, ["eng_Latn", *langs])
    assert {len(v) for v in sentences.values()} == {300}
    assert not {p.src for p in pairs} & set(sentences["eng_Latn"])
