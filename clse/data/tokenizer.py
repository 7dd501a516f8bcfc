"""Train an XLM-R-style tokenizer locally, and load tokenizers.

The trained tokenizer follows XLM-R's layout:

* ids ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then the learnt pieces, then ``<mask>``
  **last** (id ``len(tokenizer) - 1``, as XLM-R's 250001);
* NFKC normaliser (sentencepiece's ``nmt_nfkc`` in spirit), whitespace split + Metaspace
  (``▁`` prepended to every word), Metaspace decoder;
* post-processor ``<s> A </s>`` and ``<s> A </s></s> B </s>`` (RoBERTa style).

It is returned as a ``transformers.PreTrainedTokenizerFast`` (in transformers 5 that is
``TokenizersBackend``) with XLM-R's special-token attributes, **not** as
``XLMRobertaTokenizer``: transformers 5 rebuilds an ``XLMRobertaTokenizer`` from the vocabulary
alone when it loads one, dropping any normaliser but sentencepiece's precompiled one, so NFKC
would silently be lost on reload. Saved as ``PreTrainedTokenizerFast``,
``AutoTokenizer.from_pretrained(save_dir)`` reads ``tokenizer.json`` verbatim (also from a
model folder whose config says ``xlm-roberta``) and gives the same ids.

Determinism: the ``tokenizers`` Unigram trainer is not bit-reproducible (its hash-map order
varies per process, which perturbs the EM scores). After training, the pieces' scores are
re-estimated once from Viterbi piece counts over the training words (a hard-EM step, in a fixed
order) and the pieces sorted by (score, piece), which made repeated runs identical in our
tests. BPE training is deterministic as it is.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from clse.errors import ConfigError

log = logging.getLogger(__name__)

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)  # ids 0, 1, 2, 3; <mask> is added last
MODELS = ("unigram", "bpe")
MODEL_MAX_LENGTH = 512  # as XLM-R; the collator truncates to its own max_length anyway
MIN_VOCAB_SIZE = 16
# the trainers allocate per vocabulary entry up front: 10**9 aborts the process (a Rust OOM, no
# Python exception); XLM-R has 250,002 entries, NLLB 256,206
MAX_VOCAB_SIZE = 2 ** 20

# Unigram trainer settings traded for speed (defaults: 1M seeds, shrink 0.75, 2 sub-iterations):
# ~15 s instead of ~70 s on 100k multilingual Tatoeba lines on 2 CPU cores.
_UNIGRAM_FAST = dict(seed_size=50_000, shrinking_factor=0.5, n_sub_iterations=1)


def _pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def _unigram(vocab: list[tuple[str, float]]) -> Tokenizer:
    return _pipeline(Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK),
                                              byte_fallback=False)))


def _rescore(trained: Tokenizer, texts: list[str], limit: int) -> Tokenizer:
    """One deterministic hard-EM step: score = log(Viterbi count / total) over training words.

    The trainer can return a few more pieces than asked for (it keeps every character): the
    lowest-scoring multi-character pieces are then dropped to keep ``limit`` entries in all.
    """
    vocab = [(str(p), float(s)) for p, s in json.loads(trained.to_str())["model"]["vocab"]]
    k = len(SPECIAL_TOKENS)
    assert [p for p, _ in vocab[:k]] == list(SPECIAL_TOKENS), vocab[:k]
    specials = [(p, 0.0) for p in SPECIAL_TOKENS]
    pieces = sorted(vocab[k:], key=lambda v: (-v[1], v[0]))
    words = Counter(w for t in texts for w in unicodedata.normalize("NFKC", t).split())
    wl = sorted(words)
    enc = _unigram(specials + pieces).encode_batch(wl, add_special_tokens=False)
    ids = np.fromiter(chain.from_iterable(e.ids for e in enc), dtype=np.int64)
    weight = np.repeat(np.array([words[w] for w in wl], dtype=np.float64),
                       [len(e.ids) for e in enc])
    count = np.bincount(ids, weights=weight, minlength=len(specials) + len(pieces))[k:]
    score = np.log(np.maximum(count, 0.5) / max(count.sum(), 1.0))  # unused pieces: half a count
    rescored = sorted(((p, float(s)) for (p, _), s in zip(pieces, score)),
                      key=lambda v: (-v[1], v[0]))
    excess = len(specials) + len(rescored) - limit
    if excess > 0:
        longer = [p for p, _ in rescored if len(p) > 1]
        drop = set(longer[len(longer) - excess:]) if excess <= len(longer) else set(longer)
        rescored = [v for v in rescored if v[0] not in drop]
        if len(specials) + len(rescored) > limit:
            raise _too_small(limit + 1, texts, "unigram")
    return _unigram(specials + rescored)


def _training_texts(texts: Iterable[str]) -> list[str]:
    """The texts to train on: checked, special-token strings blanked, blank texts skipped (the
    skipped ones are counted and logged)."""
    try:
        items = list(texts)
    except TypeError:
        raise ConfigError(f"train_tokenizer needs an iterable of sentences, got "
                          f"{type(texts).__name__}") from None
    kept: list[str] = []
    blank: list[int] = []
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ConfigError(f"tokenizer training text {i} is a {type(t).__name__} ({t!r:.60}), "
                              f"expected a str")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates (e.g. from surrogateescape decoding)
            raise ConfigError(f"tokenizer training text {i} is not valid Unicode: {e.reason} "
                              f"at character {e.start} ({t[e.start:e.end]!r})") from None
        t = _without_specials(t)
        if not t or t.isspace():
            blank.append(i)
            continue
        kept.append(t)
    if blank:
        shown = ", ".join(str(i) for i in blank[:10]) + (", ..." if len(blank) > 10 else "")
        log.warning("train_tokenizer: skipped %d of %d texts that are empty, whitespace only "
                    "or special tokens only (indices %s)", len(blank), len(items), shown)
    if not kept:
        raise ConfigError(f"cannot train a tokenizer on no text ({len(items)} texts, all empty, "
                          f"whitespace only or special tokens only)")
    return kept


def _without_specials(text: str) -> str:
    """``text`` with the special tokens' strings (``<mask>``, ``<s>``, ...) replaced by spaces.

    When encoding, those strings are split off as special tokens before the model sees the text;
    learnt from the text as pieces they would collide with the special tokens (a ``<mask>``
    piece takes a low id, and ``<mask>`` would no longer be the last id). NFKC can make them
    from look-alikes (``＜mask＞``), so they are looked for after NFKC.
    """
    if "<" not in text and "\uff1c" not in text and "\ufe64" not in text:  # the common case
        return text
    normal = unicodedata.normalize("NFKC", text)
    if not any(sp in normal for sp in (*SPECIAL_TOKENS, MASK)):
        return text
    for sp in (*SPECIAL_TOKENS, MASK):
        normal = normal.replace(sp, " ")
    return normal


def _alphabet(texts: list[str]) -> set[str]:
    """The characters the trainers must keep: those of the NFKC-normalised words, and ``▁``."""
    return {c for t in texts for c in unicodedata.normalize("NFKC", t) if not c.isspace()} | {"▁"}


def _too_small(vocab_size: int, texts: list[str], model: str) -> ConfigError:
    k = len(_alphabet(texts))
    return ConfigError(f"tokenizer vocab_size {vocab_size} is too small for the training text: "
                       f"it has about {k} distinct characters and a {model} tokenizer keeps "
                       f"each one, plus {len(SPECIAL_TOKENS) + 1} special tokens; use "
                       f"vocab_size >= {k + len(SPECIAL_TOKENS) + 1} (or less varied text)")


def _train(tok: Tokenizer, texts: list[str], trainer: Any, vocab_size: int, model: str) -> None:
    try:
        tok.train_from_iterator(texts, trainer)
    except Exception as e:  # the Rust trainers raise a bare Exception
        if "not large enough" in str(e):
            raise _too_small(vocab_size, texts, model) from None
        raise ConfigError(f"tokenizer training failed ({model}, vocab_size {vocab_size}, "
                          f"{len(texts)} texts): {e}") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int, save_dir: str | Path | None = None,
                    model: str = "unigram") -> Any:
    """Train an XLM-R-style tokenizer on ``texts`` (see the module docstring for its layout).

    Args:
        texts: training sentences (read once, kept in memory).
        vocab_size: the total size including the 5 special tokens; the result has
            ``len(tokenizer) <= vocab_size`` (fewer when the text is too small to fill it),
            so size a model's embeddings with ``len(tokenizer)``.
        save_dir: when given, ``save_pretrained`` there (reload with ``AutoTokenizer``).
        model: ``unigram`` (sentencepiece-like, as XLM-R) or ``bpe``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with bos/cls ``<s>``, eos/sep ``</s>``,
        pad ``<pad>``, unk ``<unk>`` and mask ``<mask>``.

    Empty and whitespace-only texts are skipped (counted in a warning). The special tokens'
    strings (``<mask>``, ...) in a text are left out of training: encoding splits them off.

    Raises:
        ConfigError: an unknown model; a ``vocab_size`` that is not an integer in
            [16, 2**20] or too small for the text's characters; texts that are not strings,
            hold lone surrogates or are all blank.
    """
    from transformers import PreTrainedTokenizerFast

    if not isinstance(model, str) or model not in MODELS:
        raise ConfigError(f"unknown tokenizer model {model!r}; expected one of {MODELS}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ConfigError(f"tokenizer vocab_size must be an integer, got {vocab_size!r} "
                          f"({type(vocab_size).__name__})")
    vocab_size = int(vocab_size)
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ConfigError(f"tokenizer vocab_size must be >= {MIN_VOCAB_SIZE} and "
                          f"<= {MAX_VOCAB_SIZE:,}, got {vocab_size}")
    if isinstance(texts, (str, bytes)):
        raise ConfigError("train_tokenizer needs an iterable of sentences, got a single "
                          f"{type(texts).__name__} (it would train on its characters)")
    texts = _training_texts(texts)

    n = vocab_size - 1  # room for <mask>, added last
    if model == "unigram":
        tok = _pipeline(Tokenizer(models.Unigram()))
        trainer = trainers.UnigramTrainer(vocab_size=n, special_tokens=list(SPECIAL_TOKENS),
                                          unk_token=UNK, show_progress=False, **_UNIGRAM_FAST)
        _train(tok, texts, trainer, vocab_size, model)
        tok = _rescore(tok, texts, n)
    else:
        tok = _pipeline(Tokenizer(models.BPE(unk_token=UNK)))
        trainer = trainers.BpeTrainer(vocab_size=n, special_tokens=list(SPECIAL_TOKENS),
                                      show_progress=False)
        _train(tok, texts, trainer, vocab_size, model)
        if tok.get_vocab_size() > n:  # BPE keeps every character, whatever vocab_size says
            raise _too_small(vocab_size, texts, model)
    tok.add_special_tokens([AddedToken(t, special=True) for t in (*SPECIAL_TOKENS, MASK)])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} {EOS} $B {EOS}",
        special_tokens=[(BOS, 0), (EOS, 2)])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, sep_token=EOS, cls_token=BOS,
        unk_token=UNK, pad_token=PAD, mask_token=MASK, model_max_length=MODEL_MAX_LENGTH)
    if save_dir is not None:
        hf.save_pretrained(str(save_dir))
    return hf


def load_tokenizer(path_or_name: str | Path) -> Any:
    """Load a tokenizer from a local folder or a Hub id with ``AutoTokenizer`` (no remote code).

    Raises:
        ConfigError: an empty name, or anything that fails while loading (missing or malformed
            files: ``transformers`` and ``tokenizers`` raise many exception types for those).
    """
    from transformers import AutoTokenizer

    if not isinstance(path_or_name, (str, Path)) or not str(path_or_name).strip():
        raise ConfigError(f"tokenizer: expected a folder or a Hub name, got {path_or_name!r}")
    try:
        local = Path(path_or_name).expanduser()
        exists = local.exists()
    except (RuntimeError, ValueError, OSError):  # "~nouser/...", a NUL byte, a too-long name
        local, exists = Path(path_or_name), False
    name = str(local) if exists else str(path_or_name)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        tok(["a b"], truncation=True)  # a malformed config can load and fail on first use only
        return tok
    except Exception as e:  # KeyError, TypeError, AttributeError, tokenizers' Exception, ...
        where = "local folder" if exists else "not a local folder, and the Hub"
        detail = str(e).strip() or type(e).__name__
        raise ConfigError(f"cannot load tokenizer {str(path_or_name)!r} ({where}): "
                          f"{type(e).__name__}: {detail}") from None
