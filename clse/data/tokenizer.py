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
import unicodedata
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from clse.errors import ConfigError

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK)  # ids 0, 1, 2, 3; <mask> is added last
MODELS = ("unigram", "bpe")
MODEL_MAX_LENGTH = 512  # as XLM-R; the collator truncates to its own max_length anyway

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


def _rescore(trained: Tokenizer, texts: list[str]) -> Tokenizer:
    """One deterministic hard-EM step: score = log(Viterbi count / total) over training words."""
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
    return _unigram(specials + rescored)


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
    """
    from transformers import PreTrainedTokenizerFast

    if model not in MODELS:
        raise ConfigError(f"unknown tokenizer model {model!r}; expected one of {MODELS}")
    if vocab_size < 16:
        raise ConfigError(f"tokenizer vocab_size must be >= 16, got {vocab_size}")
    texts = [t for t in texts if t and not t.isspace()]
    if not texts:
        raise ConfigError("cannot train a tokenizer on no text")

    n = vocab_size - 1  # room for <mask>, added last
    if model == "unigram":
        tok = _pipeline(Tokenizer(models.Unigram()))
        trainer = trainers.UnigramTrainer(vocab_size=n, special_tokens=list(SPECIAL_TOKENS),
                                          unk_token=UNK, show_progress=False, **_UNIGRAM_FAST)
        tok.train_from_iterator(texts, trainer)
        tok = _rescore(tok, texts)
    else:
        tok = _pipeline(Tokenizer(models.BPE(unk_token=UNK)))
        trainer = trainers.BpeTrainer(vocab_size=n, special_tokens=list(SPECIAL_TOKENS),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
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
    """Load a tokenizer from a local folder or a Hub id with ``AutoTokenizer`` (no remote code)."""
    from transformers import AutoTokenizer

    local = Path(path_or_name).expanduser()
    name = str(local) if local.exists() else str(path_or_name)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as e:
        where = "local folder" if local.exists() else "not a local folder, and the Hub"
        raise ConfigError(f"cannot load tokenizer {str(path_or_name)!r} ({where}): {e}") from None
