"""Ablation grids: which cell a run is, its MLflow parent run, and skipping finished cells.

A *grid* is an experiment config with ``grid.table`` set (``experiment=table11``) whose rows are
the ``row`` config group (``configs/row/table11/*.yaml``) and whose sweep is
``hydra.sweeper.params``. One training run of a row with one seed is a *cell*.

* **Identity.** A cell is ``(config hash, seed)``. The hash covers the composed training config
  before interpolation (so ``${clse_data:...}`` paths hash the same on every machine), minus what
  does not change the result: the seed (kept apart), the ``grid`` labels, tracking, progress bars,
  the run name, threads, the logging interval and resume/stop switches. Rows shared by two tables
  (Table 5's rows are Table 11's ④–⑥) therefore hash the same and run once.
* **Skipping.** Before training, the MLflow experiment is searched for a FINISHED run with the
  cell's hash and seed: if there is one the cell is skipped (``grid.rerun=true`` trains it again).
  An unfinished run of the cell (killed, failed) whose folder holds an intact checkpoint is resumed
  from it; so rerunning an interrupted sweep trains only its missing cells.
* **Parent run.** Every cell is a child of one MLflow run per grid (``grid.table``) and
  experiment, created by the first cell; reruns and later seeds attach to the same parent, so the
  MLflow UI shows the whole grid under it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

# Keys that do not change what a cell computes (dotted; a section name drops the whole section).
NOT_HASHED = ("seed", "grid", "tracking", "progress", "run_name", "hydra", "trainer.resume",
              "trainer.threads", "trainer.log_every", "trainer.stop_after")
# Keys added after grids had run, with the values that compute what runs made before the key
# existed did: while a key holds one of them it is left out of the hash, so those runs keep their
# identity (their cells are still found, and skipped). Compared after resolving the key.
ADDED_LATER: dict[str, tuple] = {
    "encoder.prompts": (None,),  # a text prefix for every sentence (none before)
    "encoder.prompt": (None,),
    "encoder.freeze": ([],),  # frozen encoder parts (none before)
    "encoder.vocab_from": (None,),  # vocabulary trimming (none before)
    "eval.evaluators.xsim.groups": ({},),  # per-group means (none before)
    "eval.evaluators.xsimpp_generated.groups": ({},),
    # MEXMA: the MLM loss always trained the tied input embeddings before. Unset (null) equals that
    # unless token_grads=false: such a row must set it (the grid rows do, through the budget)
    "objective.tied_grads": (True, None),
    "budget.tied_grads": (True,),
}

TAG_TABLE = "clse.grid.table"
TAG_ROW = "clse.grid.row"
TAG_HASH = "clse.grid.hash"
TAG_SEED = "clse.grid.seed"
TAG_PARENT_OF = "clse.grid.parent_of"  # on a grid's parent run: the grid's name


@dataclass(frozen=True)
class Cell:
    table: str
    row: str
    label: str
    seed: int
    hash: str

    def __str__(self) -> str:
        return f"{self.table}/{self.row} seed {self.seed}"

    def tags(self) -> dict[str, str]:
        return {TAG_TABLE: self.table, TAG_ROW: self.row, TAG_HASH: self.hash,
                TAG_SEED: str(self.seed)}


def _drop(data: dict, key: str) -> None:
    """Remove the dotted ``key`` from a nested dict, if present."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits identifying what a run computes, seed excluded (see the module docstring)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    for key, neutral in ADDED_LATER.items():
        try:
            value = OmegaConf.select(cfg, key, default="<absent>")
        except Exception:  # noqa: BLE001 - an unresolvable interpolation: keep the key hashed
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if any(value == n and type(value) is type(n) for n in neutral):
            _drop(data, key)
    for key in NOT_HASHED:
        _drop(data, key)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cell_of(cfg: DictConfig) -> Cell | None:
    """The grid cell a training config is, or None when it is not part of a grid."""
    grid = cfg.get("grid")
    if not grid or not grid.get("table"):
        return None
    row = grid.get("row") or "default"
    return Cell(table=str(grid.table), row=str(row), label=str(grid.get("label") or row),
                seed=int(cfg.seed), hash=config_hash(cfg))


@dataclass
class Plan:
    """What to do with a cell: skip it (a finished run exists), resume it, or train it."""
    finished: Any = None  # the FINISHED mlflow Run of this cell, if any
    resume_dir: str | None = None  # an unfinished run's folder with an intact checkpoint
    parent_run_id: str | None = None


def cell_runs(client: Any, experiment_id: str, cell_hash: str, seed: int | None = None) -> list:
    """Runs of ``experiment_id`` tagged with ``cell_hash`` (and ``seed``), newest first."""
    query = f"tags.`{TAG_HASH}` = '{cell_hash}'"
    if seed is not None:
        query += f" and tags.`{TAG_SEED}` = '{seed}'"
    return search_runs(client, experiment_id, query)


