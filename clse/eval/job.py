"""``clse eval``: load a model, run the configured evaluators, write JSON and MLflow."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from clse.eval.model import EvalModel, describe, dump, load_eval_model
from clse.eval.runner import run_evaluators

log = logging.getLogger("clse.eval")


def source_run_id(model_spec: str, tracking_uri: str) -> str | None:
    """The MLflow run that trained ``model_spec`` (a run id, or a run folder found by its tag)."""
    from clse.eval.model import _RUN_ID

    if _RUN_ID.match(model_spec):
        return model_spec
    folder = Path(model_spec).expanduser()
    if not (folder / ".hydra").is_dir():
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        for exp in client.search_experiments():
            runs = client.search_runs([exp.experiment_id],
                                      f"tags.`clse.run_dir` = '{folder.resolve()}'", max_results=1)
            if runs:
                return runs[0].info.run_id
    except Exception as exc:  # noqa: BLE001 - a missing store only means "no source run"
        log.debug("no source run for %s: %s", model_spec, exc)
    return None


def evaluate_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.model`` with ``cfg.eval.evaluators``; returns the results dict."""
    import torch

    from clse.plugins import registry
    from clse.tracking import Tracker, default_tracking_uri
    from clse.train.build import autocast_dtype, resolve_device

    torch.manual_seed(int(cfg.seed))
    device = resolve_device(cfg.device)
    uri = cfg.tracking.uri or default_tracking_uri()
    pooling = cfg.get("pooling")  # a pooling group's config ({name, options}) or None
    model: EvalModel = load_eval_model(
        str(cfg.model), pooling=OmegaConf.to_container(pooling) if pooling is not None else None,
        prompt=cfg.get("prompt"), max_length=int(cfg.eval.max_length), device=str(device),
        tracking_uri=uri)
    model.autocast_dtype = autocast_dtype(cfg.precision, device)
    evaluators = {key: registry().build("evaluator", ev_cfg)
                  for key, ev_cfg in (cfg.eval.get("evaluators") or {}).items()}
    if not evaluators:
        from clse.errors import ConfigError

        raise ConfigError("no evaluators selected: pass e.g. eval=[xsim,tatoeba,mexa]")

    tracker = Tracker(enabled=bool(cfg.tracking.enabled), uri=uri)
    source = source_run_id(str(cfg.model), uri) if cfg.tracking.enabled else None
    if cfg.tracking.attach and source is not None:
        tracker.attach(source)
        log.info("logging into the training run %s", source)
    else:
        tags = {"clse.job": "eval", "clse.model": str(cfg.model), "clse.run_dir": str(run_dir),
                "clse.evaluators": ",".join(evaluators)}
        if source is not None:
            tags["clse.source_run"] = source
        tracker.start(experiment=cfg.tracking.experiment, run_name=cfg.run_name, config=cfg,
                      tags=tags)
    with tracker:
        start = time.perf_counter()
        metrics, info = run_evaluators(model, evaluators, str(cfg.split), out_dir=run_dir)
        results = {"model": describe(model), "split": str(cfg.split), "metrics": metrics,
                   "evaluators": {key: {**info[key], "config": OmegaConf.to_container(
                       cfg.eval.evaluators[key], resolve=True)} for key in evaluators},
                   "seconds": round(time.perf_counter() - start, 2), "mlflow_run": tracker.run_id,
                   "source_run": source}
        output = Path(cfg.output) if cfg.output else run_dir / "results.json"
        dump(results, output)
        tracker.log_metrics(metrics, step=0)
        tracker.log_artifact(output)
        for key in evaluators:
            if info[key]["artifacts"]:
                tracker.log_artifacts(run_dir / key, f"eval/{key}")
    log.info("results: %s", output)
    return results


def summary(results: dict[str, Any]) -> str:
    """One line: the averaged metrics (``.../avg`` and other top-level figures)."""
    keep = {k: round(v, 3) for k, v in results["metrics"].items() if k.endswith("/avg")}
    return json.dumps(keep or {k: round(v, 3) for k, v in list(results["metrics"].items())[:8]})
