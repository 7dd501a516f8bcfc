"""Evaluation inputs on fuzzed files: FLORES-style multi-way folders, Tatoeba v1 pair files and
``langmap.tsv``, xsim++ augmented + error-type files, and the hard-negative generator.

Each reader must return what a reference parser of its documented rules expects, or raise a
ClseError naming the file (and line where one applies) — and the evaluations run on what was
read must end in metrics or a ClseError. A tiny deterministic character-trigram encoder stands
in for a model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from clse.errors import ClseError, ConfigError, DataError
from clse.eval.flores import evaluate_xsim, load_multiway
from clse.eval.hard_negatives import ERROR_TYPES, generate_hard_negatives
from clse.eval.hard_negatives import main as hard_negatives_main
from clse.eval.tatoeba import evaluate_tatoeba, load_langmap, load_pair
from clse.eval.xsim import MARGINS
from clse.eval.xsimpp import MISALIGNED, UNKNOWN, evaluate_xsimpp, load_augmented
from tests.fuzz import fuzz_settings
from tests.fuzz.test_readers import RefError, file_bytes, ref_lines, sentence

DIM = 32


def trigram_vectors(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        padded = f"  {t}  "
        for j in range(len(padded) - 2):
            out[i, zlib.crc32(padded[j:j + 3].encode("utf-8", "surrogatepass")) % DIM] += 1.0
    return out


class TrigramEncoder:
    """The SentenceEncoder protocol: ``encode(sentences, batch_size) -> (n, D)``."""

    def encode(self, sentences, batch_size: int = 64):
        return trigram_vectors(list(sentences))


def expect(call, reference):
    """``call()`` equals ``reference()``, or raises a DataError where the reference says."""
    try:
        expected = reference()
    except RefError as ref:
        with pytest.raises(DataError) as info:
            call()
        err, msg = info.value, str(info.value)
        assert err.path == str(ref.path) and err.line == ref.line, (msg, ref.path, ref.line)
        assert "(expected " in msg, msg
        event("DataError")
        return None
    got = call()
    assert got == expected
    event("read")
    return got


def write(folder: Path, files: dict[str, bytes | None]) -> None:
    for name, data in files.items():
        if data is not None:
            (folder / name).write_bytes(data)


line_text = st.one_of(sentence, st.sampled_from(["Hello.", "Hallo.", "One two three."]))
# a sentence with something in it (an "S" prefix keeps it non-blank without a filter)
word_line = st.one_of(st.sampled_from(["Hello.", "Hallo.", "One two three.", "Bonjour !"]),
                      sentence.map(lambda s: "S" + s))
# mostly sentences, sometimes a blank or odd line
some_line = st.one_of(word_line, word_line, word_line, line_text)


# ----------------------------------------------------------------------------- FLORES layout

good_lang = st.sampled_from(["eng_Latn", "deu_Latn", "fra_Latn", "zho_Hans"])
lang = st.one_of(good_lang, good_lang, good_lang,
                 st.sampled_from(["", "a/b", "x\x00", "..", "deu_latn", "eng_Latn"]))


def ref_flores(folder: Path, files: dict[str, bytes | None], languages: list[str]):
    out, first = {}, None
    for lg in dict.fromkeys(languages):
        if not lg or "/" in lg or "\x00" in lg:
            raise RefError(folder, None)
        path = folder / f"{lg}.txt"
        if files.get(f"{lg}.txt") is None:
            raise RefError(path, None)
        lines = [t for _, t in ref_lines(path, files[f"{lg}.txt"])]
        if first is None:
            first = len(lines)
        elif len(lines) != first:
            raise RefError(path, None)
        out[lg] = lines
    return out


@st.composite
def flores_folder(draw):
    n = draw(st.integers(1, 7))
    files = {}
    for lg in ["eng_Latn", "deu_Latn", "fra_Latn", "zho_Hans"]:
        if draw(st.integers(0, 6)) == 0:
            continue  # missing
        count = n if draw(st.integers(0, 5)) else draw(st.integers(0, 8))
        if draw(st.integers(0, 8)) == 0:
            files[f"{lg}.txt"] = draw(file_bytes(line_text))  # damaged
        else:
            lines = draw(st.lists(some_line, min_size=count, max_size=count))
            files[f"{lg}.txt"] = "".join(f"{s}\n" for s in lines).encode("utf-8")
    return files


@fuzz_settings(150)
@given(files=flores_folder(), languages=st.lists(lang, min_size=1, max_size=4),
       k=st.integers(1, 5), margin=st.sampled_from(MARGINS))
def test_flores_folder(files, languages, k, margin):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write(folder, files)
        sentences = expect(lambda: load_multiway(folder, languages),
                           lambda: ref_flores(folder, files, languages))
    if sentences is None or "eng_Latn" not in sentences or len(sentences) < 2:
        return
    try:
        metrics = evaluate_xsim(trigram_vectors, sentences, k=k, margin=margin, progress=False)
    except ClseError as e:
        assert "eng_Latn" in str(e) and f"k={k}" in str(e), str(e)
        event("xsim: ClseError")
        return
    assert 0.0 <= metrics["xsim/avg"] <= 100.0
    event("xsim: metrics")


# ----------------------------------------------------------------------------- Tatoeba v1

def ref_tatoeba(folder: Path, code: str, files: dict[str, bytes | None]):
    def read(path):
        data = files.get(path.name)
        if data is None:
            raise RefError(path, None)
        out = []
        for n, text in ref_lines(path, data):
            if not text.strip():
                raise RefError(path, n)
            out.append(text)
        return out

    x_path, e_path = folder / f"tatoeba.{code}-eng.{code}", folder / f"tatoeba.{code}-eng.eng"
    x, e = read(x_path), read(e_path)
    if len(x) != len(e):
        raise RefError(x_path if len(x) > len(e) else e_path, min(len(x), len(e)) + 1)
    return x, e


@st.composite
def tatoeba_files(draw, code: str):
    n = draw(st.integers(1, 6))
    files = {}
    for side in (code, "eng"):
        name = f"tatoeba.{code}-eng.{side}"
        how = draw(st.sampled_from(["ok"] * 6 + ["other length", "damaged", "missing"]))
        if how == "missing":
            continue
        if how == "damaged":
            files[name] = draw(file_bytes(line_text))
            continue
        count = n if how == "ok" else draw(st.integers(0, 8))
        lines = draw(st.lists(word_line if draw(st.integers(0, 3)) else some_line,
                              min_size=count, max_size=count))
        files[name] = "".join(f"{s}\n" for s in lines).encode("utf-8")
    return files


@fuzz_settings(120)
@given(data=st.data(), code=st.sampled_from(["deu", "cmn", "x y", "ü"]),
       max_sentences=st.sampled_from([None] * 12 + [1, 3, 0, -1, "3", True, 2.0]),
       margin=st.sampled_from([*MARGINS, "cosine"]), k=st.integers(1, 5),
       eval_text=st.booleans())
def test_tatoeba_pair(data, code, max_sentences, margin, k, eval_text):
    files = data.draw(tatoeba_files(code))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write(folder, files)
        bad_cap = max_sentences is not None and (isinstance(max_sentences, bool) or not isinstance(
            max_sentences, int) or max_sentences < 1)
        if bad_cap:
            with pytest.raises(ConfigError, match="max_sentences"):
                load_pair(folder, code, max_sentences)
            event("ConfigError")
            return
        got = expect(lambda: load_pair(folder, code, max_sentences),
                     lambda: tuple(s[:max_sentences] for s in ref_tatoeba(folder, code, files)))
        if got is None:
            return
        try:
            metrics, rows = evaluate_tatoeba(TrigramEncoder(), folder, [code], margin=margin, k=k,
                                             eval_text=eval_text, max_sentences=max_sentences,
                                             progress=False)
        except ConfigError as e:
            assert margin == "cosine" and "margin" in str(e), str(e)
            return
        assert rows[0]["pairs"] == len(got[0])
        assert 0 <= metrics["tatoeba/avg/both"] <= 100


HEADERS = ["flores200_code\tlanguage\ttatoeba_v1_code\ttatoeba_v1_pairs",
           "\ufeffflores200_code\tlanguage\ttatoeba_v1_code",
           "tatoeba_v1_code\tflores200_code\tlanguage", "flores200_code\tlanguage", "code\tname",
           "", " flores200_code \t language\ttatoeba_v1_code"]
langmap_row = st.lists(st.sampled_from(["deu_Latn", "German", "deu", "cmn*", "-", "", " ", "*",
                                        "1000", "a\tb"]), min_size=0, max_size=5).map("\t".join)


@st.composite
def langmap_bytes(draw) -> bytes:
    if draw(st.integers(0, 10)) == 0:
        return draw(file_bytes(langmap_row))
    head = draw(st.sampled_from(HEADERS))
    rows = draw(st.lists(langmap_row, max_size=6))
    return "".join(f"{line}\n" for line in [head, *rows]).encode("utf-8")


def ref_langmap(path: Path, data: bytes):
    lines = ref_lines(path, data)
    _, head = next(lines)
    header = [h.strip() for h in head.split("\t")]
    needed = ("flores200_code", "language", "tatoeba_v1_code")
    if not set(needed) <= set(header):
        raise RefError(path, 1)
    col = {name: header.index(name) for name in needed}
    rows, blank = [], 0
    for n, text in lines:
        if not text.strip():
            blank += 1
            continue
        f = text.split("\t")
        get = lambda name: f[col[name]].strip() if col[name] < len(f) else ""  # noqa: E731
        if not get("flores200_code"):
            raise RefError(path, n)
        code = get("tatoeba_v1_code")
        rows.append((get("flores200_code"), get("language"),
                     (code.rstrip("*") or None) if code not in ("", "-") else None,
                     code.endswith("*")))
    return rows, blank


@fuzz_settings(100)
@given(data=langmap_bytes())
def test_langmap(data, caplog):
    caplog.clear()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "langmap.tsv"
        path.write_bytes(data)
        with caplog.at_level(logging.WARNING, logger="clse.eval"):
            got = expect(lambda: [(r.flores, r.name, r.tatoeba, r.approximate)
                                  for r in load_langmap(path)],
                         lambda: ref_langmap(path, data)[0])
        if got is not None:
            blank = ref_langmap(path, data)[1]
            if blank:  # skipped lines are counted and reported
                assert f"skipped {blank} blank line(s)" in caplog.text


# ----------------------------------------------------------------------------- xsim++

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@st.composite
def errtype_json(draw, aug_lines: list[str], targets: list[str]) -> bytes | None:
    how = draw(st.sampled_from(["table"] * 12 + ["bytes", "json", "deep", "missing", "bom"]))
    if how == "missing":
        return None
    if how == "bytes":
        return draw(st.binary(max_size=60))
    if how == "json":
        return json.dumps(draw(json_value)).encode()
    if how == "deep":
        return b"[" * 100_000 + b"]" * 100_000  # nested past the recursion limit
    table = {}
    for line in aug_lines:
        if draw(st.integers(0, 4)) == 0:
            continue  # a line the json does not describe
        entry = {"errtype": draw(st.sampled_from(["number", "entity", "causality"])),
                 "src": draw(st.sampled_from(targets)) if targets else "x"}
        if draw(st.integers(0, 15)) == 0:
            entry = draw(json_value)  # a malformed entry
        table[f" {line} " if draw(st.integers(0, 6)) == 0 else line] = entry
    out = json.dumps(table, ensure_ascii=draw(st.booleans())).encode()
    return b"\xef\xbb\xbf" + out if how == "bom" else out


def _as_tuple(aug):
    return aug.texts, aug.errtypes, aug.srcs


def ref_augmented(aug_path: Path, aug: bytes | None, js_path: Path, js: bytes | None):
    if aug is None:
        raise RefError(aug_path, None)
    texts = []
    for n, t in ref_lines(aug_path, aug):
        if not t.strip():
            raise RefError(aug_path, n)
        texts.append(t)
    if js is None:
        raise RefError(js_path, None)
    try:
        text = js.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RefError(js_path, js[:e.start].count(b"\n") + 1) from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise RefError(js_path, e.lineno) from None
    except RecursionError:
        raise RefError(js_path, None) from None
    if not isinstance(table, dict):
        raise RefError(js_path, None)
    info = {}
    for key, value in table.items():
        if not (isinstance(value, dict) and isinstance(value.get("errtype"), str)
                and isinstance(value.get("src"), str)):
            raise RefError(js_path, None)
        info[key.strip()] = (value["errtype"], value["src"].strip())
    rows = [info.get(t.strip(), (UNKNOWN, None)) for t in texts]
    return texts, [r[0] for r in rows], [r[1] for r in rows]


@fuzz_settings(120)
@given(data=st.data(), targets=st.lists(st.sampled_from(["The cat sat.", "It rained in 2001.",
                                                         "Paris is big.", "We won."]),
                                        min_size=1, max_size=5))
def test_xsimpp_files(data, targets, caplog):
    caplog.clear()
    aug_lines = data.draw(st.lists(word_line if data.draw(st.integers(0, 3)) else some_line,
                                   max_size=6))
    how = data.draw(st.sampled_from(["lines"] * 6 + ["damaged", "missing"]))
    aug = None if how == "missing" else data.draw(file_bytes(line_text)) if how == "damaged" \
        else "".join(f"{s}\n" for s in aug_lines).encode("utf-8")
    js = data.draw(errtype_json(aug_lines, targets))
    with tempfile.TemporaryDirectory() as tmp:
        aug_path, js_path = Path(tmp) / "eng_Latn_augmented.devtest", Path(tmp) / "errtype.json"
        write(Path(tmp), {aug_path.name: aug, js_path.name: js})
        with caplog.at_level(logging.WARNING, logger="clse.eval"):
            got = expect(lambda: _as_tuple(load_augmented(aug_path, js_path)),
                         lambda: ref_augmented(aug_path, aug, js_path, js))
    if got is None:
        return
    untyped = [i for i, src in enumerate(got[2]) if src is None]
    if untyped:  # counted and reported, never silent
        assert f"{len(untyped)} augmented line(s) (first: line {untyped[0] + 1}" in caplog.text


@fuzz_settings(80)
@given(data=st.data(), targets=st.lists(st.sampled_from(["The cat sat.", "It rained in 2001.",
                                                         "Paris is big.", "We won.", ""]),
                                        min_size=1, max_size=6),
       k=st.integers(1, 4), eval_text=st.booleans(), margin=st.sampled_from(MARGINS))
def test_xsimpp_evaluation(data, targets, k, eval_text, margin):
    """Whatever augmented set was read (typed, untyped, variants of other sentences), the
    evaluation gives error rates whose typed counts sum to the errors, or a ClseError."""
    from clse.eval.xsimpp import Augmented

    n_aug = data.draw(st.integers(0, 6))
    texts = data.draw(st.lists(word_line, min_size=n_aug, max_size=n_aug))
    srcs = [data.draw(st.sampled_from([*targets, "not a target", None])) for _ in texts]
    types = [data.draw(st.sampled_from(["number", "entity"])) if s is not None else UNKNOWN
             for s in srcs]
    aug = Augmented(texts, types, srcs, "fuzz")
    sentences = {"eng_Latn": targets, "deu_Latn": [t[::-1] for t in targets]}
    try:
        metrics, rows = evaluate_xsimpp(lambda t, label: trigram_vectors(t), sentences, aug, k=k,
                                        margin=margin, eval_text=eval_text, progress=False)
    except ClseError as e:
        msg = str(e)
        assert "augmented" in msg or f"k={k}" in msg, msg
        event("ClseError")
        return
    row = rows[0]
    typed = sum(v for key, v in row.items() if key.startswith("errors_"))
    assert typed == row["errors"] and 0 <= metrics["xsimpp/avg"] <= 100
    assert f"errors_{MISALIGNED}" in row
    event("metrics")


# ----------------------------------------------------------------------------- hard negatives

english = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.lists(st.sampled_from(["The", "Big", "Apple", "New", "York", "is", "not", "because",
                              "2001", "1,250", "three", "million", "didn't", "it", "won", ".",
                              ",", "'s", "I", "A", "x", "\u2019s", "  "]),
             max_size=12).map(" ".join),
)


@fuzz_settings(120)
@given(sentences=st.lists(english, max_size=8), seed=st.integers(-5, 2 ** 40),
       types=st.lists(st.sampled_from(ERROR_TYPES), min_size=1, max_size=3),
       per_type=st.integers(1, 3))
def test_hard_negatives(sentences, seed, types, per_type):
    negatives = generate_hard_negatives(sentences, seed=seed, types=types, per_type=per_type)
    assert negatives == generate_hard_negatives(sentences, seed=seed, types=types,
                                                per_type=per_type)  # deterministic
    texts = [n.text for n in negatives]
    assert len(set(texts)) == len(texts) and not set(texts) & set(sentences)
    for n in negatives:
        assert n.errtype in types and sentences[n.index] == n.src and n.text != n.src


@pytest.mark.parametrize("kwargs", [
    {"per_type": 0}, {"per_type": "2"}, {"per_type": True}, {"types": ["nope"]},
    {"types": "number"}, {"sentences": "one sentence"}, {"sentences": ["ok", None]}])
def test_hard_negatives_arguments(kwargs):
    args = {"sentences": ["It rained in 2001."], **kwargs}
    if kwargs.get("types") == "number":  # one type as a string is that type
        assert generate_hard_negatives(**args)
        return
    with pytest.raises(ConfigError):
        generate_hard_negatives(**args)


@fuzz_settings(40)
@given(data=file_bytes(english))
def test_hard_negatives_cli(data, capsys):
    """``python -m clse.eval.hard_negatives``: files written, or one 'error:' line, exit 2."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "eng_Latn.txt"
        src.write_bytes(data)
        capsys.readouterr()
        try:
            hard_negatives_main([str(src), str(Path(tmp) / "out")])
        except SystemExit as e:
            err = capsys.readouterr().err
            assert e.code == 2 and "error:" in err and str(src) in err, err
            assert len(err.strip().splitlines()) == 1, err
            event("exit 2")
            return
        assert (Path(tmp) / "out" / "devtest_augmented" / "eng_Latn_augmented.devtest").exists()
        event("written")
