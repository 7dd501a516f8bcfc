"""Corpus readers on fuzzed files: the pairs a reference parser of the documented rules expects,
or a DataError/ConfigError naming the file, the line and what was expected. Nothing else escapes.

The reference parser below re-implements the rules of ``clse/data/readers.py``'s docstring
independently (bytes split at ``\\n``, strict UTF-8, a BOM ignored at the start of the file, a
trailing ``\\r`` dropped, 4 tab-separated columns, FLORES-200 codes, sides stripped and
non-empty, multi-way files of equal length). There is no skip policy: every line is a pair or
an error, which the comparison with the reference checks (no line is dropped silently).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from clse.data.languages import FLORES200
from clse.data.readers import Pair, load_corpus, read_multiway, read_tsv
from clse.errors import ConfigError, DataError
from tests.fuzz import fuzz_settings

CODES = sorted(FLORES200)


class RefError(Exception):
    """What the reference parser expects instead of pairs: an error at (path, line)."""

    def __init__(self, path: Path, line: int | None):
        super().__init__(f"{path}:{line}")
        self.path, self.line = path, line


# ----------------------------------------------------------------------------- strategies

# characters that stress the rules: tabs (columns), CR (line ends), separators str.strip and
# str.splitlines know but the readers must not split at (U+2028, U+0085, \x1c), NUL, a BOM,
# non-BMP, combining marks, a zero-width space (not whitespace)
SPECIAL = ["\t", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028",
           "\u2029", "\u200b", "\ufeff", "\u3000", "\U0001F600", "\U00020000", "\u0301", " "]
chars = st.one_of(st.characters(codec="utf-8", exclude_characters="\n"), st.sampled_from(SPECIAL))
sentence = st.one_of(
    st.text(chars, max_size=12),
    st.sampled_from(["", " ", "\t", "\u3000", "\xa0\u2028", "Hello.", "  padded  "]),
)
bad_codes = st.sampled_from(["", " ", "deu", "deu_latn", "DEU_LATN", "deu_Latn ", " deu_Latn",
                             "xxx_Yyyy", "src_lang", "tgt_lang", "eng-Latn", "zho_Hans\u200b",
                             "eng_Latn\x00", "\ufeffeng_Latn"])
lang_code = st.one_of(st.sampled_from(CODES[:12] + ["eng_Latn", "deu_Latn"]), bad_codes,
                      st.text(chars, max_size=9))


# a sentence that is valid on its own: non-blank (an "S" in front) and without a tab
clean_sentence = st.one_of(
    st.sampled_from(["Hello.", "Hallo.", "  padded  ", "a\u2028b", "x\x85y", "NUL\x00"]),
    st.text(st.one_of(st.characters(codec="utf-8", exclude_characters="\n\t"),
                      st.sampled_from([c for c in SPECIAL if c != "\t"])),
            max_size=12).map(lambda s: "S" + s))
good_code = st.sampled_from(CODES)


@st.composite
def tsv_line(draw) -> str:
    """One line's text (no line end): mostly a valid pair; else 0-3 or 5 columns, bad codes,
    blank sides or a header."""
    if draw(st.integers(0, 9)):
        return "\t".join([draw(good_code), draw(good_code), draw(clean_sentence),
                          draw(clean_sentence)])
    n = draw(st.sampled_from([4, 4, 4, 4, 0, 1, 2, 3, 5]))
    if n == 0:
        return draw(st.sampled_from(["", " ", "\r", "\t"]))
    if draw(st.integers(0, 30)) == 0:
        return "src_lang\ttgt_lang\tsrc\ttgt"
    cols = [draw(lang_code), draw(lang_code), draw(sentence), draw(sentence), draw(sentence)]
    return "\t".join(cols[:n])


# byte-level damage: invalid UTF-8 (a lone continuation byte, a truncated sequence, an
# over-long form, a UTF-16 surrogate encoded in UTF-8, a code point above U+10FFFF), a lone
# surrogate written with surrogateescape, a BOM, a NUL
DAMAGE = [b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
          "\udcff".encode("utf-8", "surrogateescape"), b"\xef\xbb\xbf", b"\x00", b"\r"]


@st.composite
def file_bytes(draw, line: st.SearchStrategy[str]) -> bytes:
    """A file of ``line`` texts joined by \\n or \\r\\n, maybe damaged, maybe random bytes."""
    if draw(st.integers(0, 20)) == 0:
        return draw(st.binary(max_size=200))  # anything at all
    lines = draw(st.lists(line, min_size=0, max_size=8))
    out = b""
    for i, text in enumerate(lines):
        data = text.encode("utf-8")
        if draw(st.integers(0, 30)) == 0:  # damage this line somewhere
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.sampled_from(DAMAGE)) + data[at:]
        last = i == len(lines) - 1
        out += data + (draw(st.sampled_from([b"\n", b"\n", b"\r\n", b""])) if last
                       else draw(st.sampled_from([b"\n", b"\n", b"\r\n"])))
    if draw(st.integers(0, 8)) == 0:
        out = b"\xef\xbb\xbf" + out  # a BOM: ignored at the very start only
    return out


# ----------------------------------------------------------------------------- reference

def ref_lines(path: Path, data: bytes) -> Iterator[tuple[int, str]]:
    """Lazily, like the reader: a line's problem is found before a later line's."""
    if not data:
        raise RefError(path, None)
    raws = data.split(b"\n")
    if data.endswith(b"\n"):
        raws.pop()
    for n, raw in enumerate(raws, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RefError(path, n) from None
        if n == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield n, text.rstrip("\r")


def ref_code(code: str, path: Path, line: int | None, allow: bool) -> str:
    if not code or code != code.strip() or (code not in FLORES200 and not allow):
        raise RefError(path, line)
    return code


def ref_tsv(path: Path, data: bytes, allow: bool) -> list[Pair]:
    pairs = []
    for n, text in ref_lines(path, data):
        cols = text.split("\t")
        if n == 1 and cols[:2] == ["src_lang", "tgt_lang"]:
            raise RefError(path, n)
        if len(cols) != 4:
            raise RefError(path, n)
        sl = ref_code(cols[0].strip(), path, n, allow)
        tl = ref_code(cols[1].strip(), path, n, allow)
        s, t = cols[2].strip(), cols[3].strip()
        if not s or not t:
            raise RefError(path, n)
        pairs.append(Pair(sl, tl, s, t))
    return pairs


def ref_multiway(folder: Path, files: dict[str, bytes], pivot: str, allow: bool) -> list[Pair]:
    stems = {Path(name).stem: folder / name for name in files if name.endswith(".txt")}
    if pivot not in stems:
        raise RefError(folder / f"{pivot}.txt", None)
    wanted = sorted(set(stems) - {pivot})
    for lg in [pivot, *wanted]:
        ref_code(lg, stems[lg], None, allow)

    def read(lg):
        path = stems[lg]
        lines = []
        for n, text in ref_lines(path, files[path.name]):
            if not text.strip():
                raise RefError(path, n)
            lines.append(text.strip())
        return lines

    pivot_lines = read(pivot)
    pairs = []
    for lg in wanted:
        lines = read(lg)
        if len(lines) != len(pivot_lines):
            raise RefError(stems[lg], min(len(lines), len(pivot_lines)) + 1)
        pairs.extend(Pair(pivot, lg, a, b) for a, b in zip(pivot_lines, lines))
    return pairs


def check(call, reference):
    """``call()`` must give ``reference()``'s pairs, or a DataError at the reference's place."""
    try:
        expected = reference()
    except RefError as ref:
        with pytest.raises(DataError) as info:
            call()
        err, msg = info.value, str(info.value)
        assert err.path == str(ref.path), msg
        assert err.line == ref.line, msg
        assert msg.startswith(str(ref.path) if ref.line is None else f"{ref.path}:{ref.line}:"), msg
        assert "(expected " in msg, msg  # says what was expected
        event("DataError (line-level)" if ref.line is not None else "DataError (file-level)")
        return None
    got = call()
    assert got == expected
    event("pairs read")
    for p in got:
        for side in (p.src, p.tgt):
            assert isinstance(side, str) and side and side == side.strip()
    return got


# ----------------------------------------------------------------------------- TSV

@fuzz_settings(200)
@given(data=file_bytes(tsv_line()), allow=st.booleans())
def test_tsv(data, allow):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.tsv"
        path.write_bytes(data)
        check(lambda: read_tsv(path, allow_unknown_languages=allow),
              lambda: ref_tsv(path, data, allow))


@fuzz_settings(60)
@given(data=file_bytes(tsv_line()))
def test_tsv_through_load_corpus(data):
    """The config entry point (kind inferred from a file path) gives the same result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.tsv"
        path.write_bytes(data)
        check(lambda: load_corpus({"path": str(path)}), lambda: ref_tsv(path, data, False))


