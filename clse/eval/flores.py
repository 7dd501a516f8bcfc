"""Multi-way parallel evaluation sets (FLORES-200 layout) and xsim over many languages.

A split folder holds one ``<lang>.txt`` per language, UTF-8, one sentence per line, line ``i`` of
every file a translation of line ``i`` of every other (``shared/data/flores200/dev/``, or the small
NTREX set bundled in ``clse/eval/bundled/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clse.errors import ClseError, DataError
from clse.eval.xsim import xsim_error_rate
from clse.progress import bars_off

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
"""NTREX-128, first 200 lines, 8 languages: the fallback when FLORES-200 is not found."""


def bundled_languages() -> list[str]:
    """Languages of the bundled fallback set (FLORES-200 codes)."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.txt"))


def load_multiway(split_dir: str | Path, languages: Sequence[str]) -> dict[str, list[str]]:
    """Read ``<split_dir>/<lang>.txt`` for each language.

    Returns:
        ``{lang: sentences}`` in the order of ``languages``; all lists have the same length.

    Lines are split at line feeds only (U+2028 / U+0085 inside a sentence are kept), a carriage
    return before a line feed is dropped, and so is a UTF-8 byte-order mark at the start of a
    file. Empty lines are kept (as empty sentences).

    Raises:
        DataError: a file is missing, empty, not valid UTF-8 (``file:line``) or its line count
            differs from the first file's.
    """
    from clse.data.readers import _lines

    split_dir = Path(split_dir)
    if isinstance(languages, str):  # one language, not its characters
        languages = [languages]
    out: dict[str, list[str]] = {}
    first: tuple[Path, int] | None = None
    for lang in dict.fromkeys(languages):  # drop duplicates, keep order
        if not isinstance(lang, str) or not lang or "/" in lang or "\0" in lang:
            raise DataError(split_dir, None, f"invalid language {lang!r}",
                            "a language code naming a <lang>.txt file, such as 'deu_Latn'")
        path = split_dir / f"{lang}.txt"
        if not path.is_file():
            raise DataError(path, None, f"no file for language {lang!r}",
                            expected=f"one <lang>.txt per language in {split_dir}")
        lines = [text for _, text in _lines(path)]  # strict UTF-8, named file:line on errors
        if first is None:
            first = (path, len(lines))
        elif len(lines) != first[1]:
            raise DataError(path, None, f"has {len(lines)} lines but {first[0]} has {first[1]}",
                            expected="multi-way parallel files with equal line counts")
        out[lang] = lines
    return out


def evaluate_xsim(encode: Callable[[list[str]], np.ndarray], sentences: dict[str, list[str]],
                  target: str = "eng_Latn", languages: Sequence[str] | None = None, k: int = 4,
                  margin: str = "ratio", progress: bool = True, *, eval_text: bool = False,
                  backend: str = "auto") -> dict[str, float]:
    """xsim error rates X -> ``target`` for each language of a multi-way set.

    Args:
        encode: ``list[str] -> (n, D)`` embeddings (numpy or torch).
        sentences: ``{lang: sentences}`` as from :func:`load_multiway`; it must contain ``target``.
        target: the pivot language searched into (FLORES code).
        languages: source languages; default all of ``sentences`` except ``target``.
        k, margin, eval_text, backend: see :func:`clse.eval.xsim.xsim`.
        progress: show a tqdm bar over languages.

    Returns:
        ``{"xsim/<lang>": error % , ..., "xsim/avg": mean over languages}`` (lower is better).
        The target and each language are encoded once.
    """
    from tqdm.auto import tqdm

    if target not in sentences:
        raise ClseError(f"xsim target language {target!r} is not in the evaluation set "
                        f"(it has: {', '.join(sorted(sentences)) or 'nothing'})")
    langs = [lang for lang in (languages if languages is not None else sentences)
             if lang != target]
    missing = [lang for lang in langs if lang not in sentences]
    if missing:
        raise ClseError(f"xsim languages {missing} are not in the evaluation set "
                        f"(it has: {', '.join(sorted(sentences))})")
    if not langs:
        raise ClseError("xsim needs at least one source language besides the target")

    tgt_texts = list(sentences[target])
    if not tgt_texts:
        raise ClseError(f"xsim: {target} has no sentences")
    tgt_emb = _encode(encode, tgt_texts, target)
    check_sentence_count(tgt_texts, target, k, margin, "xsim")
    metrics: dict[str, float] = {}
    bar = tqdm(langs, desc=f"xsim ->{target}", unit="lang", disable=bars_off(progress),
               leave=False)
    for lang in bar:
        src_texts = list(sentences[lang])
        if len(src_texts) != len(tgt_texts):
            raise ClseError(f"xsim: {lang} has {len(src_texts)} sentences but {target} has "
                            f"{len(tgt_texts)}; the set must be multi-way parallel")
        src_emb = _encode(encode, src_texts, lang)
        rate = xsim_error_rate(src_emb, tgt_emb, k, margin, tgt_texts=tgt_texts,
                               eval_text=eval_text, backend=backend)
        metrics[f"xsim/{lang}"] = rate
        bar.set_postfix_str(f"{lang} {rate:.2f}%")
    metrics["xsim/avg"] = float(np.mean([metrics[f"xsim/{lang}"] for lang in langs]))
    return metrics


def check_sentence_count(texts: Sequence[str], lang: str, k: int, margin: str,
                         what: str) -> None:
    """A margin over k neighbours needs at least k sentences (and any search at least one)."""
    n = len(texts)
    if n == 0:
        raise ClseError(f"{what}: {lang} has no sentences")
    if margin != "absolute" and isinstance(k, int) and k > n:
        raise ClseError(f"{what}: {lang} has {n} sentence(s), fewer than k={k} (the margin's "
                        f"neighbourhood size): use more sentences (max_sentences) or a smaller k")


def _encode(encode: Callable[[list[str]], np.ndarray], texts: list[str], lang: str):
    emb = encode(texts)
    rows = getattr(emb, "shape", (len(emb),))[0]
    if rows != len(texts):
        raise ClseError(f"the encoder returned {rows} embeddings for {len(texts)} {lang} sentences")
    return emb


def group_means(metrics: dict[str, float], prefix: str, groups: dict[str, Sequence[str]],
                languages: Sequence[str]) -> dict[str, float]:
    """``<prefix>/avg_<group>``: the mean of ``<prefix>/<lang>`` over each group's languages
    (e.g. the languages trained on, those held out, the high-resource ones). A group may only
    name evaluated languages; languages dropped by the data (the bundled sample) are skipped."""
    from clse.errors import ConfigError

    out = {}
    for group, langs in (groups or {}).items():
        if not str(group).isidentifier():
            raise ConfigError(f"{prefix}: group name {group!r} must be a plain identifier")
        stray = sorted(set(langs) - set(languages))
        values = [metrics[f"{prefix}/{lang}"] for lang in langs if f"{prefix}/{lang}" in metrics]
        if stray and not values:
            raise ConfigError(f"{prefix}: group {group!r} names {stray}, which are not among the "
                              f"evaluated languages")
        if values:
            out[f"{prefix}/avg_{group}"] = float(np.mean(values))
    return out
