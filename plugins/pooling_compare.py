"""Uniform (mean) pooling vs CLS pooling of the same encoder (MEXMA paper §5.6, Table 10).

The paper replaces the CLS sentence vector of MEXMA and LaBSE by the plain average of the
last-layer token states ("uniform attention distribution") and compares downstream results. Here
the comparison is xsim on FLORES-200 (X -> English, LASER ratio margin, k = 4:
:func:`clse.eval.xsim.xsim_error_rate`, as the ``xsim`` evaluator) with each pooling of
``poolings`` applied to the **same** forward pass of the encoder's transformer (so for a
SentenceTransformers folder, extra modules such as Dense/Normalize are not applied).

Metrics (error %, lower is better)::

    pooling/<pooling>/<lang>, pooling/<pooling>/avg
    pooling/delta_rel     100 · (CLS − mean) / CLS on the averages: the paper's Δ row, the
                          relative change from uniform to CLS (negative: CLS has fewer errors);
                          only when both ``cls`` and ``mean`` are compared and the CLS average
                          is non-zero

Artefacts with ``out_dir``: ``pooling_compare.json`` / ``.tsv`` and ``pooling_compare.png``
(per-language error bars, one colour per pooling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clse.errors import ConfigError
from clse.eval.xsim import MARGINS
from clse.hookspecs import PluginSpec, hookimpl
from clse.progress import bars_off


@dataclass
class PoolingCompareConfig:
    name: str = "pooling_compare"
    source: str = "auto"  # auto | flores200 | bundled | a folder (<split>/)<lang>.txt
    languages: list[str] | None = None  # null: every language of the folder but the target
    target: str = "eng_Latn"
    poolings: list[str] = field(default_factory=lambda: ["cls", "mean"])
    max_sentences: int | None = None  # first N sentences per language; null: all
    k: int = 4
    margin: str = "ratio"  # ratio | distance | absolute
    batch_size: int = 64
    progress: bool = True


class PoolingCompareEvaluator:
    """``evaluator(model, split, out_dir=None) -> {"pooling/<p>/avg": err %, ...}``."""

    def __init__(self, cfg: PoolingCompareConfig):
        from clse.plugins import registry

        if cfg.margin not in MARGINS:
            raise ConfigError(f"pooling_compare margin {cfg.margin!r} is unknown; choose one of "
                              f"{MARGINS}")
        if cfg.k < 1 or cfg.batch_size < 1:
            raise ConfigError("pooling_compare k and batch_size must be >= 1")
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"pooling_compare max_sentences must be >= 1 or null, "
                              f"got {cfg.max_sentences}")
        names = list(dict.fromkeys(cfg.poolings))
        if not names:
            raise ConfigError("pooling_compare needs at least one pooling")
        self.poolings = {name: registry().build("pooling", {"name": name}) for name in names}
        self.cfg = cfg
        from clse.eval.analyses import SplitSamples

        self._samples = SplitSamples(source=cfg.source, languages=cfg.languages, pivot=cfg.target,
                                     max_sentences=cfg.max_sentences, who="pooling_compare")

    def load(self, split: str) -> tuple[dict[str, list[str]], list[str]]:
        return self._samples(split)

    def __call__(self, model: Any, split: str, out_dir: Path | None = None) -> dict[str, float]:
        from tqdm.auto import tqdm

        from clse.eval.analyses import pool_states
        from clse.eval.xsim import xsim_error_rate

        cfg = self.cfg
        sentences, langs = self.load(split)

        def embed(texts: list[str]) -> dict[str, np.ndarray]:
            out = pool_states(model, texts, self.poolings, layers=[-1],
                              batch_size=cfg.batch_size)
            return {name: vecs[0] for name, vecs in out.items()}

        tgt_texts = sentences[cfg.target]
        target = embed(tgt_texts)
        rates: dict[str, dict[str, float]] = {name: {} for name in self.poolings}
        for lang in tqdm(langs, desc="pooling compare", unit="lang", disable=bars_off(cfg.progress),
                         leave=False):
            source = embed(sentences[lang])
            for name in self.poolings:
                rates[name][lang] = float(xsim_error_rate(source[name], target[name], cfg.k,
                                                          cfg.margin, tgt_texts=tgt_texts))
        metrics: dict[str, float] = {}
        for name, per_lang in rates.items():
            for lang, rate in per_lang.items():
                metrics[f"pooling/{name}/{lang}"] = rate
            metrics[f"pooling/{name}/avg"] = float(np.mean(list(per_lang.values())))
        if "cls" in rates and "mean" in rates and metrics["pooling/cls/avg"] != 0:
            cls, mean = metrics["pooling/cls/avg"], metrics["pooling/mean/avg"]
            metrics["pooling/delta_rel"] = 100.0 * (cls - mean) / cls
        if out_dir is not None:
            self._write(Path(out_dir), model, split, langs, rates, metrics)
        return metrics

    def _write(self, out_dir: Path, model: Any, split: str, langs: list[str],
               rates: dict[str, dict[str, float]], metrics: dict[str, float]) -> None:
        from clse.eval.analyses import new_figure, save_figure, write_json, write_tsv

        cfg = self.cfg
        names = list(rates)
        write_json(out_dir / "pooling_compare.json", {
            "reference": "MEXMA (Janeiro et al. 2024) §5.6, Table 10 (uniform vs CLS)",
            "metric": f"xsim error % ({split}, X -> {cfg.target}, {cfg.margin} margin, k={cfg.k})",
            "model": getattr(model, "name", ""),
            "n_sentences": len(self.load(split)[0][cfg.target]),
            "per_language": rates,
            "avg": {name: metrics[f"pooling/{name}/avg"] for name in names},
            "delta_rel": metrics.get("pooling/delta_rel")})
        write_tsv(out_dir / "pooling_compare.tsv", ["lang", *names],
                  [[lang, *(rates[n][lang] for n in names)] for lang in langs]
                  + [["avg", *(metrics[f"pooling/{n}/avg"] for n in names)]])
        fig = new_figure(max(5.0, 0.22 * len(langs) * len(names) + 2.0), 3.8)
        ax = fig.add_subplot()
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar([x + (i - (len(names) - 1) / 2) * width for x in range(len(langs))],
                   [rates[name][lang] for lang in langs], width,
                   label=f"{name} (avg {metrics[f'pooling/{name}/avg']:.2f})")
        ax.set_xticks(range(len(langs)), labels=langs, rotation=90, fontsize=6)
        ax.set_ylabel("xsim error %")
        ax.set_title(f"pooling of the same encoder: xsim -> {cfg.target} ({split})", fontsize=9)
        ax.legend(fontsize=8)
        save_figure(fig, out_dir / "pooling_compare.png")


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="pooling_compare", factory=PoolingCompareEvaluator,
                       config=PoolingCompareConfig,
                       description="xsim on FLORES-200 with CLS vs uniform (mean) pooling of the "
                                   "same encoder (MEXMA Table 10)")]