@fuzz_settings(4)
@given(size=st.integers(1_000_000, 5_000_000),
       char=st.sampled_from(["a", "é", "語", "\U0001F600"]),
       damage_at_end=st.booleans())
def test_tsv_huge_line(size, char, damage_at_end):
    """A 1-5 MB sentence is read whole (no truncation), or its bad byte is found at its line."""
    big = (char * (size // len(char.encode()))).encode()
    data = (b"eng_Latn\tdeu_Latn\tshort\tkurz\n" + b"eng_Latn\tfra_Latn\t" + big + b"\t"
            + (big[:-1] + b"\xff" if damage_at_end else big) + b"\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.tsv"
        path.write_bytes(data)
        got = check(lambda: read_tsv(path), lambda: ref_tsv(path, data, False))
        if got is not None:
            assert len(got[1].src.encode()) == len(big)


# ----------------------------------------------------------------------------- multi-way

good_name = st.sampled_from(["eng_Latn.txt", "deu_Latn.txt", "fra_Latn.txt", "zho_Hans.txt"])
file_name = st.one_of(
    good_name, good_name, good_name, good_name,
    st.sampled_from(["deu_latn.txt", "xxx_Yyyy.txt", "deu.txt", "deu_Latn .txt", ".txt",
                     "._deu_Latn.txt", "deu_Latn.txt.txt", "README.md", "deu_Latn.TXT",
                     "notes"]),
    st.text(st.characters(codec="ascii", categories=["L", "N"], include_characters="_-. "),
            min_size=1, max_size=10).map(lambda s: s + ".txt"),
)
sentence_line = st.one_of(clean_sentence, clean_sentence, clean_sentence, clean_sentence,
                          sentence, st.sampled_from(["One.", "Two.", "Drei."]))


@st.composite
def multiway_folder(draw) -> dict[str, bytes]:
    names = draw(st.lists(file_name, min_size=0, max_size=5, unique=True))
    if draw(st.integers(0, 3)) > 0 and "eng_Latn.txt" not in names:
        names.append("eng_Latn.txt")
    n = draw(st.integers(1, 4))  # a common length, then some files get another one
    files = {}
    for name in names:
        count = n if draw(st.integers(0, 8)) > 0 else draw(st.integers(0, 5))
        lines = draw(st.lists(sentence_line, min_size=count, max_size=count))
        files[name] = draw(file_bytes(st.just("x"))) if draw(st.integers(0, 15)) == 0 else \
            "".join(f"{s}\n" for s in lines).encode("utf-8")
    return files


@fuzz_settings(150)
@given(files=multiway_folder(), allow=st.booleans(),
       pivot=st.sampled_from(["eng_Latn"] * 4 + ["deu_Latn"]))
def test_multiway(files, allow, pivot):
    # "\r" inside a line of these files: written with \n endings, so it stays in the sentence
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mw"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        check(lambda: read_multiway(folder, pivot=pivot, allow_unknown_languages=allow),
              lambda: ref_multiway(folder, files, pivot, allow))


@fuzz_settings(40)
@given(n_pivot=st.integers(1, 6), n_other=st.integers(0, 6))
def test_multiway_mismatched_lengths_name_the_line(n_pivot, n_other):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "eng_Latn.txt").write_text("".join(f"e{i}\n" for i in range(n_pivot)))
        (folder / "deu_Latn.txt").write_text("".join(f"d{i}\n" for i in range(n_other)))
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        check(lambda: read_multiway(folder), lambda: ref_multiway(folder, files, "eng_Latn", False))
        if n_pivot != n_other and n_other:
            msg = f"has {n_other} lines but eng_Latn.txt has {n_pivot}"
            with pytest.raises(DataError, match=msg):
                read_multiway(folder)


# ----------------------------------------------------------------------------- load_corpus specs

junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                 st.text(max_size=6), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                 st.just(["deu_Latn"]), st.just("deu_Latn"), st.just([["deu_Latn"]]),
                 st.just("~nosuchuser/x.tsv"), st.just("a\x00b"))
