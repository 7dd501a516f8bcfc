"""MEXA evaluator: cross-lingual alignment per layer, English pivot vs each language.

For every language L and every layer l (0 = embedding layer, ..., L_max = last), the first
``max_sentences`` (default 100) FLORES-200 sentences of ``split`` in English and in L are embedded
with ``pooling`` applied to the layer's hidden states, and :func:`clse.eval.mexa.mexa_score`
(strict row-and-column test) gives ``MEXA_l(L)`` in [0, 1]. Layer pooling: ``mean`` = mean over
all layers, ``max`` = max over layers (as the MEXA paper, §3). Metrics (the runner prefixes the
split)::

    mexa/<lang>/mean, mexa/<lang>/max      layer-pooled score of each language
    mexa/avg/mean, mexa/avg/max             their means over languages
    mexa/layer<k>/avg                       mean over languages of the layer-k score
    mexa/pearson[/<task>]/mean|max          with ``downstream``: Pearson r between the layer-pooled
                                            scores and per-language task scores (+ .../n)

Poolings: ``weighted_mean`` (default, MEXA's position-weighted mean ``Σ t·h_t / Σ t``),
``last_token``, ``cls``, ``mean`` or any pooling plugin; applied to every layer, special tokens
included (as the official extractor, which pools all non-padding tokens).

``downstream``: a TSV ``lang<TAB>score`` (``#`` comments allowed). A first row whose second field
is not a number is a header naming the score columns; several columns give one correlation per
column (``mexa/pearson/<column>/mean``). Languages missing on either side are left out; fewer
than 3 shared languages, or constant scores, give no correlation (a warning).

Artefacts with ``out_dir``: ``mexa.json`` (config, per-layer table, pooled scores, correlations),
``mexa.tsv`` (lang, layer0..layerL, mean, max), ``mexa_layers.png`` (heatmap, layers on x,
languages on y) and, with ``downstream``, ``mexa_vs_downstream.png``.

Reference: Kargaran et al. (2024), MEXA, arXiv:2410.05873; code github.com/cisnlp/MEXA. The
paper's defaults: FLORES-200 devtest, first 100 sentences, weighted mean, mean over layers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clse.errors import ClseError, ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.progress import bars_off


@dataclass
class MexaConfig:
    name: str = "mexa"
    source: str = "auto"  # auto | flores200 | bundled | a folder (<split>/)<lang>.txt
    languages: list[str] | None = None  # null: every language of the folder but the pivot
    pivot: str = "eng_Latn"
    max_sentences: int | None = 100  # first N sentences (MEXA: 100); null: all
    pooling: str = "weighted_mean"  # weighted_mean | last_token | cls | mean | a pooling plugin
    batch_size: int = 32
    downstream: str | None = None  # TSV lang<TAB>score[<TAB>score...] -> Pearson correlations
    progress: bool = True


class MexaEvaluator:
    """``evaluator(model, split, out_dir=None) -> {"mexa/...": value}`` (see the module doc)."""

    def __init__(self, cfg: MexaConfig):
        if cfg.max_sentences is not None and cfg.max_sentences < 2:
            raise ConfigError(f"mexa max_sentences must be >= 2 or null, "
                              f"got {cfg.max_sentences}")
        if cfg.batch_size < 1:
            raise ConfigError(f"mexa batch_size must be >= 1, got {cfg.batch_size}")
        from clse.plugins import registry

        self.pool = registry().build("pooling", {"name": cfg.pooling})
        self.cfg = cfg
        self.downstream = read_downstream(cfg.downstream) if cfg.downstream else None
        from clse.eval.analyses import SplitSamples

        self._samples = SplitSamples(source=cfg.source, languages=cfg.languages, pivot=cfg.pivot,
                                     max_sentences=cfg.max_sentences, who="mexa")

    def load(self, split: str) -> tuple[dict[str, list[str]], list[str]]:
        return self._samples(split)

    def __call__(self, model: Any, split: str, out_dir: Path | None = None) -> dict[str, float]:
        from tqdm.auto import tqdm

        from clse.eval.analyses import pool_states
        from clse.eval.mexa import mexa_score

        cfg = self.cfg
        sentences, langs = self.load(split)

        def embed(texts: list[str]) -> np.ndarray:  # (L+1, n, D)
            return pool_states(model, texts, {"p": self.pool}, batch_size=cfg.batch_size)["p"]

        pivot_emb = embed(sentences[cfg.pivot])
        n_layers = pivot_emb.shape[0]
        table = np.zeros((len(langs), n_layers))
        for li, lang in enumerate(tqdm(langs, desc=f"mexa {cfg.pivot}", unit="lang",
                                       disable=bars_off(cfg.progress), leave=False)):
            emb = embed(sentences[lang])
            table[li] = [mexa_score(pivot_emb[layer], emb[layer]) for layer in range(n_layers)]

        metrics: dict[str, float] = {}
        for li, lang in enumerate(langs):
            metrics[f"mexa/{lang}/mean"] = float(table[li].mean())
            metrics[f"mexa/{lang}/max"] = float(table[li].max())
        metrics["mexa/avg/mean"] = float(table.mean(axis=1).mean())
        metrics["mexa/avg/max"] = float(table.max(axis=1).mean())
        for layer in range(n_layers):
            metrics[f"mexa/layer{layer}/avg"] = float(table[:, layer].mean())

        correlations: dict[str, dict[str, float]] = {}
        if self.downstream is not None:
            pooled = {"mean": dict(zip(langs, table.mean(axis=1))),
                      "max": dict(zip(langs, table.max(axis=1)))}
            single = len(self.downstream) == 1
            for column, scores in self.downstream.items():
                corr = pearson(pooled, scores, column)
                if corr is None:
                    continue
                correlations[column] = corr
                prefix = "mexa/pearson" if single else f"mexa/pearson/{column}"
                for key, value in corr.items():
                    metrics[f"{prefix}/{key}"] = value

        if out_dir is not None:
            self._write(Path(out_dir), model, split, langs, table, correlations)
        return metrics

    def _write(self, out_dir: Path, model: Any, split: str, langs: list[str], table: np.ndarray,
               correlations: dict[str, dict[str, float]]) -> None:
        from clse.eval.analyses import new_figure, save_figure, write_json, write_tsv

        cfg = self.cfg
        n_layers = table.shape[1]
        n = len(self.load(split)[0][cfg.pivot])
        write_json(out_dir / "mexa.json", {
            "definition": "MEXA (Kargaran et al. 2024, cisnlp/MEXA): fraction of pairs i with "
                          "cos(e_i,f_i) strictly greater than every other entry of row i and "
                          "column i; ties count as not aligned",
            "split": split, "pivot": cfg.pivot, "n_sentences": n, "pooling": cfg.pooling,
            "layers": n_layers, "layer_0": "embedding layer",
            "model": getattr(model, "name", ""),
            "per_layer": {lang: [float(v) for v in table[li]] for li, lang in enumerate(langs)},
            "mean": {lang: float(table[li].mean()) for li, lang in enumerate(langs)},
            "max": {lang: float(table[li].max()) for li, lang in enumerate(langs)},
            "avg": {"mean": float(table.mean(axis=1).mean()),
                    "max": float(table.max(axis=1).mean()),
                    "per_layer": [float(v) for v in table.mean(axis=0)]},
            "downstream": cfg.downstream, "pearson": correlations,
        })
        write_tsv(out_dir / "mexa.tsv",
                  ["lang", *(f"layer{layer}" for layer in range(n_layers)), "mean", "max"],
                  [[lang, *(float(v) for v in table[li]), float(table[li].mean()),
                    float(table[li].max())] for li, lang in enumerate(langs)])

        fig = new_figure(2.2 + 0.42 * n_layers, 1.4 + 0.22 * len(langs))
        ax = fig.add_subplot()
        image = ax.imshow(table, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis",
                          interpolation="nearest")
        ax.set_xticks(range(n_layers))
        ax.set_yticks(range(len(langs)), labels=langs, fontsize=7)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_title(f"MEXA vs {cfg.pivot} ({cfg.pooling}, {split}, n={n})", fontsize=9)
        if table.size <= 400:
            for (r, c), v in np.ndenumerate(table):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
        fig.colorbar(image, ax=ax, label="MEXA")
        save_figure(fig, out_dir / "mexa_layers.png")

        if correlations and self.downstream is not None:
            columns = list(correlations)
            fig = new_figure(4.2 * len(columns), 3.8)
            for ci, column in enumerate(columns):
                ax = fig.add_subplot(1, len(columns), ci + 1)
                scores = self.downstream[column]
                shared = [lang for lang in langs if lang in scores]
                x = [float(table[langs.index(lang)].mean()) for lang in shared]
                y = [scores[lang] for lang in shared]
                ax.scatter(x, y, s=12)
                for xi, yi, lang in zip(x, y, shared):
                    ax.annotate(lang, (xi, yi), fontsize=5)
                ax.set_xlabel("MEXA (mean over layers)")
                ax.set_ylabel(column)
                ax.set_title(f"Pearson r = {correlations[column]['mean']:.3f}", fontsize=9)
            save_figure(fig, out_dir / "mexa_vs_downstream.png")


def read_downstream(path: str) -> dict[str, dict[str, float]]:
    """Per-language downstream scores from a TSV: ``{column: {lang: score}}`` (module doc)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ClseError(f"mexa downstream file {path!r} not found (a TSV: lang<TAB>score)")
    rows = [line.rstrip("\r").split("\t") for line in file.read_text(encoding="utf-8").split("\n")
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ClseError(f"mexa downstream file {path} has no rows")

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    header = ["score"] * (len(rows[0]) - 1)
    if len(rows[0]) >= 2 and number(rows[0][1]) is None:
        header, rows = [h.strip() or f"score{i}" for i, h in enumerate(rows[0][1:], 1)], rows[1:]
    if not header:
        raise ClseError(f"mexa downstream file {path}: expected lang<TAB>score rows")
    out: dict[str, dict[str, float]] = {h: {} for h in header}
    for lineno, row in enumerate(rows, 1):
        if len(row) != len(header) + 1:
            raise ClseError(f"mexa downstream file {path}: row {lineno} has {len(row)} fields, "
                            f"expected {len(header) + 1} (lang<TAB>score...)")
        for column, text in zip(header, row[1:]):
            value = number(text)
            if value is None:
                raise ClseError(f"mexa downstream file {path}: row {lineno}: {text!r} is not a "
                                f"number")
            out[column][row[0].strip()] = value
    return out


def pearson(pooled: dict[str, dict[str, float]], scores: dict[str, float],
            column: str) -> dict[str, float] | None:
    """Pearson r between each layer-pooled MEXA (``{"mean": {lang: v}, ...}``) and ``scores``."""
    from scipy.stats import pearsonr

    out: dict[str, float] = {}
    for key, values in pooled.items():
        shared = [lang for lang in values if lang in scores]
        x = np.array([values[lang] for lang in shared], dtype=float)
        y = np.array([scores[lang] for lang in shared], dtype=float)
        if len(shared) < 3:
            warnings.warn(f"mexa: only {len(shared)} languages have both a MEXA score and a "
                          f"downstream {column!r} score; no correlation", stacklevel=3)
            return None
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            warnings.warn(f"mexa: constant {'MEXA ' + key if np.ptp(x) == 0 else column} scores; "
                          f"Pearson correlation undefined", stacklevel=3)
            continue
        r = float(pearsonr(x, y).statistic)
        if not math.isnan(r):
            out[key] = r
        out["n"] = float(len(shared))
    return out or None


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="mexa", factory=MexaEvaluator, config=MexaConfig,
                       description="MEXA cross-lingual alignment per layer vs English (strict "
                                   "row-and-column test), mean/max over layers, FLORES-200")]
