from __future__ import annotations

import logging
from pathlib import Path

import pytest

from clse.data.readers import (Pair, load_corpus, pair_language, read_hf_dataset, read_multiway,
                               read_tsv)
from clse.errors import ConfigError, DataError

ROW = "eng_Latn\tdeu_Latn\tHello.\tHallo.\n"


def raises_at(fn, path: Path, line: int | None, *expected: str) -> DataError:
    """Call ``fn``; check the DataError names ``path`` (and ``:line``) and each expected text."""
    with pytest.raises(DataError) as info:
        fn()
    err, msg = info.value, str(info.value)
    assert path.name in msg, msg
    assert err.line == line, msg
    if line is not None:
        assert f"{path.name}:{line}:" in msg, msg
    for text in expected:
        assert text in msg, msg
    return err


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- TSV


def test_tsv_reads_pairs(tmp_path):
    f = write(tmp_path / "c.tsv",
              "\ufeff" + ROW + "eng_Latn\tfra_Latn\t Good night. \tBonne nuit.\r\n")
    assert read_tsv(f) == [Pair("eng_Latn", "deu_Latn", "Hello.", "Hallo."),
                           Pair("eng_Latn", "fra_Latn", "Good night.", "Bonne nuit.")]


def test_tsv_missing_file(tmp_path):
    raises_at(lambda: read_tsv(tmp_path / "nope.tsv"), tmp_path / "nope.tsv", None,
              "not found", "expected")


def test_tsv_empty_file(tmp_path):
    f = write(tmp_path / "empty.tsv", "")
    raises_at(lambda: read_tsv(f), f, None, "empty", "expected at least one line")


def test_tsv_bad_utf8(tmp_path):
    f = write(tmp_path / "bad.tsv", ROW.encode() + b"eng_Latn\tdeu_Latn\tcaf\xe9\tx\n")
    raises_at(lambda: read_tsv(f), f, 2, "invalid UTF-8", "expected UTF-8 text")


def test_tsv_wrong_column_count(tmp_path):
    f = write(tmp_path / "cols.tsv", ROW + ROW + "eng_Latn\tdeu_Latn\tonly three\n")
    raises_at(lambda: read_tsv(f), f, 3, "3 column(s)", "expected 4 tab-separated columns")


def test_tsv_empty_line(tmp_path):
    f = write(tmp_path / "gap.tsv", ROW + "\n" + ROW)
    raises_at(lambda: read_tsv(f), f, 2, "empty line", "4 tab-separated columns")


@pytest.mark.parametrize("row, what", [("eng_Latn\tdeu_Latn\t \tHallo.\n", "src"),
                                       ("eng_Latn\tdeu_Latn\tHello.\t\n", "tgt")])
def test_tsv_empty_side(tmp_path, row, what):
    f = write(tmp_path / "side.tsv", ROW + row)
    raises_at(lambda: read_tsv(f), f, 2, f"{what} sentence", "empty or whitespace only",
              f"expected a non-empty {what}")


def test_tsv_unknown_language(tmp_path):
    f = write(tmp_path / "lang.tsv", ROW + "eng_Latn\tdeu_latn\tHello.\tHallo.\n")
    raises_at(lambda: read_tsv(f), f, 2, "unknown language code 'deu_latn'",
              "did you mean 'deu_Latn'", "expected a FLORES-200 code")
    g = write(tmp_path / "custom.tsv", "eng_Latn\txyz_Abcd\ta\tb\n")
    assert read_tsv(g, allow_unknown_languages=True)[0].tgt_lang == "xyz_Abcd"


def test_tsv_header_is_rejected(tmp_path):
    f = write(tmp_path / "head.tsv", "src_lang\ttgt_lang\tsrc\ttgt\n" + ROW)
    raises_at(lambda: read_tsv(f), f, 1, "header", "remove the header")


# ----------------------------------------------------------------------------- multi-way


def multiway(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "mw"
    folder.mkdir()
    for lang, text in files.items():
        write(folder / f"{lang}.txt", text)
    return folder


def test_multiway_reads_pairs(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\nTwo\n", "fra_Latn": "Un\nDeux\n",
                                 "deu_Latn": "Eins\nZwei\n"})
    write(folder / "README.md", "ignored")
    pairs = read_multiway(folder)
    assert pairs == [Pair("eng_Latn", "deu_Latn", "One", "Eins"),
                     Pair("eng_Latn", "deu_Latn", "Two", "Zwei"),
                     Pair("eng_Latn", "fra_Latn", "One", "Un"),
                     Pair("eng_Latn", "fra_Latn", "Two", "Deux")]
    assert read_multiway(folder, languages=["fra_Latn"]) == pairs[2:]
    assert read_multiway(folder, pivot="fra_Latn", languages=["deu_Latn"])[0] == \
        Pair("fra_Latn", "deu_Latn", "Un", "Eins")


