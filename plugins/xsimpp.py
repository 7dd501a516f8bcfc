"""xsim++ on FLORES-200 (X -> English with hard-negative English targets), errors by type.

``source: official`` (default) reads Meta's xSIM++ files, which clse does not ship::

    augmented_file: .../eng_Latn_augmented.devtest
    errtype_file:   .../eng_Latn_errtype.devtest.json

(download both from https://dl.fbaipublicfiles.com/nllb/laser/xsimplusplus/, as LASER's
``tasks/xsimplusplus/eval.sh`` does; they exist for devtest only). Metrics, error % (lower is
better): ``xsimpp/<lang>``, ``xsimpp/avg`` and ``xsimpp/type/<type>`` (errors of each type of the
json, plus ``misaligned``, in % of sentences, averaged over languages: they sum to the average).

``source: generated`` builds look-alike hard negatives from the split's English sentences
(:mod:`clse.eval.hard_negatives`: number, entity and causality substitutions, seeded). Its
metrics are named ``xsimpp_generated/...`` and are NOT comparable to published xsim++.

The search is xsim's (:mod:`clse.eval.xsimpp`, LASER ratio margin, k = 4). With ``out_dir``,
writes ``<prefix>.tsv`` (per-language error counts by type, as LASER prints them) and, in generated
mode, the generated files in the official layout under ``generated/``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clse.errors import ClseError, ConfigError
from clse.eval.analyses import write_records
from clse.eval.encode import encode_texts
from clse.eval.flores import BUNDLED_DIR, group_means, load_multiway
from clse.eval.hard_negatives import ERROR_TYPES, NOTE, generate_hard_negatives, write_augmented
from clse.eval.xsim import MARGINS
from clse.eval.xsimpp import (OFFICIAL_FILES, OFFICIAL_URL, Augmented, evaluate_xsimpp,
                              load_augmented)
from clse.hookspecs import PluginSpec, hookimpl
from clse.paths import ENV_VAR, data_root

if TYPE_CHECKING:  # clse.interfaces imports torch; keep plugin discovery light
    from clse.interfaces import SentenceEncoder

log = logging.getLogger("clse.eval")
SOURCES = ("official", "generated")


@dataclass
class XsimppConfig:
    name: str = "xsimpp"
    source: str = "official"  # official (Meta's files) | generated (clse's look-alike)
    augmented_file: str | None = None  # official: path to eng_Latn_augmented.devtest
    errtype_file: str | None = None  # official: path to eng_Latn_errtype.devtest.json
    data: str = "auto"  # FLORES text: auto | flores200 | a folder of <split>/<lang>.txt
    languages: list[str] | None = None  # null: every language of the split folder but target
    target: str = "eng_Latn"
    k: int = 4
    margin: str = "ratio"  # ratio | distance | absolute
    eval_text: bool = False  # compare texts instead of indices (LASER's CLI default)
    batch_size: int = 64
    max_sentences: int | None = None  # first N sentences (variants of the others are dropped)
    progress: bool = True
    seed: int = 0  # generated: the generator's seed
    types: list[str] = field(default_factory=lambda: list(ERROR_TYPES))  # generated
    per_type: int = 1  # generated: variants of each type per sentence, at most
    groups: dict[str, list[str]] = field(default_factory=dict)  # adds <prefix>/avg_<name>


def missing_files_message(what: str) -> str:
    return (f"xsimpp source=official needs {what}: Meta's {OFFICIAL_FILES[0]} and "
            f"{OFFICIAL_FILES[1]} (not shipped with clse; download them from {OFFICIAL_URL}/, as "
            f"LASER's tasks/xsimplusplus/eval.sh does) and set augmented_file and errtype_file "
            f"(clse eval: eval.evaluators.xsimpp.augmented_file=/path/{OFFICIAL_FILES[0]} "
            f"eval.evaluators.xsimpp.errtype_file=/path/{OFFICIAL_FILES[1]}); or use "
            f"source=generated (eval=xsimpp_generated) for clse's look-alike hard negatives, "
            f"labelled xsimpp_generated/ and not comparable to published xsim++")


class XsimppEvaluator:
    """``evaluator(encoder, split, out_dir=None) -> {"xsimpp/<lang>": err %, ...}``."""

    def __init__(self, cfg: XsimppConfig):
        if cfg.source not in SOURCES:
            raise ConfigError(f"xsimpp source {cfg.source!r} is unknown; choose one of {SOURCES}")
        if cfg.margin not in MARGINS:
            raise ConfigError(f"xsimpp margin {cfg.margin!r} is unknown; choose one of {MARGINS}")
        if cfg.k < 1 or cfg.per_type < 1:
            raise ConfigError(f"xsimpp k and per_type must be >= 1, got {cfg.k}, {cfg.per_type}")
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"xsimpp max_sentences must be >= 1 or null, got "
                              f"{cfg.max_sentences}")
        if cfg.source == "official" and not (cfg.augmented_file and cfg.errtype_file):
            raise ClseError(missing_files_message("augmented_file and errtype_file"))
        if cfg.source == "generated":
            unknown = [t for t in cfg.types if t not in ERROR_TYPES]
            if unknown:
                raise ConfigError(f"xsimpp types {unknown} unknown; choose from {ERROR_TYPES}")
        self.cfg = cfg
        self.prefix = "xsimpp" if cfg.source == "official" else "xsimpp_generated"

    def __call__(self, encoder: SentenceEncoder, split: str,
                 out_dir: Path | None = None) -> dict[str, float]:
        cfg = self.cfg
        folder, languages = self._resolve(split)
        sentences = load_multiway(folder, [*languages, cfg.target])
        if cfg.max_sentences is not None:
            sentences = {lang: s[:cfg.max_sentences] for lang, s in sentences.items()}
        aug = self._augmented(split, sentences[cfg.target], out_dir)

        def encode(texts: list[str], label: str):
            return encode_texts(encoder, texts, cfg.batch_size, progress=cfg.progress, desc=label)

        metrics, rows = evaluate_xsimpp(encode, sentences, aug, cfg.target, languages, cfg.k,
                                        cfg.margin, eval_text=cfg.eval_text, prefix=self.prefix,
                                        progress=cfg.progress)
        if out_dir is not None:
            write_records(Path(out_dir) / f"{self.prefix}.tsv", rows,
                          note=NOTE if cfg.source == "generated" else f"xsim++ ({aug.origin})")
        return {**metrics, **group_means(metrics, self.prefix, cfg.groups, languages)}

    def _augmented(self, split: str, targets: list[str], out_dir: Path | None) -> Augmented:
        cfg = self.cfg
        if cfg.source == "official":
            paths = [Path(p).expanduser() for p in (cfg.augmented_file, cfg.errtype_file)]
            absent = [str(p) for p in paths if not p.is_file()]
            if absent:
                raise ClseError(missing_files_message(f"files that exist ({', '.join(absent)} "
                                                      f"not found)"))
            return load_augmented(*paths)
        warnings.warn("xsimpp source=generated: clse's own hard negatives; the xsimpp_generated/ "
                      "figures are NOT comparable to published xsim++", stacklevel=3)
        negatives = generate_hard_negatives(targets, seed=cfg.seed, types=cfg.types,
                                            per_type=cfg.per_type)
        if out_dir is not None:
            aug_file, json_file = write_augmented(negatives, Path(out_dir) / "generated", split,
                                                  cfg.target)
            log.info("xsimpp: generated hard negatives written to %s", aug_file.parent)
        return Augmented([n.text for n in negatives], [n.errtype for n in negatives],
                         [n.src.strip() for n in negatives], f"generated (seed {cfg.seed})",
                         sorted(cfg.types))

    def _resolve(self, split: str) -> tuple[Path, list[str]]:
        """The folder of ``<lang>.txt`` for ``split`` and the source languages."""
        cfg = self.cfg
        folder = None
        if cfg.data in ("auto", "flores200"):
            root = data_root()
            cand = root / "flores200" / split if root is not None else None
            if cand is not None and cand.is_dir():
                folder = cand
            elif cfg.data == "flores200":
                raise ClseError(f"xsimpp data=flores200 needs FLORES-200 split {split!r} "
                                f"({cand or 'no shared data folder found'}): set "
                                f"{ENV_VAR}=/path/to/data, or data=auto")
            else:
                warnings.warn(f"xsimpp: FLORES-200 not found (set {ENV_VAR}); using the bundled "
                              f"NTREX sample, split ignored", stacklevel=3)
                folder = BUNDLED_DIR
        else:
            path = Path(cfg.data).expanduser()
            folder = path / split if (path / split).is_dir() else path
            if not folder.is_dir():
                raise ClseError(f"xsimpp data {cfg.data!r} is not a folder of <lang>.txt files")
        if cfg.languages is not None:
            languages = [lang for lang in cfg.languages if lang != cfg.target]
        else:
            languages = sorted(p.stem for p in folder.glob("*.txt") if p.stem != cfg.target)
        if not languages:
            raise ClseError(f"xsimpp: no source languages in {folder}")
        return folder, languages


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="xsimpp", factory=XsimppEvaluator,
                       config=XsimppConfig,
                       description="xsim++ error % on FLORES-200 X->eng with Meta's augmented "
                                   "English (or source=generated: clse's look-alike, labelled "
                                   "xsimpp_generated/, not comparable), errors by type")]
