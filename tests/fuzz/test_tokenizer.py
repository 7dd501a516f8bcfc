"""Tokenizer training and loading on fuzzed input: a working tokenizer, or a ConfigError that
names the problem (vocab_size, the text, the model, the folder). Nothing else escapes — in
particular no Rust panic or abort (a huge vocab_size once aborted the process on an allocation).

Skip policy: empty and whitespace-only texts are skipped by ``train_tokenizer``; the skipped
count is logged as a warning (checked here), never silent.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from clse.data.tokenizer import (MASK, MAX_VOCAB_SIZE, SPECIAL_TOKENS, load_tokenizer,
                                 train_tokenizer)
from clse.errors import ConfigError
from tests.fuzz import fuzz_settings

# control characters, separators, non-BMP, combining marks, compatibility forms NFKC rewrites
SPECIAL = ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\xa0", "\u2028", "\u200b", "\u200d",
           "\ufeff", "\ufffd", "\u0301", "\uff21", "\ufb01", "\u3000", "\U0001F600", "\U0001F1E9",
           "\U00020000", "\U000E0001", "<mask>", "<s>", "</s>", "<pad>", "\uff1cunk\uff1e", "\t", "\n",
           " "]
text = st.one_of(
    st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(SPECIAL)),
             max_size=30).map("".join),
    st.sampled_from(["", " ", "\n\t ", "\u3000"]),  # blank: skipped and counted
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "語", "\U0001F600", "ab "]),
              st.integers(1, 200)),  # one character repeated
    st.text(st.characters(codec="ascii", categories=["L"]), min_size=1, max_size=8).map(
        lambda w: " ".join([w] * 5)),
)
texts = st.one_of(st.lists(text, max_size=25),
                  st.lists(st.sampled_from(["Hello world.", "Das ist gut.", "Привет!"]),
                           min_size=1, max_size=5))
vocab = st.one_of(st.integers(16, 300), st.integers(16, 300), st.integers(16, 300),
                  st.integers(16, 300), st.integers(-5, 15),
                  st.sampled_from([8000, MAX_VOCAB_SIZE, MAX_VOCAB_SIZE + 1, 10 ** 9]),
                  st.sampled_from([None, "8000", 100.0, 100.5, True, [100]]))


def without_specials(t: str) -> str:
    """What the tokenizer sees of a text when encoding: special-token strings (after NFKC, which
    makes them from look-alikes such as ``＜mask＞``) are split off as special tokens."""
    normal = unicodedata.normalize("NFKC", t)
    for sp in (*SPECIAL_TOKENS, MASK):
        normal = normal.replace(sp, " ")
    return normal


def check_tokenizer(tok, vocab_size: int, training: list[str]) -> None:
    assert len(tok) <= vocab_size  # the documented bound (fewer when the text is small)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.mask_token == MASK and tok.mask_token_id == len(tok) - 1
    specials = {*SPECIAL_TOKENS, MASK}
    ids = tok.get_vocab()
    assert sorted(ids[t] for t in specials) == [0, 1, 2, 3, len(tok) - 1]  # learnt pieces between
    sample = [t for t in training if t.strip()][:5] + ["unseen Wörter 語 \U0001F600"]
    for ids in tok(sample)["input_ids"]:
        assert ids[0] == 0 and ids[-1] == 2 and all(0 <= i < len(tok) for i in ids)
        tok.decode(ids)


@fuzz_settings(60)
@given(training=texts, vocab_size=vocab,
       model=st.sampled_from(["unigram"] * 5 + ["bpe"] * 4 + ["wordpiece", None]))
def test_train_tokenizer(training, vocab_size, model, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clse.data.tokenizer"):
        try:
            tok = train_tokenizer(list(training), vocab_size, model=model)
        except ConfigError as e:
            msg = str(e)
            assert any(w in msg for w in ("vocab_size", "no text", "tokenizer model")), msg
            event("ConfigError: " + ("too small" if "too small" in msg else "vocab_size"
                                     if "vocab_size" in msg else "no text" if "no text" in msg
                                     else "model"))
            return
    check_tokenizer(tok, vocab_size, training)
    event("tokenizer trained")
    blank = sum(1 for t in training if not without_specials(t).strip())
    if blank:  # the skip policy: counted and reported
        assert f"skipped {blank} of {len(training)} texts" in caplog.text


@fuzz_settings(30)
@given(items=st.lists(st.one_of(text, st.none(), st.integers(), st.binary(max_size=4),
                                st.just("\ud800 lone surrogate")), min_size=1, max_size=6))
def test_train_tokenizer_odd_items(items):
    """Non-str items and lone surrogates are a ConfigError naming the text's index."""
    try:
        tok = train_tokenizer(items, 64)
    except ConfigError as e:
        msg = str(e)
        assert "text" in msg or "vocab_size" in msg, msg
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)
               or (t.strip() and "\ud800" in t)]
        if bad and "no text" not in msg and "vocab_size" not in msg:
            assert f"text {bad[0]} " in msg, msg
        event("ConfigError")
        return
    event("tokenizer trained")
    assert all(isinstance(t, str) for t in items)
    check_tokenizer(tok, 64, items)