def test_multiway_missing_folder(tmp_path):
    raises_at(lambda: read_multiway(tmp_path / "none"), tmp_path / "none", None,
              "folder not found", "<lang>.txt")


def test_multiway_missing_pivot(tmp_path):
    folder = multiway(tmp_path, {"deu_Latn": "Eins\n"})
    raises_at(lambda: read_multiway(folder), folder / "eng_Latn.txt", None, "pivot",
              "expected 'eng_Latn.txt'")


def test_multiway_missing_language(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\n", "deu_Latn": "Eins\n"})
    raises_at(lambda: read_multiway(folder, languages=["fra_Latn"]), folder, None, "fra_Latn",
              "one <lang>.txt per requested language")


def test_multiway_unequal_length(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\nTwo\nThree\n", "deu_Latn": "Eins\nZwei\n"})
    raises_at(lambda: read_multiway(folder), folder / "deu_Latn.txt", 3,
              "has 2 lines but eng_Latn.txt has 3", "as many lines as eng_Latn.txt")


def test_multiway_empty_sentence(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\nTwo\n", "deu_Latn": "Eins\n  \n"})
    raises_at(lambda: read_multiway(folder), folder / "deu_Latn.txt", 2, "empty",
              "expected a non-empty sentence")


def test_multiway_bad_utf8(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\nTwo\n", "deu_Latn": b"Eins\nZw\xc3\n"})
    raises_at(lambda: read_multiway(folder), folder / "deu_Latn.txt", 2, "invalid UTF-8")


def test_multiway_empty_file(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\n", "deu_Latn": ""})
    raises_at(lambda: read_multiway(folder), folder / "deu_Latn.txt", None, "empty")


def test_multiway_unknown_language(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\n", "deutsch": "Eins\n"})
    raises_at(lambda: read_multiway(folder), folder / "deutsch.txt", None,
              "unknown language code 'deutsch'", "FLORES-200")
    assert read_multiway(folder, allow_unknown_languages=True)[0].tgt_lang == "deutsch"


# ----------------------------------------------------------------------------- HF datasets


@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets")


def test_hf_four_columns(tmp_path, datasets):
    ds = datasets.Dataset.from_dict({"src_lang": ["eng_Latn"] * 2, "tgt_lang": ["deu_Latn"] * 2,
                                     "src": ["One", "Two"], "tgt": ["Eins", "Zwei"],
                                     "extra": [1, 2]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert read_hf_dataset(tmp_path / "ds")[1] == Pair("eng_Latn", "deu_Latn", "Two", "Zwei")
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_hf_dataset(tmp_path / "dd")) == 2
    assert len(read_hf_dataset(tmp_path / "dd", split="test")) == 1
    raises_at(lambda: read_hf_dataset(tmp_path / "dd", split="dev"), tmp_path / "dd", None,
              "no split 'dev'", "'dev' split")
    assert load_corpus({"path": tmp_path / "dd"}) == read_hf_dataset(tmp_path / "dd")


def test_hf_row_errors(tmp_path, datasets):
    datasets.Dataset.from_dict({"src_lang": ["eng_Latn"] * 2, "tgt_lang": ["deu_Latn", "xx"],
                                "src": ["a", "b"], "tgt": ["c", "d"]}).save_to_disk(
        str(tmp_path / "lang"))
    raises_at(lambda: read_hf_dataset(tmp_path / "lang"), tmp_path / "lang", 2,
              "unknown language code 'xx'")
    datasets.Dataset.from_dict({"src_lang": ["eng_Latn"] * 2, "tgt_lang": ["deu_Latn"] * 2,
                                "src": ["a", "b"], "tgt": ["c", " "]}).save_to_disk(
        str(tmp_path / "blank"))
    raises_at(lambda: read_hf_dataset(tmp_path / "blank"), tmp_path / "blank", 2,
              "empty", "non-empty tgt")


def test_hf_translation_column(tmp_path, datasets):
    rows = [{"en": "One", "de": "Eins"}, {"en": "Two", "de": "Zwei"}]
    datasets.Dataset.from_dict({"translation": rows}).save_to_disk(str(tmp_path / "tr"))
    pairs = read_hf_dataset(tmp_path / "tr", languages=("en", "de"), allow_unknown_languages=True)
    assert pairs[0] == Pair("en", "de", "One", "Eins")
    raises_at(lambda: read_hf_dataset(tmp_path / "tr"), tmp_path / "tr", None,
              "translation", "languages=(src_lang, tgt_lang)")
    raises_at(lambda: read_hf_dataset(tmp_path / "tr", languages=("en", "fr"),
                                      allow_unknown_languages=True),
              tmp_path / "tr", 1, "keys ['de', 'en']", "'en' and 'fr'")
    assert load_corpus({"kind": "hf", "path": tmp_path / "tr", "allow_unknown_languages": True,
                        "translation_languages": ["en", "de"]}) == pairs


def test_hf_missing_columns_and_folders(tmp_path, datasets):
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "cols"))
    raises_at(lambda: read_hf_dataset(tmp_path / "cols"), tmp_path / "cols", None,
              "missing columns (has: text)", "src_lang, tgt_lang, src, tgt")
    raises_at(lambda: read_hf_dataset(tmp_path / "none"), tmp_path / "none", None, "not found",
              "save_to_disk")
    (tmp_path / "plain").mkdir()
    raises_at(lambda: read_hf_dataset(tmp_path / "plain"), tmp_path / "plain", None,
              "cannot load dataset", "save_to_disk")


# ----------------------------------------------------------------------------- load_corpus


def test_load_corpus_filters_and_caps(tmp_path, caplog):
    rows = [f"eng_Latn\t{lg}\t{lg} {i}\tx{i}\n" for lg in ("deu_Latn", "fra_Latn", "spa_Latn")
            for i in range(5)]
    f = write(tmp_path / "c.tsv", "".join(rows))
    assert len(load_corpus(f)) == 15  # a bare path: kind inferred
    pairs = load_corpus({"kind": "tsv", "path": str(f), "languages": ["deu_Latn", "spa_Latn"],
                         "max_pairs_per_language": 2})
    assert [(p.tgt_lang, p.src) for p in pairs] == [
        ("deu_Latn", "deu_Latn 0"), ("deu_Latn", "deu_Latn 1"),
        ("spa_Latn", "spa_Latn 0"), ("spa_Latn", "spa_Latn 1")]
    with caplog.at_level(logging.WARNING):
        assert len(load_corpus({"path": f, "languages": ["deu_Latn", "ita_Latn"]})) == 5
    assert "ita_Latn" in caplog.text
    raises_at(lambda: load_corpus({"path": f, "languages": ["ita_Latn"]}), f, None,
              "no pairs left")


def test_load_corpus_multiway(tmp_path):
    folder = multiway(tmp_path, {"eng_Latn": "One\nTwo\n", "fra_Latn": "Un\nDeux\n",
                                 "deu_Latn": "Eins\nZwei\n"})
    assert len(load_corpus({"path": folder})) == 4
    pairs = load_corpus({"kind": "multiway", "path": folder, "languages": ["deu_Latn", "ita_Latn"],
                         "max_pairs_per_language": 1})
    assert pairs == [Pair("eng_Latn", "deu_Latn", "One", "Eins")]


def test_load_corpus_config_errors(tmp_path):
    f = write(tmp_path / "c.tsv", ROW)
    with pytest.raises(ConfigError, match="unknown corpus kind 'csv'"):
        load_corpus({"kind": "csv", "path": f})
    with pytest.raises(ConfigError, match="unknown corpus option"):
        load_corpus({"path": f, "langs": ["deu_Latn"]})
    with pytest.raises(ConfigError, match="did you mean 'deu_Latn'"):
        load_corpus({"path": f, "languages": ["deu_latn"]})
    with pytest.raises(ConfigError, match="needs a 'path'"):
        load_corpus({"kind": "tsv"})
    with pytest.raises(ConfigError, match=">= 1"):
        load_corpus({"path": f, "max_pairs_per_language": 0})


def test_pair_language():
    assert pair_language(Pair("eng_Latn", "deu_Latn", "a", "b")) == "deu_Latn"
    assert pair_language(Pair("deu_Latn", "eng_Latn", "a", "b")) == "deu_Latn"
    assert pair_language(Pair("deu_Latn", "fra_Latn", "a", "b")) == "fra_Latn"
