"""Parallel corpora: translation pairs from TSV files, multi-way folders and HF datasets.

Every reader returns ``list[Pair]`` and raises :class:`clse.errors.DataError` naming the file,
the 1-based line (the 1-based row for a dataset) and what was expected, for: a missing or
unreadable file or folder, an empty file, a line that is not valid UTF-8, a wrong column count,
an empty or whitespace-only sentence, an unknown language code, multi-way files of unequal
length. No line is ever skipped. :func:`load_corpus` raises :class:`clse.errors.ConfigError`
for a corpus spec with an unknown option or a value of the wrong type.

Sentences are stripped of surrounding whitespace; nothing else is changed (no truncation: the
tokenizer does that). A UTF-8 byte-order mark at the start of a file is ignored.

Formats:

* TSV (``kind: tsv``): ``src_lang<TAB>tgt_lang<TAB>src<TAB>tgt``, one pair a line, no header.
  A header line (``src_lang<TAB>tgt_lang...``) is an error, not skipped silently: it would
  otherwise be a pair of unknown languages, and skipping lines quietly hides real mistakes.
* Multi-way folder (``kind: multiway``): one ``<lang>.txt`` per language, line i of every file a
  translation of line i of the others (FLORES-200, NTREX-128); pairs are (pivot, lang).
* HF dataset (``kind: hf``): a ``Dataset.save_to_disk`` folder (a ``DatasetDict``: its ``split``)
  with columns ``src_lang, tgt_lang, src, tgt``, or a ``translation`` column of ``{lang: text}``
  dicts read with an explicit ``languages=(src, tgt)``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from clse.data.languages import PIVOT, check_language
from clse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TSV_COLUMNS = ("src_lang", "tgt_lang", "src", "tgt")


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """One translation pair: sentence ``src`` in ``src_lang`` and its translation ``tgt``."""

    src_lang: str
    tgt_lang: str
    src: str
    tgt: str


def pair_language(pair: Pair, pivot: str = PIVOT) -> str:
    """The language a pair counts for (sampling, filters): its non-pivot side, else ``tgt_lang``."""
    return pair.src_lang if pair.tgt_lang == pivot and pair.src_lang != pivot else pair.tgt_lang


# --------------------------------------------------------------------------- line reading


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line end) of a UTF-8 file, decoded line by line."""
    if not path.exists():
        raise DataError(path, None, "file not found", "an existing UTF-8 text file")
    if path.is_dir():
        raise DataError(path, None, "is a folder, not a file", "a UTF-8 text file")
    try:
        f = path.open("rb")
    except OSError as e:  # permissions, a dangling mount, ...
        raise DataError(path, None, f"cannot open: {e.strerror or e}",
                        "a readable UTF-8 text file") from None
    with f:
        n = 0
        while True:
            try:
                raw = f.readline()
            except OSError as e:  # an I/O error mid-file (a device, a network mount)
                raise DataError(path, n + 1, f"cannot read: {e.strerror or e}",
                                "a readable UTF-8 text file") from None
            if not raw:
                break
            n += 1
            try:
                text = raw.decode("utf-8")  # strict: report the line, never replace characters
            except UnicodeDecodeError as e:
                raise DataError(path, n, f"invalid UTF-8 (byte {e.start} of the line: "
                                f"{raw[e.start:e.start + 4]!r})", "UTF-8 text") from None
            if n == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield n, text.rstrip("\r\n")
        if n == 0:
            raise DataError(path, None, "file is empty", "at least one line")


def _sentence(text: str, path: Path, line: int, what: str) -> str:
    s = text.strip()
    if not s:
        raise DataError(path, line, f"{what} is empty or whitespace only", f"a non-empty {what}")
    return s


class _Languages:
    """Checks language codes, each distinct code once (a corpus has few, and many lines)."""

    def __init__(self, allow_unknown: bool):
        self.allow_unknown = allow_unknown
        self.ok: set[str] = set()

    def __call__(self, code: str, path: Path, line: int | None) -> str:
        if code not in self.ok:
            self.ok.add(check_language(code, path, line, self.allow_unknown))
        return code


