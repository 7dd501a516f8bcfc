"""Tatoeba bitext retrieval (LASER's Tatoeba test set v1): error rates X->eng and eng->X.

Data: ``tatoeba.<xxx>-eng.<xxx>`` and ``tatoeba.<xxx>-eng.eng`` per language, line ``i`` of one the
translation of line ``i`` of the other. The sets are bilingual (each language has its own English
side, mostly 1000 pairs, down to 104), so languages are not comparable to each other.

Definition (LASER ``source/lib/indexing.py`` ``IndexSearchMultiple``, used for the Tatoeba
results of Artetxe & Schwenk 2019; also XTREME's and LaBSE's "Tatoeba accuracy" = 100 - error):

1. l2-normalise the sentence vectors of both sides;
2. for every X sentence, its nearest English sentence of the same pair file by cosine
   (LASER: ``IndexFlatL2`` on unit vectors, the same neighbour); likewise eng -> X;
3. an error when the neighbour is not the gold line (index comparison; ``eval_text`` compares the
   texts instead, as LASER's ``--textual``, which forgives duplicate sentences);
4. ``x2e`` / ``e2x`` = 100 * errors / n per direction.

LASER uses plain cosine for Tatoeba (no margin), unlike xsim; ``margin="ratio"`` (or
``"distance"``) applies xsim's margin instead, for a comparison, and is labelled as such in the
results. Languages are named by their Tatoeba code (``deu``, ``cmn``); ``langmap.tsv`` maps FLORES
codes to them (``srp`` is mostly Latin-script Serbian, ``cmn`` mixes Simplified and Traditional
Chinese: both only approximate their FLORES counterparts ``srp_Cyrl`` and ``zho_Hant``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clse.data.readers import _lines
from clse.errors import ClseError, ConfigError, DataError
from clse.eval.encode import encode_texts
from clse.eval.xsim import MARGINS, margin_nn
from clse.progress import bars_off

PIVOT = "eng"
log = logging.getLogger("clse.eval")


@dataclass(frozen=True)
class LangmapRow:
    """One MEXMA language of ``langmap.tsv`` and its Tatoeba v1 code (None when it has none)."""

    flores: str
    name: str
    tatoeba: str | None
    approximate: bool  # marked `*`: the Tatoeba set only approximates the FLORES language


def load_langmap(path: str | Path) -> list[LangmapRow]:
    """Read ``langmap.tsv`` (header ``flores200_code, language, tatoeba_v1_code, ...``).

    Tab-separated, one row a line, no quoting; a UTF-8 byte-order mark is ignored. Blank lines
    are skipped, and counted in a warning.

    Raises:
        DataError: a missing, empty or non-UTF-8 file, a header without the needed columns, or a
            row without a ``flores200_code`` (``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "file not found", "langmap.tsv from the shared data folder")
    lines = _lines(path)  # strict UTF-8, file:line on errors, "file is empty"
    _, header_text = next(lines)
    header = [h.strip() for h in header_text.split("\t")]
    needed = ("flores200_code", "language", "tatoeba_v1_code")
    if not set(needed) <= set(header):
        raise DataError(path, 1, f"header {header} lacks {sorted(set(needed) - set(header))}",
                        "a tab-separated header with flores200_code and tatoeba_v1_code")
    col = {name: header.index(name) for name in needed}
    rows, blank = [], []
    for line, text in lines:
        if not text.strip():
            blank.append(line)
            continue
        fields = text.split("\t")

        def get(name: str) -> str:
            return fields[col[name]].strip() if col[name] < len(fields) else ""

        flores, code = get("flores200_code"), get("tatoeba_v1_code")
        if not flores:
            raise DataError(path, line, "empty flores200_code",
                            f"a FLORES-200 code in column {col['flores200_code'] + 1}")
        tatoeba = code.rstrip("*") if code not in ("", "-") else None
        rows.append(LangmapRow(flores, get("language"), tatoeba or None, code.endswith("*")))
    if blank:
        log.warning("%s: skipped %d blank line(s) (lines %s)", path, len(blank),
                    ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else ""))
    return rows


def available_codes(folder: str | Path) -> list[str]:
    """Tatoeba codes with both ``tatoeba.<xxx>-eng.<xxx>`` and ``.eng`` in ``folder``, sorted."""
    folder = Path(folder)
    codes = []
    for path in folder.glob(f"tatoeba.*-{PIVOT}.{PIVOT}"):
        code = path.name[len("tatoeba."):-len(f"-{PIVOT}.{PIVOT}")]
        if (folder / f"tatoeba.{code}-{PIVOT}.{code}").is_file():
            codes.append(code)
    return sorted(codes)


def resolve_languages(requested: Sequence[str] | None, langmap: Sequence[LangmapRow],
                      available: Sequence[str]) -> list[str]:
    """Tatoeba codes to evaluate.

    Args:
        requested: Tatoeba codes (``deu``) or FLORES codes (``deu_Latn``), mixed freely; None:
            every language of ``langmap`` that has a Tatoeba pair in ``available``.
        langmap: rows of ``langmap.tsv``.
        available: the codes that have files.

    Raises:
        ConfigError: a FLORES code without a Tatoeba set, or a code with no files.
    """
    by_flores = {row.flores: row for row in langmap}
    if isinstance(requested, str):  # one language, not its characters
        requested = [requested]
    if requested is None:
        have = set(available)
        return [row.tatoeba for row in langmap if row.tatoeba is not None and row.tatoeba in have]
    out: list[str] = []
    for lang in requested:
        code = lang
        if lang in by_flores:
            code = by_flores[lang].tatoeba
            if code is None:
                raise ConfigError(f"tatoeba: {lang} has no LASER Tatoeba v1 set (langmap.tsv)")
        if code not in available:
            raise ConfigError(f"tatoeba: no files tatoeba.{code}-eng.{{{code},eng}} for {lang!r}; "
                              f"available codes: {', '.join(available)}")
        if code not in out:
            out.append(code)
    if not out:
        raise ConfigError("tatoeba: the language list is empty")
    return out


