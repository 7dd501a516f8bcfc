"""xsim++: xsim with hard-negative English targets, errors broken down by type.

xSIM++ (Chen et al., ACL 2023; LASER ``tasks/xsimplusplus``, ``source/eval.py --tgt-aug-langs``)
adds to the n English targets of FLORES-200 devtest m augmented English sentences, each a variant
of one original sentence made by a rule (causality alternation, entity or number replacement).
Files (distributed by Meta, see :data:`OFFICIAL_FILES`)::

    eng_Latn_augmented.devtest          one augmented sentence per line
    eng_Latn_errtype.devtest.json       {augmented sentence: {"errtype": type, "src": original}}

Definition, for source sentences ``x_1..x_n`` and targets ``y_1..y_n, a_1..a_m``:

1. the xsim search (:func:`clse.eval.xsim.margin_nn`: l2-normalised, ratio margin over k = 4
   neighbours each way) over all ``n + m`` targets;
2. ``x_i`` is correct when it picks ``y_i`` (or, with ``eval_text``, a target whose text equals
   ``y_i``'s, as LASER's default text comparison);
3. otherwise the error's type is the augmented sentence's ``errtype`` when the pick is an
   augmented sentence whose ``src`` is ``y_i``'s text (a hard negative of the gold), else
   ``misaligned`` (another original sentence, or a variant of another sentence) — LASER's
   breakdown, where the lookup is by the chosen sentence's text.

``errors / n`` is the xsim++ error rate; the typed counts sum to the errors.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clse.data.readers import _lines
from clse.errors import ClseError, DataError
from clse.eval.flores import check_sentence_count
from clse.eval.xsim import margin_nn
from clse.progress import bars_off

log = logging.getLogger("clse.eval")

MISALIGNED = "misaligned"
UNKNOWN = "unknown"  # an augmented line the json does not describe
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/nllb/laser/xsimplusplus"
OFFICIAL_FILES = ("eng_Latn_augmented.devtest", "eng_Latn_errtype.devtest.json")


@dataclass
class Augmented:
    """Augmented targets: their texts, error types and the original sentence each came from."""

    texts: list[str]
    errtypes: list[str]
    srcs: list[str | None]  # None: not described by the json (never typed)
    origin: str = ""  # where they came from (for messages)
    types: list[str] = field(default_factory=list)  # every type the json declares, sorted

    def __post_init__(self):
        if not (len(self.texts) == len(self.errtypes) == len(self.srcs)):
            raise ValueError("texts, errtypes and srcs must have the same length")
        if not self.types:
            self.types = sorted({t for t in self.errtypes if t != UNKNOWN})

    def restrict(self, targets: Sequence[str]) -> Augmented:
        """Only the variants of sentences in ``targets`` (e.g. after ``max_sentences``).

        Lines the json does not describe (``src`` None) are kept: nothing says which sentence
        they vary, so they stay in the search as untyped distractors (a pick of one is
        ``misaligned``), as :func:`load_augmented` warns.
        """
        keep = set(targets)
        rows = [i for i, src in enumerate(self.srcs) if src is None or src in keep]
        return Augmented([self.texts[i] for i in rows], [self.errtypes[i] for i in rows],
                         [self.srcs[i] for i in rows], self.origin, list(self.types))


def load_augmented(augmented_file: str | Path, errtype_file: str | Path) -> Augmented:
    """Read an augmented file and its error-type json (LASER's xsim++ format).

    Raises:
        DataError: a missing, empty or malformed file (``file:line`` where it applies).
    """
    aug_path, json_path = Path(augmented_file), Path(errtype_file)
    texts = []
    for n, text in _lines(aug_path):
        if not text.strip():
            raise DataError(aug_path, n, "empty line", "one augmented sentence per line")
        texts.append(text)
    if not json_path.is_file():
        problem = "is a folder, not a file" if json_path.is_dir() else "file not found"
        raise DataError(json_path, None, problem, "the xsim++ error-type json")
    try:
        raw = json_path.read_bytes()
    except OSError as exc:
        raise DataError(json_path, None, f"cannot read: {exc.strerror or exc}",
                        "a readable UTF-8 JSON file") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not an error
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(json_path, line, f"invalid UTF-8 ({exc.reason}: "
                        f"{raw[exc.start:exc.start + 4]!r})", "UTF-8 JSON") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(json_path, exc.lineno, f"invalid JSON: {exc.msg}",
                        '{"<augmented sentence>": {"errtype": "...", "src": "<original>"}}') \
            from None
    except RecursionError:
        raise DataError(json_path, None, "invalid JSON: nested too deeply",
                        '{"<augmented sentence>": {"errtype": "...", "src": "<original>"}}') \
            from None
    if not isinstance(table, dict):
        raise DataError(json_path, None, f"top level is a {type(table).__name__}",
                        "an object mapping each augmented sentence to {errtype, src}")
    info: dict[str, tuple[str, str]] = {}
    for key, value in table.items():
        if not (isinstance(value, dict) and isinstance(value.get("errtype"), str)
                and isinstance(value.get("src"), str)):
            raise DataError(json_path, None, f"entry {key[:60]!r} is {value!r:.80}",
                            '{"errtype": "<type>", "src": "<original sentence>"}')
        info[key.strip()] = (value["errtype"], value["src"].strip())
    errtypes, srcs, missing = [], [], []
    for n, text in enumerate(texts, 1):
        if text.strip() in info:
            errtype, src = info[text.strip()]
        else:
            errtype, src = UNKNOWN, None
            missing.append(n)
        errtypes.append(errtype)
        srcs.append(src)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        log.warning("%s: %d augmented line(s) (first: line %d; lines %s) are not in %s; they "
                    "stay in the search untyped, and errors on them count as %s", aug_path,
                    len(missing), missing[0], shown, json_path, MISALIGNED)
    types = sorted({errtype for errtype, _ in info.values()})
    return Augmented(texts, errtypes, srcs, f"{aug_path} + {json_path.name}", types)


@dataclass
class XsimppResult:
    errors: int
    n: int
    by_type: dict[str, int]  # error type -> count (MISALIGNED included); sums to errors

    @property
    def rate(self) -> float:
        return 100.0 * self.errors / self.n


def xsimpp(src_emb: Any, tgt_emb: Any, aug_emb: Any, aug: Augmented, tgt_texts: Sequence[str],
           k: int = 4, margin: str = "ratio", *, eval_text: bool = False,
           backend: str = "auto") -> XsimppResult:
    """xsim++ errors of one language (see the module docstring).

    Args:
        src_emb: (n, D) source sentences.
        tgt_emb: (n, D) English targets, row i the translation of source i.
        aug_emb: (m, D) augmented English sentences, row j = ``aug.texts[j]``.
        aug: the augmented sentences' types and originals.
        tgt_texts: the n English sentences (to match ``aug.srcs``).
    """
    n = len(tgt_texts)
    aug_emb = np.asarray(aug_emb, np.float32)
    if aug_emb.shape[0] != len(aug.texts):
        raise ValueError(f"aug_emb has {aug_emb.shape[0]} rows for {len(aug.texts)} sentences")
    targets = np.concatenate([np.asarray(tgt_emb, np.float32), aug_emb]) if len(aug.texts) \
        else np.asarray(tgt_emb, np.float32)
    chosen = margin_nn(src_emb, targets, k, margin, backend=backend)
    all_texts = list(tgt_texts) + list(aug.texts)
    by_type = dict.fromkeys([*aug.types, MISALIGNED], 0)
    errors = 0
    for i, c in enumerate(chosen.tolist()):
        if c == i or (eval_text and all_texts[c] == tgt_texts[i]):
            continue
        errors += 1
        kind = MISALIGNED
        if c >= n and aug.srcs[c - n] == tgt_texts[i].strip():
            kind = aug.errtypes[c - n]
        by_type[kind] = by_type.get(kind, 0) + 1
    return XsimppResult(errors, n, by_type)


def metric_name(errtype: str) -> str:
    """A metric-safe form of an error type (``Entity Replacement`` -> ``entity_replacement``)."""
    return re.sub(r"[^0-9a-z]+", "_", errtype.lower()).strip("_") or "none"


def evaluate_xsimpp(encode: Callable[[list[str], str], np.ndarray],
                    sentences: dict[str, list[str]], aug: Augmented, target: str = "eng_Latn",
                    languages: Sequence[str] | None = None, k: int = 4, margin: str = "ratio", *,
                    eval_text: bool = False, prefix: str = "xsimpp", progress: bool = True,
                    backend: str = "auto") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """xsim++ X -> ``target`` for each language of a multi-way set.

    Args:
        encode: ``(texts, label) -> (len(texts), D)`` embeddings.
        sentences: ``{lang: sentences}`` with ``target`` among them.
        aug: augmented targets (restricted here to variants of ``sentences[target]``).
        prefix: metric prefix (``xsimpp``; ``xsimpp_generated`` for clse's own negatives).

    Returns:
        ``(metrics, rows)``: ``<prefix>/<lang>`` (error %), ``<prefix>/avg``, and
        ``<prefix>/type/<type>`` = errors of that type in % of the sentences, averaged over
        languages (they sum to ``<prefix>/avg``); one row per language with the counts.

    Raises:
        ClseError: no augmented sentence belongs to these targets (e.g. devtest files on dev).
    """
    from tqdm.auto import tqdm

    if target not in sentences:
        raise ClseError(f"xsim++ target {target!r} is not in the evaluation set")
    langs = [lang for lang in (languages if languages is not None else sentences)
             if lang != target]
    missing = [lang for lang in langs if lang not in sentences]
    if missing or not langs:
        raise ClseError(f"xsim++ languages {missing or '(none)'} are not in the evaluation set")
    tgt_texts = list(sentences[target])
    check_sentence_count(tgt_texts, target, k, margin, "xsim++")
    full = len(aug.texts)
    aug = aug.restrict([t.strip() for t in tgt_texts])
    if not any(src is not None for src in aug.srcs):
        raise ClseError(f"none of the {full} augmented sentences ({aug.origin}) is a variant of "
                        f"these {len(tgt_texts)} {target} targets: the augmented files belong to "
                        f"another split or language (the official ones are for devtest)")
    if len(aug.texts) < full:
        log.info("xsim++: %d of the %d augmented sentences are variants of these %d %s targets; "
                 "the other %d (variants of other sentences) are left out", len(aug.texts), full,
                 len(tgt_texts), target, full - len(aug.texts))
    tgt_emb = encode(tgt_texts, target)
    aug_emb = encode(aug.texts, f"{target} augmented")
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    bar = tqdm(langs, desc=f"{prefix} ->{target}", unit="lang", disable=bars_off(progress),
               leave=False)
    for lang in bar:
        src_texts = list(sentences[lang])
        if len(src_texts) != len(tgt_texts):
            raise ClseError(f"xsim++: {lang} has {len(src_texts)} sentences but {target} has "
                            f"{len(tgt_texts)}; the set must be multi-way parallel")
        res = xsimpp(encode(src_texts, lang), tgt_emb, aug_emb, aug, tgt_texts, k, margin,
                     eval_text=eval_text, backend=backend)
        metrics[f"{prefix}/{lang}"] = res.rate
        rows.append({"language": lang, "n": res.n, "errors": res.errors, "error": res.rate,
                     **{f"errors_{t}": c for t, c in res.by_type.items()}})
        bar.set_postfix_str(f"{lang} {res.rate:.2f}%")
    metrics[f"{prefix}/avg"] = float(np.mean([r["error"] for r in rows]))
    for t in [*aug.types, MISALIGNED]:
        metrics[f"{prefix}/type/{metric_name(t)}"] = float(np.mean(
            [100.0 * r.get(f"errors_{t}", 0) / r["n"] for r in rows]))
    return metrics, rows