# --------------------------------------------------------------------------- readers


def read_tsv(path: str | Path, allow_unknown_languages: bool = False) -> list[Pair]:
    """Read ``src_lang<TAB>tgt_lang<TAB>src<TAB>tgt`` lines (no header) into pairs.

    Args:
        path: the TSV file.
        allow_unknown_languages: accept language codes outside FLORES-200.
    """
    path = Path(path)
    lang = _Languages(allow_unknown_languages)
    pairs: list[Pair] = []
    for n, text in _lines(path):
        cols = text.split("\t")
        if n == 1 and cols[:2] == ["src_lang", "tgt_lang"]:
            raise DataError(path, n, "header lines are not supported",
                            "data from the first line: remove the header "
                            "'src_lang<TAB>tgt_lang<TAB>src<TAB>tgt'")
        if len(cols) != 4:
            got = "an empty line" if not text.strip() else f"found {len(cols)} column(s)"
            raise DataError(path, n, got, "4 tab-separated columns: src_lang tgt_lang src tgt")
        pairs.append(Pair(lang(cols[0].strip(), path, n), lang(cols[1].strip(), path, n),
                          _sentence(cols[2], path, n, "src sentence (column 3)"),
                          _sentence(cols[3], path, n, "tgt sentence (column 4)")))
    return pairs


def read_multiway(folder: str | Path, pivot: str = PIVOT, languages: Iterable[str] | None = None,
                  allow_unknown_languages: bool = False) -> list[Pair]:
    """Read a folder of line-aligned ``<lang>.txt`` files into (pivot, lang) pairs.

    Pairs are ordered by language (sorted), then by line. Files other than ``*.txt`` are ignored.

    Args:
        folder: the folder, e.g. ``shared/data/train/ntrex128``.
        pivot: the language every other one is paired with (its file must exist).
        languages: read only these languages (besides the pivot); all ``*.txt`` files if None.
        allow_unknown_languages: accept file names that are not FLORES-200 codes.
    """
    folder = Path(folder)
    if not isinstance(pivot, str):
        raise ConfigError(f"multi-way pivot must be a language code, got {pivot!r}")
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "folder not found"
        raise DataError(folder, None, problem, "a folder of line-aligned <lang>.txt files")
    lang = _Languages(allow_unknown_languages)
    found = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    if pivot not in found:
        raise DataError(folder / f"{pivot}.txt", None, "pivot file not found",
                        f"'{pivot}.txt' in the multi-way folder (pivot={pivot!r})")
    if languages is None:
        wanted = sorted(set(found) - {pivot})
    else:
        if isinstance(languages, str):  # one language, not its characters
            languages = [languages]
        if not isinstance(languages, Iterable) or not all(isinstance(lg, str) for lg in languages):
            raise ConfigError(f"multi-way languages must be a list of language codes, "
                              f"got {languages!r:.80}")
        wanted = sorted(set(languages) - {pivot})
        missing = [lg for lg in wanted if lg not in found]
        if missing:
            raise DataError(folder, None, f"no file for language(s) {', '.join(missing)}",
                            "one <lang>.txt per requested language")
    for lg in [pivot, *wanted]:
        lang(lg, found[lg], None)

    def read(lg: str) -> list[str]:
        p = found[lg]
        return [_sentence(t, p, n, "sentence") for n, t in _lines(p)]

    pivot_lines = read(pivot)
    pairs: list[Pair] = []
    for lg in wanted:
        lines = read(lg)
        if len(lines) != len(pivot_lines):
            raise DataError(found[lg], min(len(lines), len(pivot_lines)) + 1,
                            f"has {len(lines)} lines but {found[pivot].name} has "
                            f"{len(pivot_lines)}",
                            f"line-aligned files: as many lines as {found[pivot].name}")
        pairs.extend(Pair(pivot, lg, a, b) for a, b in zip(pivot_lines, lines))
    return pairs


