"""Run a set of evaluators on one model: metrics, per-evaluator artifacts, a results JSON.

Evaluators are plugins of kind ``evaluator`` (``clse.interfaces.Evaluator``)::

    evaluator(model, split) -> {"name": value, ...}
    evaluator(model, split, out_dir=Path) -> ...      # when it writes tables or plots

``model`` is an :class:`clse.eval.model.EvalModel` (``encode`` plus token-level states). Metric
names are prefixed with the split (``devtest/xsim/deu_Latn``), as during training, so the same
evaluator gives comparable names in ``clse train`` and ``clse eval``.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("clse.eval")


def accepts_out_dir(evaluator: Any) -> bool:
    fn = evaluator if inspect.isfunction(evaluator) else evaluator.__call__
    return "out_dir" in inspect.signature(fn).parameters


def run_evaluators(model: Any, evaluators: Mapping[str, Any], split: str,
                   out_dir: Path | None = None) -> tuple[dict[str, float], dict[str, dict]]:
    """Every evaluator on ``model``; returns (metrics, {key: {"seconds", "artifacts"}})."""
    metrics: dict[str, float] = {}
    info: dict[str, dict] = {}
    for key, evaluator in evaluators.items():
        kwargs: dict[str, Any] = {}
        folder = None
        if out_dir is not None and accepts_out_dir(evaluator):
            folder = Path(out_dir) / key
            folder.mkdir(parents=True, exist_ok=True)
            kwargs["out_dir"] = folder
        log.info("evaluator %s on %s ...", key, split)
        start = time.perf_counter()
        for name, value in evaluator(model, split, **kwargs).items():
            metrics[f"{split}/{name}"] = float(value)
        seconds = time.perf_counter() - start
        artifacts = sorted(str(p.relative_to(out_dir)) for p in folder.rglob("*")
                           if p.is_file()) if folder is not None else []
        info[key] = {"seconds": round(seconds, 2), "artifacts": artifacts}
        log.info("evaluator %s done in %.1f s", key, seconds)
    return metrics, info