spec_key = st.sampled_from(["kind", "languages", "max_pairs_per_language", "pivot", "split",
                            "translation_languages", "allow_unknown_languages", "path", "langs",
                            "max_pairs"])


@fuzz_settings(200)
@given(options=st.dictionaries(spec_key, junk, max_size=3), keep_path=st.booleans(),
       not_a_mapping=st.sampled_from([None] * 8 + [[], 3, ["a.tsv"], b"a.tsv"]))
def test_load_corpus_spec_types(options, keep_path, not_a_mapping):
    """Wrong types in a corpus spec: success or a ConfigError/DataError, never a TypeError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.tsv"
        path.write_text("eng_Latn\tdeu_Latn\tHello.\tHallo.\neng_Latn\tfra_Latn\tHi.\tSalut.\n")
        spec = {"path": str(path), **options} if keep_path else options
        if not_a_mapping is not None:
            spec = not_a_mapping
        try:
            pairs = load_corpus(spec)
        except ConfigError as e:
            msg = str(e)
            assert msg and ("corpus" in msg or "max_pairs_per_language" in msg
                            or "language" in msg), msg
            event("ConfigError")
            return
        except DataError as e:
            assert e.path and "(expected " in str(e), str(e)
            event("DataError")
            return
        assert pairs and all(isinstance(p.src, str) and p.src for p in pairs)
        event("pairs read")


@fuzz_settings(100)
@given(rows=st.lists(st.tuples(st.sampled_from(["deu_Latn", "fra_Latn", "spa_Latn"]),
                               st.booleans()), min_size=1, max_size=20),
       languages=st.none() | st.lists(st.sampled_from(["deu_Latn", "fra_Latn", "ita_Latn"]),
                                      min_size=1, max_size=3),
       cap=st.none() | st.integers(1, 5))
def test_load_corpus_filter_and_cap(rows, languages, cap, caplog):
    """Language filter and per-language cap match a reference; an absent language is reported."""
    caplog.clear()
    lines = [(f"{lg}\teng_Latn" if flip else f"eng_Latn\t{lg}") + f"\ts{i}\tt{i}\n"
             for i, (lg, flip) in enumerate(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.tsv"
        path.write_text("".join(lines))
        all_pairs = read_tsv(path)
        keep = None if languages is None else set(languages) | {"eng_Latn"}
        expected = [p for p in all_pairs
                    if keep is None or (p.src_lang in keep and p.tgt_lang in keep)]
        if cap is not None:
            seen: dict[str, int] = {}
            capped = []
            for p in expected:
                lg = p.src_lang if p.src_lang != "eng_Latn" else p.tgt_lang
                if seen.get(lg, 0) < cap:
                    seen[lg] = seen.get(lg, 0) + 1
                    capped.append(p)
            expected = capped
        spec = {"path": str(path), "languages": languages, "max_pairs_per_language": cap}
        with caplog.at_level(logging.WARNING, logger="clse.data.readers"):
            if not expected:
                with pytest.raises(DataError, match="no pairs left after the language filter"):
                    load_corpus(spec)
                return
            assert load_corpus(spec) == expected
        present = {p.src_lang if p.src_lang != "eng_Latn" else p.tgt_lang for p in all_pairs}
        for lg in set(languages or []) - present:
            assert lg in caplog.text  # requested but absent: reported, not silent


def test_unreadable_file_is_a_data_error(tmp_path):
    """An OSError while reading (here: a folder where a file is expected, and /proc/self/mem,
    which cannot be read sequentially) is a DataError naming the file."""
    folder = tmp_path / "x.tsv"
    folder.mkdir()
    with pytest.raises(DataError, match="is a folder"):
        read_tsv(folder)
    mem = Path("/proc/self/mem")
    if mem.exists():
        with pytest.raises(DataError, match="/proc/self/mem"):
            read_tsv(mem)


@pytest.mark.parametrize("value", [5, ["deu_Latn", 3], [None], object()])
def test_multiway_languages_argument_types(tmp_path, value):
    (tmp_path / "eng_Latn.txt").write_text("a\n")
    (tmp_path / "deu_Latn.txt").write_text("b\n")
    with pytest.raises(ConfigError, match="languages must be a list of language codes"):
        read_multiway(tmp_path, languages=value)


def test_multiway_one_language_as_a_string(tmp_path):
    (tmp_path / "eng_Latn.txt").write_text("a\n")
    (tmp_path / "deu_Latn.txt").write_text("b\n")
    (tmp_path / "fra_Latn.txt").write_text("c\n")
    assert read_multiway(tmp_path, languages="deu_Latn") == [Pair("eng_Latn", "deu_Latn", "a", "b")]


# ----------------------------------------------------------------------------- HF datasets

hf_text = st.one_of(clean_sentence, clean_sentence, clean_sentence, st.none(), sentence)
hf_code = st.one_of(good_code, good_code, good_code, st.none(), lang_code)


@st.composite
def hf_columns(draw) -> dict[str, list]:
    """Four-column datasets; a column is all strings (or nulls) or all integers (or nulls), as
    Arrow needs one type per column."""
    n = draw(st.integers(0, 3))
    cols = {}
    for name, strat in (("src_lang", hf_code), ("tgt_lang", hf_code), ("src", hf_text),
                        ("tgt", hf_text)):
        if draw(st.integers(0, 20)) == 0:
            cols[name] = draw(st.lists(st.none() | st.integers(-2, 2), min_size=n, max_size=n))
        else:
            cols[name] = draw(st.lists(strat, min_size=n, max_size=n))
    if draw(st.integers(0, 20)) == 0:
        del cols[draw(st.sampled_from(sorted(cols)))]  # a missing column
    return cols


def ref_hf(path: Path, cols: dict[str, list], allow: bool) -> list[Pair]:
    if set(cols) != {"src_lang", "tgt_lang", "src", "tgt"}:
        raise RefError(path, None)
    rows = list(zip(cols["src_lang"], cols["tgt_lang"], cols["src"], cols["tgt"]))
    if not rows:
        raise RefError(path, None)
    pairs = []
    for i, row in enumerate(rows, 1):
        if any(v is not None and not isinstance(v, str) for v in row):
            raise RefError(path, i)
        sl, tl, s, t = (v or "" for v in row)
        ref_code(sl, path, i, allow)
        ref_code(tl, path, i, allow)
        if not s.strip() or not t.strip():
            raise RefError(path, i)
        pairs.append(Pair(sl, tl, s.strip(), t.strip()))
    return pairs


@fuzz_settings(20)
@given(cols=hf_columns(), allow=st.booleans())
def test_hf_dataset(cols, allow):
    datasets = pytest.importorskip("datasets")
    from clse.data.readers import read_hf_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds"
        try:
            datasets.Dataset.from_dict(cols).save_to_disk(str(path))
        except Exception:  # noqa: BLE001 - Arrow refuses some tables; not the reader's input
            event("Arrow refused the table")
            return
        check(lambda: read_hf_dataset(path, allow_unknown_languages=allow),
              lambda: ref_hf(path, cols, allow))
