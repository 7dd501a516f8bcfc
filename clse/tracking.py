"""A thin MLflow layer: one run per training/eval job, params from the resolved config.

Usage (rank 0 only; other ranks pass ``enabled=False`` and every call is a no-op)::

    with Tracker().start("table5", run_name="mexma-koleo", config=cfg) as tracker:
        tracker.log_metrics({"train/loss": 1.2}, step=10)
        tracker.log_artifact("report.md")

The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` (works offline;
view it with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``). Experiments created in a
sqlite store keep their artifacts beside the database, in ``mlartifacts/<experiment>/``.

``mlflow`` is imported only when a run starts (the import takes seconds). We talk to MLflow through
an ``MlflowClient`` and never touch its global "active run", so several trackers (a sweep's parent
and children) can coexist in one process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from clse.errors import ClseError

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH
STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_TAG = "mlflow.parentRunId"

# MLflow accepts alphanumerics, "_", "-", ".", " ", ":" and "/" in param and metric names
# (mlflow.utils.validation.validate_param_and_metric_name), and the name must be a normalised
# relative path (no "//", no leading "/", no "." or ".." segments).
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<absolute cwd>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into ``{"a.b.c": "value"}`` (values as strings).

    A ``DictConfig`` is resolved first. Lists of scalars become one JSON value; lists that hold
    mappings are flattened with their index (``a.0.b``).
    """
    d = _to_container(d)
    out: dict[str, str] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            if not node and key:
                out[key] = "{}"
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (list, tuple)) and any(isinstance(x, (Mapping, list, tuple))
                                                     for x in node):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}" if key else str(i))
        elif isinstance(node, (list, tuple)):
            out[key] = json.dumps(list(node), ensure_ascii=False, default=str)
        else:
            out[key] = str(node)

    walk(d, prefix)
    return out


def sanitize_name(name: str) -> str:
    """A param/metric name MLflow accepts: bad characters -> ``_``, ``/`` kept as a separator."""
    name = _BAD_NAME_CHARS.sub("_", str(name))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    parts = ["_" if p == ".." else p for p in parts]
    return "/".join(parts)[:MAX_KEY] or "_"