def plan_cell(client: Any, experiment_id: str, cell: Cell, uri: str, title: str | None = None,
              rerun: bool = False) -> Plan:
    """Look the cell up in the store: skip, resume or train; and its grid's parent run."""
    from clse.train.checkpoint import find_resumable

    plan = Plan()
    for run in cell_runs(client, experiment_id, cell.hash, cell.seed):
        if run.info.status == "FINISHED":
            if not rerun and plan.finished is None:
                plan.finished = run
        elif plan.resume_dir is None and run.info.status in ("RUNNING", "FAILED", "KILLED"):
            folder = run.data.tags.get("clse.run_dir")
            if folder and Path(folder).exists():
                try:
                    find_resumable(folder)
                except Exception:  # noqa: BLE001 - no intact checkpoint there: start afresh
                    continue
                plan.resume_dir = folder
    if plan.finished is None:
        plan.parent_run_id = parent_run(client, experiment_id, cell.table, uri, title)
    return plan


def parent_run(client: Any, experiment_id: str, table: str, uri: str,
               title: str | None = None) -> str:
    """The id of the grid's parent run in this experiment, created (once) if missing.

    Concurrent cells (a parallel launcher) serialise on a lock file; on several machines
    without a shared temp folder two parents may appear, and every later cell uses the oldest.
    """
    from clse.tracking.store import file_lock

    key = hashlib.sha256(f"{uri}|{experiment_id}|{table}".encode()).hexdigest()[:16]
    with file_lock(Path(tempfile.gettempdir()) / f"clse-grid-{key}.lock", timeout=120):
        found = search_runs(client, experiment_id, f"tags.`{TAG_PARENT_OF}` = '{table}'",
                        order=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        tags = {TAG_PARENT_OF: table, TAG_TABLE: table,
                "mlflow.note.content": (f"{title or table}: one child run per cell (row x seed); "
                                        f"`clse report {table}` turns them into the table.")}
        run = client.create_run(experiment_id, run_name=f"grid:{table}", tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")  # a container: its children run
        return run.info.run_id


def search_runs(client: Any, experiment_id: str, query: str, order: list[str] | None = None) -> list:
    """Every run of the experiment matching an MLflow filter string (all pages), newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000,
                                  order_by=order or ["attributes.start_time DESC"],
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def import_records(records: list[dict], uri: str | None = None,
                   experiment: str | None = None) -> dict[str, int]:
    """Recreate exported runs (``clse report --export`` records) in a tracking store, so a grid
    continued on another machine skips the cells they hold and reports them with the new ones.

    Each run keeps its params, final metric values, clse tags, status and times, goes under the
    grid's parent run in ``experiment`` (default: the run's own ``tracking.experiment`` param)
    and is tagged ``clse.imported_from`` with its original id; importing twice adds nothing.
    """
    from mlflow.entities import Metric, Param, RunTag

    from clse.tracking import PARENT_TAG, Tracker, sanitize_name

    counts = {"imported": 0, "already there": 0}
    stores: dict[str, tuple[Any, str]] = {}
    for rec in records:
        name = experiment or rec["params"].get("tracking.experiment") or "clse"
        if name not in stores:
            tracker = Tracker(uri=uri)
            stores[name] = tracker.store(name)
            uri = tracker.uri
        client, experiment_id = stores[name]
        if search_runs(client, experiment_id, f"tags.`clse.imported_from` = '{rec['run_id']}'"):
            counts["already there"] += 1
            continue
        tags = {**rec["tags"], "clse.imported_from": rec["run_id"]}
        if rec["table"]:
            tags[PARENT_TAG] = parent_run(client, experiment_id, rec["table"], uri)
        run = client.create_run(experiment_id, run_name=rec["run_name"] or None,
                                start_time=int(rec["start_time"]) or None, tags=tags)
        run_id, when = run.info.run_id, int(rec["end_time"] or rec["start_time"]) or None
        params = [Param(sanitize_name(k), str(v)) for k, v in rec["params"].items()]
        metrics = [Metric(sanitize_name(k), float(v), when or 0, 0)
                   for k, v in rec["metrics"].items()]
        for i in range(0, max(len(params), len(metrics)), 100):
            client.log_batch(run_id, params=params[i:i + 100], metrics=metrics[i:i + 100],
                             tags=[] if i else [RunTag("clse.import_note", "final values only")])
        client.set_terminated(run_id, rec["status"] or "FINISHED", end_time=when)
        counts["imported"] += 1
    return counts