def load_pair(folder: str | Path, code: str,
              max_sentences: int | None = None) -> tuple[list[str], list[str]]:
    """The X side and the English side of ``tatoeba.<code>-eng.*`` (line-aligned).

    Raises:
        DataError: a missing or empty file, invalid UTF-8, an empty line, or unequal line counts
            (``file:line`` where it applies).
    """
    if max_sentences is not None and (isinstance(max_sentences, bool)
                                      or not isinstance(max_sentences, int) or max_sentences < 1):
        raise ConfigError(f"tatoeba max_sentences must be an integer >= 1 or null, "
                          f"got {max_sentences!r}")
    if not isinstance(code, str) or not code or "/" in code or "\0" in code:
        raise ConfigError(f"tatoeba: invalid language code {code!r}")
    folder = Path(folder)
    x_path = folder / f"tatoeba.{code}-{PIVOT}.{code}"
    e_path = folder / f"tatoeba.{code}-{PIVOT}.{PIVOT}"
    x, e = _read(x_path), _read(e_path)
    if len(x) != len(e):
        longer, shorter = (x_path, e_path) if len(x) > len(e) else (e_path, x_path)
        raise DataError(longer, min(len(x), len(e)) + 1,
                        f"has {max(len(x), len(e))} lines but {shorter} has {min(len(x), len(e))}",
                        "line-aligned pair files with equal line counts")
    if max_sentences is not None:
        x, e = x[:max_sentences], e[:max_sentences]
    return x, e


def _read(path: Path) -> list[str]:
    lines = []
    for n, text in _lines(path):
        if not text.strip():
            raise DataError(path, n, "empty line", "one sentence per line")
        lines.append(text)
    return lines


def retrieval_errors(src_emb: Any, tgt_emb: Any, *, margin: str = "absolute", k: int = 4,
                     tgt_texts: Sequence[str] | None = None) -> int:
    """Sources whose best target (cosine, or an xsim margin) is not the gold row.

    With ``tgt_texts`` the comparison is textual: an error only when the chosen target's text
    differs from the gold target's.
    """
    chosen = margin_nn(src_emb, tgt_emb, k, margin)
    if tgt_texts is not None:
        return int(sum(tgt_texts[int(c)] != tgt_texts[i] for i, c in enumerate(chosen)))
    return int(np.count_nonzero(chosen != np.arange(len(chosen))))


def evaluate_tatoeba(encoder: Any, folder: str | Path, codes: Sequence[str], *,
                     margin: str = "absolute", k: int = 4, batch_size: int = 64,
                     eval_text: bool = False, max_sentences: int | None = None,
                     progress: bool = True) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Tatoeba error rates for each language, both directions.

    Returns:
        ``(metrics, rows)``: metrics ``tatoeba/<code>/x2e``, ``tatoeba/<code>/e2x`` (error %),
        ``tatoeba/avg/x2e``, ``tatoeba/avg/e2x``, ``tatoeba/avg/both`` (their mean) and
        ``tatoeba/avg/accuracy`` (100 - both); one row per language for a table.
    """
    if margin not in MARGINS:
        raise ConfigError(f"tatoeba margin {margin!r} is unknown; choose one of {MARGINS}")
    if isinstance(codes, str):  # one language, not its characters
        codes = [codes]
    if not codes:
        raise ClseError("tatoeba: no languages to evaluate")
    from tqdm.auto import tqdm

    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    bar = tqdm(list(codes), desc="tatoeba", unit="lang", disable=bars_off(progress), leave=False)
    for code in bar:
        x_texts, e_texts = load_pair(folder, code, max_sentences)
        n = len(x_texts)
        kk = min(k, n)  # a margin needs k <= n; the smallest v1 set has 104 pairs
        x_emb = encode_texts(encoder, x_texts, batch_size, progress=progress, desc=code)
        e_emb = encode_texts(encoder, e_texts, batch_size, progress=progress, desc=f"{code} eng")
        x2e = retrieval_errors(x_emb, e_emb, margin=margin, k=kk,
                               tgt_texts=e_texts if eval_text else None)
        e2x = retrieval_errors(e_emb, x_emb, margin=margin, k=kk,
                               tgt_texts=x_texts if eval_text else None)
        metrics[f"tatoeba/{code}/x2e"] = 100.0 * x2e / n
        metrics[f"tatoeba/{code}/e2x"] = 100.0 * e2x / n
        rows.append({"language": code, "pairs": n, "x2e_errors": x2e, "e2x_errors": e2x,
                     "x2e": 100.0 * x2e / n, "e2x": 100.0 * e2x / n})
        bar.set_postfix_str(f"{code} {metrics[f'tatoeba/{code}/x2e']:.1f}%")
    for direction in ("x2e", "e2x"):
        metrics[f"tatoeba/avg/{direction}"] = float(np.mean([r[direction] for r in rows]))
    both = (metrics["tatoeba/avg/x2e"] + metrics["tatoeba/avg/e2x"]) / 2
    metrics["tatoeba/avg/both"] = both
    metrics["tatoeba/avg/accuracy"] = 100.0 - both
    return metrics, rows