class Tracker:
    """One MLflow run. Use :meth:`start` (returns ``self``) as a context manager.

    Args:
        uri: the tracking URI; ``None`` means :func:`default_tracking_uri` at :meth:`start`.
        enabled: ``False`` turns every method into a no-op (non-zero ranks,
            ``tracking.enabled=false``).
    """

    def __init__(self, uri: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.uri = uri
        self._client: Any = None
        self._run_id: str | None = None
        self._ended = False
        self._warned = False
        self._attached = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def active(self) -> bool:
        return self._run_id is not None and not self._ended

    def start(self, experiment: str, run_name: str | None = None, config: Any = None,
              tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> "Tracker":
        """Create/get ``experiment``, start a run (under ``parent_run_id`` if given), log config.

        Raises:
            ClseError: the tracking store cannot be reached or opened (named in the message).
        """
        if not self.enabled:
            return self
        if self._run_id is not None:
            raise RuntimeError("Tracker.start called twice; use one Tracker per run")
        self.uri = self.uri or default_tracking_uri()
        client = self._connect(self.uri)
        exp_id = self._experiment_id(client, self.uri, experiment)

        run_tags = {str(k): str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items()}
        if parent_run_id:
            try:
                client.get_run(parent_run_id)
            except Exception as e:
                raise ClseError(f"parent MLflow run {parent_run_id!r} not found in {self.uri}: "
                                f"{_short(e)}") from None
            run_tags[PARENT_TAG] = parent_run_id
        run_tags = _with_context_tags(run_tags)
        run = client.create_run(exp_id, run_name=run_name, tags=run_tags)
        self._client, self._run_id, self._ended = client, run.info.run_id, False

        if config is not None:
            try:
                self.log_params(flatten(config))
                self._log_text(_to_yaml(config), "config.yaml")
            except BaseException:
                self.end("FAILED")  # not yet inside a `with`: do not leave the run RUNNING
                raise
        return self

    def attach(self, run_id: str) -> "Tracker":
        """Log into an existing run (e.g. evaluation results into their training run).

        The run keeps its status: leaving the ``with`` block does not end it.
        """
        if not self.enabled:
            return self
        self.uri = self.uri or default_tracking_uri()
        client = self._connect(self.uri)
        try:
            client.get_run(run_id)
        except Exception as e:
            raise ClseError(f"MLflow run {run_id!r} not found in {self.uri}: {_short(e)}") from None
        self._client, self._run_id, self._ended, self._attached = client, run_id, False, True
        return self

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED`` (idempotent)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not self.active:
            return
        self._ended = True
        if not self._attached:  # an attached run belongs to its own job
            self._safe(self._client.set_terminated, self._run_id, status)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")
        return False

    # ------------------------------------------------------------------ logging

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (names sanitised, values cut at 6000 characters), 100 per request."""
        if not self.active:
            return
        from mlflow.entities import Param

        clean = {sanitize_name(k): str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}
        items = [Param(k, v) for k, v in clean.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            # Params are part of the run's identity: a failure here is not swallowed.
            self._client.log_batch(self._run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalars at ``step``; names keep ``/`` (``train/loss``), other bad chars -> ``_``."""
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(sanitize_name(k), float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self._safe(self._client.log_batch, self._run_id, metrics=items[i:i + METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._safe(self._client.log_batch, self._run_id, tags=items[i:i + PARAMS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._safe(self._client.log_artifact, self._run_id, str(path), artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._safe(self._client.log_artifacts, self._run_id, str(local_dir), artifact_path)

    # ------------------------------------------------------------------ internals

    def _safe(self, fn, *args, **kwargs) -> None:
        """Run a logging call; a tracking hiccup warns instead of killing a long training run."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any store/network error
            log.warning("MLflow %s failed for run %s at %s: %s", getattr(fn, "__name__", fn),
                        self._run_id, self.uri, _short(e))

    def _log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory(prefix="clse-mlflow-") as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            self.log_artifact(path)

    @staticmethod
    def _connect(uri: str) -> Any:
        """An MlflowClient on ``uri`` that has answered one request, or a ClseError."""
        db = _sqlite_path(uri)
        if db is not None:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ClseError(f"cannot create the MLflow database folder for {uri}: {e}"
                                ) from None
            _probe_sqlite(db, uri)
        from mlflow.tracking import MlflowClient

        try:
            # Fail fast on a dead server: no retries, a short timeout, for this one probe only.
            with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2"):
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - anything MLflow raises while connecting
            hint = ""
            if uri.startswith(("http://", "https://")):
                hint = (" Is the server running (e.g. `mlflow server --host 127.0.0.1 --port ...`)?"
                        " Or unset MLFLOW_TRACKING_URI to use a local sqlite store, or set"
                        " tracking.enabled=false.")
            elif uri.startswith("file:") or "://" not in uri:
                hint = (" MLflow 3 refuses the plain file store unless"
                        " MLFLOW_ALLOW_FILE_STORE=true; prefer sqlite:///mlflow.db.")
            raise ClseError(f"cannot reach the MLflow tracking store {uri}: {_short(e)}.{hint}"
                            ) from None
        return client

    @staticmethod
    def _experiment_id(client: Any, uri: str, name: str) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            db = _sqlite_path(uri)
            location = None
            if db is not None:  # artifacts beside the database, not in ./mlruns of whatever cwd
                location = (db.parent / "mlartifacts" / _slug(name)).resolve().as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except Exception:  # noqa: BLE001 - a concurrent job (sweep) created it first
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise ClseError(f"MLflow experiment {name!r} is deleted in {uri}: "
                            f"restore it (`mlflow experiments restore --experiment-id "
                            f"{exp.experiment_id}`) or use another experiment name")
        return exp.experiment_id


def _to_container(cfg: Any) -> Any:
    """Plain dicts/lists from a DictConfig (resolved when possible) or a mapping."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as e:  # noqa: BLE001 - e.g. ${hydra:...} outside a hydra app
            log.warning("logging the config unresolved (%s)", _short(e))
            return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def _to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    data = _to_container(cfg)
    try:
        return OmegaConf.to_yaml(OmegaConf.create(data))
    except Exception:  # noqa: BLE001 - values OmegaConf cannot hold
        return json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (None for other stores and in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _probe_sqlite(db: Path, uri: str) -> None:
    """Open the database once ourselves: MLflow retries a failing engine 10 times (~100 s)."""
    import sqlite3

    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise ClseError(f"cannot open the MLflow sqlite database {db} ({uri}): {e}") from None


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"


def _with_context_tags(tags: dict[str, str]) -> dict[str, str]:
    """Add what ``mlflow.start_run`` would (user, source file, git commit); user tags win."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return resolve_tags(tags)
    except Exception:  # noqa: BLE001 - internal API; the tags are a nicety
        return tags


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