def read_hf_dataset(path: str | Path, split: str = "train",
                    languages: Sequence[str] | None = None,
                    allow_unknown_languages: bool = False) -> list[Pair]:
    """Read a dataset saved with ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``).

    Args:
        path: the saved dataset folder.
        split: the split of a ``DatasetDict``.
        languages: ``(src, tgt)`` keys of a ``translation`` column; unused for the 4-column form.
        allow_unknown_languages: accept language codes outside FLORES-200.

    Rows are reported as lines (1-based row numbers).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, None, "dataset folder not found",
                        "a folder written by datasets' save_to_disk")
    import datasets  # heavy import: only when this format is used

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # the library raises several types for a non-dataset folder
        raise DataError(path, None, f"cannot load dataset: {e}",
                        "a folder written by datasets' save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(path, None, f"no split {split!r} (splits: {', '.join(ds)})",
                            f"a DatasetDict with a {split!r} split")
        ds = ds[split]
    if len(ds) == 0:
        raise DataError(path, None, "dataset is empty", "at least one row")
    lang = _Languages(allow_unknown_languages)
    cols = set(ds.column_names)
    pairs: list[Pair] = []
    if set(TSV_COLUMNS) <= cols:
        data = ds.select_columns(list(TSV_COLUMNS)).to_dict()
        for i, row in enumerate(zip(*(data[c] for c in TSV_COLUMNS)), 1):
            sl, tl, s, t = (_cell(x, c, path, i) for x, c in zip(row, TSV_COLUMNS))
            pairs.append(Pair(lang(sl, path, i), lang(tl, path, i),
                              _sentence(s, path, i, "src"), _sentence(t, path, i, "tgt")))
    elif "translation" in cols:
        if languages is None or len(languages) != 2:
            raise DataError(path, None, "a 'translation' column needs the two languages to read",
                            "languages=(src_lang, tgt_lang)")
        sl, tl = lang(languages[0], path, None), lang(languages[1], path, None)
        for i, row in enumerate(ds["translation"], 1):
            if not isinstance(row, Mapping) or sl not in row or tl not in row:
                keys = sorted(row) if isinstance(row, Mapping) else type(row).__name__
                raise DataError(path, i, f"translation has keys {keys}",
                                f"a dict with keys {sl!r} and {tl!r}")
            s, t = _cell(row[sl], sl, path, i), _cell(row[tl], tl, path, i)
            pairs.append(Pair(sl, tl, _sentence(s, path, i, sl), _sentence(t, path, i, tl)))
    else:
        raise DataError(path, None, f"missing columns (has: {', '.join(sorted(cols))})",
                        "columns src_lang, tgt_lang, src, tgt, or a 'translation' column")
    return pairs


def _cell(value: Any, column: str, path: Path, row: int) -> str:
    """A dataset cell that must be a string (None reads as empty: reported as an empty side)."""
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(path, row, f"{column} is a {type(value).__name__} ({value!r:.60})", "a string")


# --------------------------------------------------------------------------- config entry point

_SPEC_KEYS = {"kind", "path", "languages", "max_pairs_per_language", "pivot", "split",
              "translation_languages", "allow_unknown_languages"}


def _as_dict(spec: Any) -> dict[str, Any]:
    if isinstance(spec, (str, Path)):
        return {"path": spec}
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return dataclasses.asdict(spec)
    if hasattr(spec, "items"):  # dict, OmegaConf DictConfig
        return {str(k): v for k, v in spec.items()}
    raise ConfigError(f"corpus spec must be a mapping or a path, got {type(spec).__name__}")


def _infer_kind(path: Path) -> str:
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json",
                                              "state.json")):
            return "hf"
        return "multiway"
    return "tsv"


def _spec_str(cfg: dict[str, Any], key: str, default: str | None) -> str | None:
    value = cfg.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise ConfigError(f"corpus option {key!r} must be a string, got {value!r} "
                          f"({type(value).__name__})")
    return value


def _spec_codes(cfg: dict[str, Any], key: str) -> list[str] | None:
    """A list of language codes (a single string is one code), or None when absent."""
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping) or not isinstance(value, Iterable) or not all(
            isinstance(v, str) for v in value):
        raise ConfigError(f"corpus option {key!r} must be a list of language codes such as "
                          f"['deu_Latn', 'fra_Latn'], got {value!r}")
    return [str(v) for v in value]


def _spec_bool(cfg: dict[str, Any], key: str) -> bool:
    value = cfg.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):  # bool("false") is True: refuse rather than guess
        raise ConfigError(f"corpus option {key!r} must be true or false, got {value!r}")
    return value


def _spec_path(value: Any) -> Path:
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"corpus option 'path' must be a file or folder path, got {value!r}")
    try:
        return Path(value).expanduser()
    except RuntimeError as e:  # "~user/..." for an unknown user
        raise ConfigError(f"corpus path {str(value)!r}: {e}") from None


def load_corpus(spec: Any) -> list[Pair]:
    """Load the corpus a config describes.

    Args:
        spec: a mapping (dict, DictConfig, dataclass) with ``path`` and optionally
            ``kind`` (``tsv`` | ``multiway`` | ``hf``; inferred from the path when absent),
            ``languages`` (keep only pairs whose two languages are in this list or the pivot),
            ``max_pairs_per_language`` (keep the first N pairs of each language, in file order),
            ``pivot`` (default ``eng_Latn``), ``split`` (hf, default ``train``),
            ``translation_languages`` (hf ``translation`` column: ``[src, tgt]``) and
            ``allow_unknown_languages`` (default False). A bare path is accepted too.

    Raises:
        ConfigError: an invalid spec. DataError: bad data.
    """
    cfg = _as_dict(spec)
    unknown = set(cfg) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"unknown corpus option(s) {sorted(unknown)}; "
                          f"expected some of {sorted(_SPEC_KEYS)}")
    if cfg.get("path") is None or cfg.get("path") == "":
        raise ConfigError("corpus spec needs a 'path'")
    path = _spec_path(cfg["path"])
    kind = _spec_str(cfg, "kind", None) or _infer_kind(path)
    pivot = _spec_str(cfg, "pivot", PIVOT)
    split = _spec_str(cfg, "split", "train")
    allow = _spec_bool(cfg, "allow_unknown_languages")
    languages = _spec_codes(cfg, "languages")
    translation_languages = _spec_codes(cfg, "translation_languages")
    cap = cfg.get("max_pairs_per_language")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"max_pairs_per_language must be an integer >= 1 (or null), got {cap!r}")
    keep = None
    if languages is not None:
        keep = set(languages)
        for lg in sorted(keep):
            try:
                check_language(lg, "corpus spec 'languages'", None, allow)
            except DataError as e:
                raise ConfigError(str(e)) from None

    if kind == "tsv":
        pairs = read_tsv(path, allow_unknown_languages=allow)
    elif kind == "multiway":
        # requested languages without a file are reported below like those of other kinds
        have = {f.stem for f in path.glob("*.txt")} if path.is_dir() else set()
        pairs = read_multiway(path, pivot=pivot, allow_unknown_languages=allow,
                              languages=None if keep is None else (keep - {pivot}) & have)
    elif kind == "hf":
        pairs = read_hf_dataset(path, split=split, languages=translation_languages,
                                allow_unknown_languages=allow)
    else:
        raise ConfigError(f"unknown corpus kind {kind!r}; expected tsv, multiway or hf")

    if keep is not None:
        ok = keep | {pivot}
        pairs = [p for p in pairs if p.src_lang in ok and p.tgt_lang in ok]
        absent = keep - {pivot} - {pair_language(p, pivot) for p in pairs}
        if absent:
            log.warning("%s: no pairs for requested language(s) %s", path,
                        ", ".join(sorted(absent)))
        if not pairs:
            raise DataError(path, None, "no pairs left after the language filter",
                            f"pairs in languages {sorted(keep)}")
    if cap is not None:
        seen: Counter[str] = Counter()
        capped = []
        for p in pairs:
            lg = pair_language(p, pivot)
            if seen[lg] < cap:
                seen[lg] += 1
                capped.append(p)
        pairs = capped
    return pairs
