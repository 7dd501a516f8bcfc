"""MTEB bridge: the encoder through ``mteb.evaluate``, with mteb's standard result files.

Tasks, by name (``tasks``):

* ``clse.FLORES200BitextMining`` (default; ``clse/FLORES200BitextMining`` also accepted):
  FLORES-200 X->eng from local files, split = ``clse eval``'s ``split`` (dev | devtest);
* ``clse.TatoebaV1BitextMining``: LASER Tatoeba v1 X->eng from local files (split ``test``);
* any mteb task name (``BUCC``, ``STS17``, ``MassiveIntentClassification``, ...), its data from
  the Hugging Face hub or the local datasets cache (an offline run without it stops with a clear
  error); ``mexma:<group>`` expands to the MEXMA paper's tasks (groups ``bitext_mining``,
  ``classification``, ``pair_classification``, ``sts``, or ``all``; see
  :data:`clse.eval.mteb_bridge.PAPER_TASKS`).

mteb scores bitext mining by plain cosine nearest neighbour (main score F1; accuracy = 1 - the
error rate of clse's ``xsim`` with ``margin=absolute``). Metrics, on mteb's 0-1 scale::

    mteb/<task>/<subset>/<score>    e.g. mteb/clse.FLORES200BitextMining/deu_Latn-eng_Latn/f1
    mteb/<task>/avg                 mean main score over the task's subsets

``languages``/``target``/``max_sentences`` apply to the local tasks; hub tasks run whole on their
``hub_split`` (default ``test``), filtered by ``hub_languages`` (ISO 639-3 codes) when set. With
``out_dir`` mteb writes ``results/<model>/<revision>/<task>.json`` (+ ``model_meta.json``) there.
Needs the ``mteb`` extra (``pip install 'clse[mteb]'``). The computation is
:mod:`clse.eval.mteb_bridge`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clse.errors import ConfigError
from clse.eval import mteb_bridge as bridge
from clse.hookspecs import PluginSpec, hookimpl
from clse_plugins.xsim_flores import DEFAULT_LANGUAGES


@dataclass
class MtebConfig:
    name: str = "mteb"
    tasks: list[str] = field(default_factory=lambda: [bridge.FLORES_TASK])
    languages: list[str] | None = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    target: str = "eng_Latn"  # FLORES: the language searched into
    max_sentences: int | None = None  # local tasks: first N sentences per subset (quick runs)
    source: str | None = None  # local tasks' data folder; null: $CLSE_DATA or ../shared/data
    batch_size: int = 64
    scores: list[str] = field(default_factory=lambda: ["main_score"])  # + accuracy, precision...
    hub_languages: list[str] | None = None  # hub tasks: mteb language filter (eng, fra, cmn)
    hub_split: str | None = "test"  # hub tasks: the split run when they have it; null: all
    model_name: str | None = None  # mteb's model name (org/name); null: from the model


class MtebEvaluator:
    """``evaluator(model, split, out_dir=None) -> {"mteb/<task>/<subset>/<score>": x, ...}``."""

    def __init__(self, cfg: MtebConfig):
        if not cfg.tasks:
            raise ConfigError("mteb tasks is empty; e.g. tasks=[clse.FLORES200BitextMining]")
        if cfg.batch_size < 1:
            raise ConfigError(f"mteb batch_size must be >= 1, got {cfg.batch_size}")
        if cfg.max_sentences is not None and cfg.max_sentences < 1:
            raise ConfigError(f"mteb max_sentences must be >= 1 or null, got {cfg.max_sentences}")
        self.cfg = cfg
        self.task_names = expand(cfg.tasks)

    def __call__(self, model: Any, split: str, out_dir: Path | None = None) -> dict[str, float]:
        cfg = self.cfg
        bridge.require_mteb()
        tasks = bridge.get_tasks(
            self.task_names, split=split, languages=cfg.languages, data_dir=cfg.source,
            max_sentences=cfg.max_sentences, target=cfg.target,
            hub_languages=cfg.hub_languages, hub_split=cfg.hub_split)
        with tempfile.TemporaryDirectory(prefix="clse-mteb-") as tmp:
            folder = Path(out_dir) if out_dir is not None else Path(tmp)
            result = bridge.evaluate(model, tasks, folder, batch_size=cfg.batch_size,
                                     name=cfg.model_name)
        return bridge.flatten(tasks, result, scores=cfg.scores)


def expand(names: list[str]) -> list[str]:
    """Task names with ``mexma:<group>`` expanded, duplicates dropped, order kept."""
    out: list[str] = []
    for raw in names:
        name = str(raw)
        if name.startswith("mexma:"):
            group = name[len("mexma:"):]
            groups = bridge.PAPER_TASKS
            if group != "all" and group not in groups:
                raise ConfigError(f"unknown task group {name!r}; choose mexma:all or one of "
                                  f"{', '.join('mexma:' + g for g in groups)}")
            picked = [t for g in (groups if group == "all" else [group]) for t in groups[g]]
        else:
            canonical = bridge.canonical_name(name)
            if canonical.startswith("clse.") and canonical not in bridge.LOCAL_TASKS:
                raise ConfigError(f"unknown local mteb task {name!r}; local tasks: "
                                  f"{', '.join(bridge.LOCAL_TASKS)}")
            picked = [canonical]
        for task in picked:
            if task not in out:
                out.append(task)
    return out


@hookimpl
def clse_evaluators():
    return [PluginSpec(kind="evaluator", name="mteb", factory=MtebEvaluator, config=MtebConfig,
                       description="mteb.evaluate on local FLORES-200/Tatoeba bitext tasks and "
                                   "hub tasks by name; mteb result JSONs (needs clse[mteb])")]
