"""CLS attention entropy in the last layer (MEXMA paper §5.6 and Appendix G).

For each sentence, the last layer's attention probabilities of the CLS token (query position 0)
over the sentence's tokens, ``p_h(t)`` for head h, give an entropy in nats::

    H_h = - Σ_t p_h(t) log p_h(t)

averaged over heads, then over sentences (per language), then over languages (``avg``).
*Without BOS/EOS*: the BOS/CLS and EOS/SEP tokens (by the tokenizer's ids; position 0 and the last
real token when it names none) are removed and the remaining probabilities **renormalised** to
sum to 1 before the entropy is taken (the paper removes them "from the entropy computation";
renormalising keeps it the entropy of a distribution). The attention mass the CLS token puts on
BOS/EOS (the "attention dump" of the paper's Figure 11) is reported too. Paper values (FLORES-200
test): LaBSE ≈ 3.4 and MEXMA ≈ 2.5 with BOS/EOS; ≈ 3.5 and ≈ 3.0 without.

Metrics::

    cls_attention/<lang>/entropy, cls_attention/<lang>/entropy_no_bos_eos,
    cls_attention/<lang>/bos_eos_mass, cls_attention/avg/{entropy,entropy_no_bos_eos,bos_eos_mass}

Assumes the CLS token at position 0 with right padding (BERT / XLM-R style encoders). The model
must be able to output attention maps (eager attention; :meth:`EvalModel.token_batches` switches
to it).

Artefacts with ``out_dir``: ``cls_attention.json`` / ``.tsv`` (per-language table, example
distributions) and ``cls_attention_examples.png``: bar charts of the head-averaged attention the
CLS token gives to each token of a few example sentences (token strings as labels; BOS/EOS bars
in grey), the same sentences in each ``plot_languages`` language (default: English and
Portuguese as in the paper's figures, else the first other language).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clse.errors import ConfigError
from clse.hookspecs import PluginSpec, hookimpl
from clse.progress import bars_off


@dataclass
class ClsAttentionConfig:
    name: str = "cls_attention"
    source: str = "auto"  # auto | flores200 | bundled | a folder (<split>/)<lang>.txt
    languages: list[str] | None = None  # null: every language of the folder (pivot included)
    pivot: str = "eng_Latn"
    max_sentences: int | None = None  # first N per language; null: all (paper)
    batch_size: int = 32
    plot_sentences: list[int] | None = None  # sentence indices to plot; null: [0, 1]
    plot_languages: list[str] | None = None  # null: [pivot, por_Latn or the first other]
    progress: bool = True


class ClsAttentionEvaluator:
    """``evaluator(model, split, out_dir=None) -> {"cls_attention/...": nats, ...}``."""

    def __init__(self, cfg: ClsAttentionConfig):
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"cls_attention max_sentences must be >= 1 or null, "
                              f"got {cfg.max_sentences}")
        if cfg.batch_size < 1:
            raise ConfigError(f"cls_attention batch_size must be >= 1, got {cfg.batch_size}")
        self.cfg = cfg
        from clse.eval.analyses import SplitSamples

        self._samples = SplitSamples(source=cfg.source, languages=cfg.languages, pivot=cfg.pivot,
                                     max_sentences=cfg.max_sentences, who="cls_attention",
                                     include_pivot=True)

    def load(self, split: str) -> dict[str, list[str]]:
        return self._samples(split)[0]

    def __call__(self, model: Any, split: str, out_dir: Path | None = None) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        sentences = self.load(split)
        langs = list(sentences)
        plot_idx = [i for i in (cfg.plot_sentences if cfg.plot_sentences is not None else [0, 1])
                    if 0 <= i < len(sentences[langs[0]])]
        plot_langs = self._plot_languages(langs)
        table: dict[str, dict[str, float]] = {}
        examples: list[dict] = []
        for lang in tqdm(langs, desc="cls attention", unit="lang", disable=bars_off(cfg.progress),
                         leave=False):
            wanted = set(plot_idx) if lang in plot_langs else set()
            stats, found = cls_attention_stats(model, sentences[lang], cfg.batch_size, wanted)
            table[lang] = stats
            examples.extend({"language": lang, **ex} for ex in sorted(
                found, key=lambda e: e["sentence"]))
        metrics: dict[str, float] = {}
        keys = ("entropy", "entropy_no_bos_eos", "bos_eos_mass")
        for lang, stats in table.items():
            for key in keys:
                metrics[f"cls_attention/{lang}/{key}"] = stats[key]
        for key in keys:
            values = [s[key] for s in table.values() if not np.isnan(s[key])]
            metrics[f"cls_attention/avg/{key}"] = float(np.mean(values)) if values else float("nan")
        if out_dir is not None:
            self._write(Path(out_dir), model, split, table, metrics, examples)
        return {k: v for k, v in metrics.items() if not np.isnan(v)}

    def _plot_languages(self, langs: list[str]) -> list[str]:
        cfg = self.cfg
        if cfg.plot_languages is not None:
            return [lang for lang in cfg.plot_languages if lang in langs]
        others = [lang for lang in langs if lang != cfg.pivot]
        second = "por_Latn" if "por_Latn" in others else (others[0] if others else None)
        return [lang for lang in (cfg.pivot, second) if lang is not None and lang in langs]

    def _write(self, out_dir: Path, model: Any, split: str, table: dict, metrics: dict,
               examples: list[dict]) -> None:
        from clse.eval.analyses import new_figure, save_figure, write_json, write_tsv

        keys = ("entropy", "entropy_no_bos_eos", "bos_eos_mass", "uniform_entropy", "sentences")
        write_json(out_dir / "cls_attention.json", {
            "reference": "MEXMA (Janeiro et al. 2024) §5.6, Appendix G",
            "definition": "entropy (nats) of the last-layer attention of the CLS token (query "
                          "position 0), per head, averaged over heads then sentences; "
                          "no_bos_eos: BOS/EOS removed and the rest renormalised",
            "model": getattr(model, "name", ""), "split": split, "per_language": table,
            "avg": {k.split("/")[-1]: v for k, v in metrics.items() if "/avg/" in k},
            "examples": examples})
        write_tsv(out_dir / "cls_attention.tsv", ["lang", *keys],
                  [[lang, *(stats[k] for k in keys)] for lang, stats in table.items()])
        if not examples:
            return
        width = max(4.0, 0.28 * max(len(e["tokens"]) for e in examples) + 1.5)
        fig = new_figure(width, 2.3 * len(examples))
        for i, ex in enumerate(examples):
            ax = fig.add_subplot(len(examples), 1, i + 1)
            colours = ["#999999" if b else "#1f77b4" for b in ex["bos_eos"]]
            ax.bar(range(len(ex["tokens"])), ex["attention"], color=colours)
            ax.set_xticks(range(len(ex["tokens"])), labels=ex["tokens"], rotation=90, fontsize=7)
            ax.set_xlim(-0.6, len(ex["tokens"]) - 0.4)
            ax.set_ylabel("attention", fontsize=8)
            ax.set_title(f"{ex['language']} #{ex['sentence']}: H = {ex['entropy']:.2f} nats, "
                         f"without BOS/EOS {ex['entropy_no_bos_eos']:.2f}", fontsize=8)
        save_figure(fig, out_dir / "cls_attention_examples.png")


def cls_attention_stats(model: Any, texts: list[str], batch_size: int = 32,
                        examples: set[int] | frozenset = frozenset(),
                        ) -> tuple[dict[str, float], list[dict]]:
    """Mean entropies of the CLS token's last-layer attention over ``texts``.

    Returns ``({"entropy", "entropy_no_bos_eos", "bos_eos_mass", "uniform_entropy",
    "sentences"}, examples)``: means over sentences of head means; ``uniform_entropy`` is the mean
    ``log(#tokens)`` (the entropy of a uniform CLS attention, for scale). ``examples`` lists, for
    the sentence indices asked, the tokens and the head-averaged CLS attention.
    """
    import torch

    from clse.eval.analyses import attention_entropy, boundary_token_mask, token_strings

    sums = {"entropy": 0.0, "entropy_no_bos_eos": 0.0, "bos_eos_mass": 0.0,
            "uniform_entropy": 0.0}
    counted = {"entropy": 0, "entropy_no_bos_eos": 0}
    found: list[dict] = []
    for batch in model.token_batches(texts, batch_size, attentions=True):
        mask = batch.attention_mask.bool()  # (B, T)
        probs = batch.attentions[:, :, 0, :].double() * mask[:, None, :]  # (B, H, T): CLS row
        boundary = boundary_token_mask(batch.input_ids, batch.attention_mask, model.tokenizer)
        full = attention_entropy(probs, mask[:, None, :]).mean(1)  # (B,)
        rest = attention_entropy(probs, (mask & ~boundary)[:, None, :]).mean(1)  # (B,), NaN: none
        mass = (probs * boundary[:, None, :]).sum(-1).mean(1)  # (B,)
        sums["entropy"] += float(full.sum())
        sums["bos_eos_mass"] += float(mass.sum())
        sums["uniform_entropy"] += float(torch.log(mask.sum(1).double()).sum())
        counted["entropy"] += int(full.numel())
        ok = ~torch.isnan(rest)
        sums["entropy_no_bos_eos"] += float(rest[ok].sum())
        counted["entropy_no_bos_eos"] += int(ok.sum())
        for row, idx in enumerate(np.asarray(batch.index).tolist()):
            if idx not in examples:
                continue
            length = int(mask[row].sum())
            ids = batch.input_ids[row, :length].tolist()
            found.append({"sentence": int(idx), "text": texts[idx],
                          "tokens": token_strings(model.tokenizer, ids),
                          "attention": [float(v) for v in probs[row, :, :length].mean(0)],
                          "bos_eos": [bool(v) for v in boundary[row, :length]],
                          "entropy": float(full[row]),
                          "entropy_no_bos_eos": float(rest[row])})
    n = counted["entropy"]
    stats = {"entropy": sums["entropy"] / n if n else float("nan"),
             "entropy_no_bos_eos": (sums["entropy_no_bos_eos"] / counted["entropy_no_bos_eos"]
                                    if counted["entropy_no_bos_eos"] else float("nan")),
             "bos_eos_mass": sums["bos_eos_mass"] / n if n else float("nan"),
             "uniform_entropy": sums["uniform_entropy"] / n if n else float("nan"),
             "sentences": float(n)}
    return stats, found


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="cls_attention", factory=ClsAttentionEvaluator,
                       config=ClsAttentionConfig,
                       description="entropy of the CLS token's last-layer attention, with and "
                                   "without BOS/EOS (MEXMA §5.6), + attention bar plots")]
