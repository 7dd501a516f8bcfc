"""Token-matching analysis (MEXMA paper §5.5, Table 9): what do last-layer tokens encode?

All tokens of the first ``max_sentences`` FLORES-200 sentences of ``split`` in every language of
the sample (English included; default: every language of the folder, as the paper's 81) are
encoded. From each English sentence ``queries_per_sentence`` tokens (paper: 3) are drawn at
random (seed ``seed``); for each query the ``k`` (paper: 5) nearest tokens by cosine among **all**
tokens of all sentences, the query itself excluded, are categorised by the sentence they belong to:

* ``same_sentence``: another token of the query's own sentence (context dominates);
* ``translation``: a token of the parallel sentence in another language (cross-lingual alignment);
* ``same_language``: a token of another English sentence (lexical: typically the same token in
  another context);
* ``other``: a token of a non-parallel sentence in another language.

Metrics (percent of all query-neighbour pairs; ``top1`` only the nearest neighbour)::

    token_matching/<category>, token_matching/top1/<category>, token_matching/identical_token

``identical_token``: % of neighbours carrying the query's own token id (the paper's "same token"
reading of *same language*). Special tokens (``<s>``, ``</s>``, padding, ``<mask>``; not
``<unk>``) are excluded as queries and candidates: the paper queries word tokens (its Appendix F
figures) and a ``</s>`` matched to another ``</s>`` says nothing about what word tokens encode;
``include_special: true`` keeps them.

Defaults follow the paper (FLORES-200 devtest, first 250 sentences, 3 queries each, 5 neighbours,
last layer); on a CPU, ``max_sentences`` and ``languages`` trade time for sample size.

Artefacts with ``out_dir``: ``token_matching.json`` (percentages, counts, example queries with
their neighbours), ``token_matching.tsv`` and ``token_matching.png`` (bar chart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl


@dataclass
class TokenMatchingConfig:
    name: str = "token_matching"
    source: str = "auto"  # auto | flores200 | bundled | a folder (<split>/)<lang>.txt
    languages: list[str] | None = None  # null: every language of the folder (pivot added)
    pivot: str = "eng_Latn"
    max_sentences: int | None = 250  # first N sentences per language (paper: 250)
    queries_per_sentence: int = 3
    k: int = 5  # neighbours per query (paper: 5)
    layer: int = -1  # hidden-state index (-1: last layer, 0: embeddings)
    include_special: bool = False
    seed: int = 0
    batch_size: int = 32
    n_examples: int = 20  # example queries written to the JSON
    progress: bool = True


class TokenMatchingEvaluator:
    """``evaluator(model, split, out_dir=None) -> {"token_matching/<category>": %, ...}``."""

    def __init__(self, cfg: TokenMatchingConfig):
        for key in ("queries_per_sentence", "k", "batch_size"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"token_matching {key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"token_matching max_sentences must be >= 1 or null, "
                              f"got {cfg.max_sentences}")
        self.cfg = cfg
        from clse.eval.analyses import SplitSamples

        self._samples = SplitSamples(source=cfg.source, languages=cfg.languages, pivot=cfg.pivot,
                                     max_sentences=cfg.max_sentences, who="token_matching",
                                     include_pivot=True)

    def load(self, split: str) -> dict[str, list[str]]:
        return self._samples(split)[0]

    def __call__(self, model: Any, split: str, out_dir: Path | None = None) -> dict[str, float]:
        from clse.eval.analyses import token_matching

        cfg = self.cfg
        result = token_matching(model, self.load(split), pivot=cfg.pivot,
                                queries_per_sentence=cfg.queries_per_sentence, k=cfg.k,
                                seed=cfg.seed, layer=cfg.layer,
                                include_special=cfg.include_special, batch_size=cfg.batch_size,
                                n_examples=cfg.n_examples, progress=cfg.progress)
        metrics = {f"token_matching/{c}": v for c, v in result["topk"].items()}
        metrics.update({f"token_matching/top1/{c}": v for c, v in result["top1"].items()})
        metrics["token_matching/identical_token"] = result["identical_token"]
        if out_dir is not None:
            write(Path(out_dir), result, split, cfg, getattr(model, "name", ""))
        return metrics


def write(out_dir: Path, result: dict, split: str, cfg: TokenMatchingConfig, model: str) -> None:
    from clse.eval.analyses import CATEGORIES, new_figure, save_figure, write_json, write_tsv

    write_json(out_dir / "token_matching.json", {
        "reference": "MEXMA (Janeiro et al. 2024) §5.5, Table 9",
        "model": model, "split": split, "pivot": cfg.pivot, "layer": cfg.layer,
        "queries_per_sentence": cfg.queries_per_sentence, "seed": cfg.seed,
        "include_special": cfg.include_special, **result})
    write_tsv(out_dir / "token_matching.tsv", ["category", f"top{result['k']}_pct", "top1_pct"],
              [[c, result["topk"][c], result["top1"][c]] for c in CATEGORIES])

    order = ["other", "same_language", "same_sentence", "translation"]  # the paper's columns
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    x = range(len(order))
    width = 0.38
    bars = ax.bar([i - width / 2 for i in x], [result["topk"][c] for c in order], width,
                  label=f"top-{result['k']} neighbours")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    bars = ax.bar([i + width / 2 for i in x], [result["top1"][c] for c in order], width,
                  label="nearest neighbour")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(list(x), labels=[c.replace("_", " ") for c in order])
    ax.set_ylabel("% of matches")
    ax.set_ylim(0, 105)
    ax.set_title(f"token matching ({result['n_queries']} queries, "
                 f"{len(result['languages'])} languages, {split})", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, out_dir / "token_matching.png")


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="token_matching", factory=TokenMatchingEvaluator,
                       config=TokenMatchingConfig,
                       description="MEXMA Table 9: categories of the nearest tokens of English "
                                   "query tokens (same sentence / translation / same language / "
                                   "other)")]