def test_a_string_is_not_a_list_of_texts():
    with pytest.raises(ConfigError, match="single str"):
        train_tokenizer("hello world", 64)


def test_too_small_vocab_for_the_alphabet_names_the_sizes():
    """300 distinct characters cannot fit in 16 entries: both models say so (BPE used to return
    a tokenizer larger than vocab_size; unigram raised a bare Exception from Rust)."""
    many = [" ".join(chr(0x4E00 + i) for i in range(300))]
    for model in ("unigram", "bpe"):
        with pytest.raises(ConfigError, match=r"vocab_size 16 is too small .* 301 distinct"):
            train_tokenizer(many, 16, model=model)


@pytest.mark.parametrize("training, vocab_size", [
    (["185<>83c9894", "19c65934"], 16), (["4517<4<4c6", "c602a>2", "4b<5"], 18)])
def test_vocab_size_is_an_upper_bound(training, vocab_size):
    """Found by the fuzzer: near the alphabet size the unigram trainer returns a piece more than
    asked for, so the tokenizer had vocab_size + 1 entries (an embedding row too few)."""
    tok = train_tokenizer(training, vocab_size)
    check_tokenizer(tok, vocab_size, training)


def test_special_token_strings_in_the_text():
    """Found by the fuzzer: '<mask>' in the training text was learnt as a piece (id 4), so the
    mask token was no longer the last id; now such strings are left out of training, and in
    text they encode as the special token."""
    training = ["<mask><mask> Hello", "a <s> b </s> <pad>", "\uff1cmask\uff1e x"]
    tok = train_tokenizer(training, 40)
    check_tokenizer(tok, 40, training)
    assert tok.mask_token_id in tok("x <mask> y")["input_ids"]


# ----------------------------------------------------------------------------- loading

_SAVED: dict[str, Path] = {}


def saved_tokenizer() -> Path:
    if "dir" not in _SAVED:
        folder = Path(tempfile.mkdtemp(prefix="clse-fuzz-tok-"))
        train_tokenizer(["Hello world.", "Das ist ein Test.", "Привет, мир!"] * 5, 60,
                        save_dir=folder)
        _SAVED["dir"] = folder
    return _SAVED["dir"]


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"]


@st.composite
def damage(draw) -> tuple[str, bytes | None]:
    """(file, new content or None to delete it)."""
    name = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["bytes", "json", "truncate", "delete", "edit"]))
    good = saved_tokenizer() / name
    original = good.read_bytes() if good.exists() else b"{}"
    if how == "bytes":
        return name, draw(st.binary(max_size=64))
    if how == "json":
        return name, json.dumps(draw(json_value)).encode()
    if how == "truncate":
        return name, original[:draw(st.integers(0, max(0, len(original) - 1)))]
    if how == "delete":
        return name, None
    # edit one key of the real file to a junk value
    data = json.loads(original) if original.strip() else {}
    if isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data)))
        data[key] = draw(json_value)
    return name, json.dumps(data).encode()


@fuzz_settings(40)
@given(changes=st.lists(damage(), min_size=1, max_size=2))
def test_load_damaged_tokenizer_folder(changes):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tok"
        shutil.copytree(saved_tokenizer(), folder)
        for name, content in changes:
            if content is None:
                (folder / name).unlink(missing_ok=True)
            else:
                (folder / name).write_bytes(content)
        try:
            tok = load_tokenizer(folder)
        except ConfigError as e:
            assert str(folder) in str(e) and "cannot load tokenizer" in str(e), str(e)
            event("ConfigError")
            return
        ids = tok(["Hello world."], truncation=True)["input_ids"][0]  # it works
        assert isinstance(ids, list)
        event("loaded")


@pytest.mark.parametrize("name", ["", "   ", "~nosuchuser/tok", "a\x00b", "a/b/c/d",
                                  "no such name", 5, None])
def test_load_tokenizer_odd_names(name):
    with pytest.raises(ConfigError, match="tokenizer"):
        load_tokenizer(name)
