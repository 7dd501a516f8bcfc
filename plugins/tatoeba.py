"""Tatoeba (LASER v1): bitext retrieval error X->eng and eng->X, per language.

For every language's pair file, each X sentence looks for its nearest English sentence of the same
file by cosine (l2-normalised vectors), and each English sentence for its nearest X sentence; an
error is a neighbour other than the gold line. Metrics (error %, lower is better)::

    tatoeba/<code>/x2e, tatoeba/<code>/e2x       per language (Tatoeba code: deu, cmn, ...)
    tatoeba/avg/x2e, tatoeba/avg/e2x             means over languages
    tatoeba/avg/both, tatoeba/avg/accuracy       mean of both directions, and 100 - that

Reference: Artetxe & Schwenk (2019), LASER ``source/lib/indexing.py`` (plain cosine nearest
neighbour, both directions); XTREME and LaBSE report the same search as accuracy. ``margin`` may
be ``ratio``/``distance`` (xsim's margin, k = 4) for a comparison; the default ``absolute`` is
LASER's plain cosine. The computation is :mod:`clse.eval.tatoeba`.

Languages: Tatoeba codes (``deu``) or FLORES codes (``deu_Latn``, mapped through
``<data>/langmap.tsv``); default: every MEXMA language that has a v1 set (62). ``split`` is ignored:
Tatoeba has one test set. With ``out_dir``, writes ``tatoeba.tsv`` (one row per language).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clse.errors import ClseError, ConfigError
from clse.eval.analyses import write_records
from clse.eval.tatoeba import available_codes, evaluate_tatoeba, load_langmap, resolve_languages
from clse.eval.xsim import MARGINS
from clse.hookspecs import PluginSpec, hookimpl
from clse.paths import ENV_VAR, data_root

if TYPE_CHECKING:  # clse.interfaces imports torch; keep plugin discovery light
    from clse.interfaces import SentenceEncoder


@dataclass
class TatoebaConfig:
    name: str = "tatoeba"
    source: str = "auto"  # auto: <data>/tatoeba/v1; or a folder of tatoeba.<xxx>-eng.* files
    langmap: str | None = None  # null: <data>/langmap.tsv (FLORES code -> Tatoeba code)
    languages: list[str] | None = None  # null: all MEXMA languages with a v1 set
    margin: str = "absolute"  # absolute (LASER: plain cosine) | ratio | distance
    k: int = 4  # neighbourhood of the ratio/distance margins
    eval_text: bool = False  # compare texts instead of indices (forgives duplicate sentences)
    batch_size: int = 64
    max_sentences: int | None = None  # first N pairs of each language (quick evals)
    progress: bool = True


class TatoebaEvaluator:
    """``evaluator(encoder, split, out_dir=None) -> {"tatoeba/<code>/x2e": err %, ...}``."""

    def __init__(self, cfg: TatoebaConfig):
        if cfg.margin not in MARGINS:
            raise ConfigError(f"tatoeba margin {cfg.margin!r} is unknown; choose one of {MARGINS}")
        if cfg.k < 1:
            raise ConfigError(f"tatoeba k must be >= 1, got {cfg.k}")
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"tatoeba max_sentences must be >= 1 or null, got "
                              f"{cfg.max_sentences}")
        self.cfg = cfg
        self._resolved: tuple[Path, list[str]] | None = None

    def __call__(self, encoder: SentenceEncoder, split: str,
                 out_dir: Path | None = None) -> dict[str, float]:
        folder, codes = self.resolve()
        cfg = self.cfg
        metrics, rows = evaluate_tatoeba(encoder, folder, codes, margin=cfg.margin, k=cfg.k,
                                         batch_size=cfg.batch_size, eval_text=cfg.eval_text,
                                         max_sentences=cfg.max_sentences, progress=cfg.progress)
        if out_dir is not None:
            write_records(Path(out_dir) / "tatoeba.tsv", rows)
        return metrics

    def resolve(self) -> tuple[Path, list[str]]:
        """The folder of pair files and the Tatoeba codes to evaluate."""
        if self._resolved is None:
            folder = self._folder()
            available = available_codes(folder)
            if not available:
                raise ClseError(f"tatoeba: no tatoeba.<xxx>-eng.<xxx> / .eng pairs in {folder}")
            langmap = []
            needs_map = self.cfg.languages is None or any("_" in lang
                                                         for lang in self.cfg.languages)
            if needs_map:
                langmap = load_langmap(self._langmap_path(folder))
            self._resolved = folder, resolve_languages(self.cfg.languages, langmap, available)
            if not self._resolved[1]:
                raise ClseError(f"tatoeba: none of the langmap languages has files in {folder}")
        return self._resolved

    def _folder(self) -> Path:
        if self.cfg.source != "auto":
            folder = Path(self.cfg.source).expanduser()
            if not folder.is_dir():
                raise ClseError(f"tatoeba source {self.cfg.source!r} is not a folder (expected "
                                f"tatoeba.<xxx>-eng.<xxx> and .eng files in it, or 'auto')")
            return folder
        root = data_root()
        folder = root / "tatoeba" / "v1" if root is not None else None
        if folder is None or not folder.is_dir():
            where = str(folder) if folder is not None else "no shared data folder was found"
            raise ClseError(f"tatoeba needs LASER's Tatoeba v1 files ({where}): set "
                            f"{ENV_VAR}=/path/to/data (with tatoeba/v1/), or source=<folder>")
        return folder

    def _langmap_path(self, folder: Path) -> Path:
        if self.cfg.langmap:
            return Path(self.cfg.langmap).expanduser()
        root = data_root()
        for cand in ([root / "langmap.tsv"] if root is not None else []) + [
                folder.parent.parent / "langmap.tsv"]:
            if cand.is_file():
                return cand
        raise ClseError("tatoeba: langmap.tsv not found (needed for FLORES codes and the default "
                        "language list): set langmap=/path/to/langmap.tsv, or list Tatoeba codes "
                        "in languages")


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="tatoeba", factory=TatoebaEvaluator,
                       config=TatoebaConfig,
                       description="Tatoeba v1 retrieval error % X->eng and eng->X "
                                   "(LASER: cosine nearest neighbour)")]
