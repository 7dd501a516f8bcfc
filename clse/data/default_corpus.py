"""The offline default training corpus: a real-text Tatoeba sample bundled with clse.

12,000 English–X pairs (8 languages x 1500) from the Tatoeba Translation Challenge sample in
``shared/data/train``; provenance, licence and the command that made it are in
``clse/data/bundled/README.md``. ``clse train`` with no data arguments uses it, so a fresh
install trains end to end without any extra files.
"""

from __future__ import annotations

from pathlib import Path

from clse.data.readers import Pair, read_tsv

DEFAULT_LANGUAGES = ("deu_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "por_Latn", "nld_Latn",
                     "pol_Latn", "rus_Cyrl")


def default_corpus_path() -> Path:
    """Path of the bundled TSV (``src_lang tgt_lang src tgt``, English source)."""
    return Path(__file__).resolve().parent / "bundled" / "tatoeba_sample.tsv"


def default_corpus_spec() -> dict[str, str]:
    """The corpus spec (for :func:`clse.data.readers.load_corpus`) of the bundled corpus."""
    return {"kind": "tsv", "path": str(default_corpus_path())}


def load_default_corpus() -> list[Pair]:
    """The bundled pairs, in file order."""
    return read_tsv(default_corpus_path())
