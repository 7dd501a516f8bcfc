"""xsim on FLORES-200 (X -> English): the built-in bitext-mining evaluator.

For each source language X, every FLORES sentence ``x_i`` searches the English set; after
l2-normalisation the k = 4 nearest neighbours are found each way by inner product and only the
forward candidates ``y in NN_k(x)`` are rescored with the ratio margin::

    score(x, y) = cos(x, y) / ((avg_k(x) + avg_k(y)) / 2),
    avg_k(x) = mean_{y' in NN_k(x)} cos(x, y'),   avg_k(y) = mean_{x' in NN_k(y)} cos(x', y)

``x_i`` is an error when its best candidate is not ``y_i``. Metrics: ``xsim/<lang>`` = 100 · errors
/ n and ``xsim/avg`` = their mean over languages (error %, lower is better); with ``groups``,
``xsim/avg_<group>`` is the mean over a named subset (e.g. the languages a run trained on).

Reference: LASER ``source/xsim.py`` (facebookresearch/LASER; Artetxe & Schwenk 2019 for the
margin), as reported by MEXMA on FLORES-200 devtest. The computation is
:func:`clse.eval.xsim.xsim`; ``margin`` may also be ``distance`` or ``absolute``.

Data (``source``): ``auto`` uses ``<data_root>/flores200/<split>/`` when found, else the 8-language
NTREX sample bundled with clse (split ignored, with a warning); ``flores200`` requires FLORES;
anything else is a folder with ``<split>/<lang>.txt`` or ``<lang>.txt``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clse.errors import ClseError, ConfigError
from clse.eval.flores import (BUNDLED_DIR, bundled_languages, evaluate_xsim, group_means,
                              load_multiway)
from clse.eval.xsim import MARGINS
from clse.hookspecs import PluginSpec, hookimpl
from clse.paths import ENV_VAR, data_root

if TYPE_CHECKING:  # clse.interfaces imports torch; keep plugin discovery light
    from clse.interfaces import SentenceEncoder

DEFAULT_LANGUAGES = ["deu_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "por_Latn", "nld_Latn",
                     "pol_Latn", "rus_Cyrl", "ces_Latn", "swe_Latn"]


@dataclass
class XsimConfig:
    name: str = "xsim"
    source: str = "auto"  # auto | flores200 | a folder of <split>/<lang>.txt or <lang>.txt
    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    target: str = "eng_Latn"
    k: int = 4
    margin: str = "ratio"  # ratio | distance | absolute
    batch_size: int = 64
    max_sentences: int | None = None  # first N sentences of each language (quick evals)
    # named subsets of `languages`, each adding xsim/avg_<name> (e.g. trained / held-out)
    groups: dict[str, list[str]] = field(default_factory=dict)


class XsimEvaluator:
    """``evaluator(encoder, split) -> {"xsim/<lang>": err %, "xsim/avg": err %}``."""

    def __init__(self, cfg: XsimConfig):
        if cfg.margin not in MARGINS:
            raise ConfigError(f"xsim margin {cfg.margin!r} is unknown; choose one of {MARGINS}")
        if cfg.k < 1:
            raise ConfigError(f"xsim k must be >= 1, got {cfg.k}")
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"xsim max_sentences must be >= 1 or null, got {cfg.max_sentences}")
        self.cfg = cfg
        self._cache: dict[str, tuple[dict[str, list[str]], list[str]]] = {}
        self._warned = False

    def __call__(self, encoder: SentenceEncoder, split: str) -> dict[str, float]:
        sentences, languages = self.load(split)

        def encode(texts: list[str]) -> np.ndarray:
            return encoder.encode(texts, batch_size=self.cfg.batch_size)

        metrics = evaluate_xsim(encode, sentences, target=self.cfg.target, languages=languages,
                                k=self.cfg.k, margin=self.cfg.margin)
        return {**metrics, **group_means(metrics, "xsim", self.cfg.groups, self.cfg.languages)}

    def load(self, split: str) -> tuple[dict[str, list[str]], list[str]]:
        """The sentences of ``split`` (target included) and the source languages to evaluate."""
        if split not in self._cache:
            folder, languages = self._resolve(split)
            sentences = load_multiway(folder, [*languages, self.cfg.target])
            if self.cfg.max_sentences is not None:
                sentences = {lang: s[:self.cfg.max_sentences] for lang, s in sentences.items()}
            self._cache[split] = (sentences, languages)
        return self._cache[split]

    def _resolve(self, split: str) -> tuple[Path, list[str]]:
        cfg = self.cfg
        languages = [lang for lang in cfg.languages if lang != cfg.target]
        if cfg.source in ("auto", "flores200"):
            root = data_root()
            folder = root / "flores200" / split if root is not None else None
            if folder is not None and folder.is_dir():
                return folder, languages
            if cfg.source == "flores200":
                where = str(folder) if folder is not None else "no shared data folder was found"
                raise ClseError(f"xsim source=flores200 needs FLORES-200 split {split!r} "
                                f"({where}): set {ENV_VAR}=/path/to/data (a folder with "
                                f"flores200/{split}/<lang>.txt), or use source=auto")
            return self._bundled(languages)
        if cfg.source == "bundled":
            return self._bundled(languages)
        path = Path(cfg.source).expanduser()
        if (path / split).is_dir():
            return path / split, languages
        if path.is_dir():
            return path, languages
        raise ClseError(f"xsim source {cfg.source!r} is not a folder (expected <split>/<lang>.txt "
                        f"or <lang>.txt inside it), nor 'auto', 'flores200' or 'bundled'")

    def _bundled(self, languages: list[str]) -> tuple[Path, list[str]]:
        have = set(bundled_languages())
        if self.cfg.target not in have:
            raise ClseError(f"FLORES-200 not found and the bundled xsim set has no target "
                            f"{self.cfg.target!r}: set {ENV_VAR}=/path/to/data")
        kept = [lang for lang in languages if lang in have]
        if not kept:
            raise ClseError(f"FLORES-200 not found and the bundled xsim set has none of "
                            f"{languages} (it has {sorted(have)}): set {ENV_VAR}=/path/to/data")
        if not self._warned:
            self._warned = True
            warnings.warn(f"xsim: FLORES-200 not found (set {ENV_VAR}); using the bundled "
                          f"200-sentence NTREX sample, split ignored, languages {kept} "
                          f"(numbers not comparable to FLORES)", stacklevel=3)
        return BUNDLED_DIR, kept


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="xsim", factory=XsimEvaluator, config=XsimConfig,
                       description="xsim bitext-mining error % on FLORES-200, X->eng "
                                   "(LASER ratio margin, k=4)")]
