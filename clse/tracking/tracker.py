"""One MLflow run per training/eval job (:class:`Tracker`), and the names and values MLflow
accepts: :func:`flatten` (a config as params), :func:`sanitize_name`, :func:`failure_reason`.

``mlflow`` is imported only when a run starts (the import takes seconds). We talk to MLflow through
an ``MlflowClient`` and never touch its global "active run", so several trackers (a sweep's parent
and children) can coexist in one process.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clse.errors import ClseError
from clse.tracking.outbox import PARAMS_PER_BATCH, Record, _Outbox
from clse.tracking.store import _short, _sqlite_path, connect, default_tracking_uri

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "clse.failure_reason"  # why a run FAILED (or was KILLED): "ValueError: diverged"
MAX_REASON = 1000  # characters of the failure reason kept in the tag

RETRY_EVERY = 30.0  # seconds between two tries of a store that is down
MAX_BUFFER = 100_000  # records held in memory during an outage; beyond, the spool file alone
SPOOL_DIR = "mlflow_spool"  # under the cwd, when the Tracker is given no spool_dir

# MLflow accepts alphanumerics, "_", "-", ".", " ", ":" and "/" in param and metric names
# (mlflow.utils.validation.validate_param_and_metric_name), and the name must be a normalised
# relative path (no "//", no leading "/", no "." or ".." segments).
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


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
        spool_dir: where records that the store could not take are written during an outage
            (``mlflow_spool-<run_id>.jsonl``, created only then). Pass the run folder; ``None``
            means ``<cwd>/mlflow_spool`` (resolved at :meth:`start`): a persistent place, unlike
            the temp folder, which a reboot or the end of a SLURM job may wipe.
        retry_every: seconds between two tries of a store that is down; calls in between only
            hold their records, so an outage costs training one failed request per interval.
        max_buffer: records held in memory during an outage; beyond, the spool file alone.
    """

    def __init__(self, uri: str | None = None, enabled: bool = True,
                 spool_dir: str | Path | None = None, retry_every: float = RETRY_EVERY,
                 max_buffer: int = MAX_BUFFER):
        self.enabled = enabled
        self.uri = uri
        self.spool_dir = spool_dir
        self.retry_every = float(retry_every)
        self.max_buffer = int(max_buffer)
        self._client: Any = None
        self._run_id: str | None = None
        self._ended = False
        self._attached = False
        self._outbox: _Outbox | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def active(self) -> bool:
        return self._run_id is not None and not self._ended

    @property
    def unsent(self) -> int:
        """Records the store has not received yet (0 unless the store is or was down)."""
        return self._outbox.unsent if self._outbox else 0

    @property
    def spool_path(self) -> Path | None:
        """The spool file holding the unsent records (``None`` when everything was sent)."""
        return self._outbox.spool_path if self._outbox and self._outbox.unsent else None

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
        client = connect(self.uri)
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
        self._bind(client, run.info.run_id, attached=False)

        if config is not None:
            try:
                self.log_params(flatten(config))
                self._log_text(_to_yaml(config), "config.yaml")
            except BaseException as e:
                # not yet inside a `with`: do not leave the run RUNNING
                self.end("FAILED", reason=failure_reason(e))
                raise
        return self

    def store(self, experiment: str) -> tuple[Any, str]:
        """``(MlflowClient, experiment id)`` of the store, the experiment created if missing: for
        lookups before a run starts (e.g. :mod:`clse.grid` skipping finished cells).

        Raises:
            ClseError: the tracking store cannot be reached or opened.
        """
        self.uri = self.uri or default_tracking_uri()
        client = connect(self.uri)
        return client, self._experiment_id(client, self.uri, experiment)

    def attach(self, run_id: str) -> "Tracker":
        """Log into an existing run (e.g. evaluation results into their training run).

        The run keeps its status: leaving the ``with`` block does not end it.
        """
        if not self.enabled:
            return self
        self.uri = self.uri or default_tracking_uri()
        client = connect(self.uri)
        try:
            client.get_run(run_id)
        except Exception as e:
            raise ClseError(f"MLflow run {run_id!r} not found in {self.uri}: {_short(e)}") from None
        self._bind(client, run_id, attached=True)
        return self

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED`` (idempotent).

        ``reason`` (why it failed) goes to the tag ``clse.failure_reason``, cut at 1000
        characters. Records held during an outage are sent first; if the store is still down,
        they stay in the spool file and one error message says where (see :func:`replay_spool`).
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not self.active:
            return
        self._ended = True
        final: list[Record] = []
        if not self._attached:  # an attached run belongs to its own job: its status stays
            if reason:
                final.append(("tag", FAILURE_TAG, _cut(str(reason), MAX_REASON)))
            final.append(("end", status, _now_ms()))
        self._outbox.close(final)

    def fail(self, reason: str | BaseException) -> None:
        """End the run ``FAILED`` with ``reason`` (a message, or the exception that stopped it)."""
        if isinstance(reason, BaseException):
            reason = failure_reason(reason)
        self.end("FAILED", reason=reason)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        else:  # the run's failure reason is the exception that left the block
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            self.end(status, reason=failure_reason(exc) if exc is not None else exc_type.__name__)
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
            # Params are part of the run's identity (and only logged at start, when the store has
            # just answered): a failure here is not held but raised.
            self._client.log_batch(self._run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalars at ``step``; names keep ``/`` (``train/loss``), other bad chars -> ``_``."""
        if not self.active or not metrics:
            return
        ts = _now_ms()  # taken now: a metric replayed after an outage keeps when it happened
        self._outbox.send([("metric", sanitize_name(k), float(v), ts, int(step))
                           for k, v in metrics.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        self._outbox.send([("tag", str(k), str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._outbox.send([("artifact", str(Path(path).resolve()), artifact_path, False)])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._outbox.send([("artifact", str(Path(local_dir).resolve()), artifact_path, True)])

    # ------------------------------------------------------------------ internals

    def _bind(self, client: Any, run_id: str, attached: bool) -> None:
        spool_dir = Path(self.spool_dir) if self.spool_dir is not None else Path.cwd() / SPOOL_DIR
        self._client, self._run_id, self._ended, self._attached = client, run_id, False, attached
        self._outbox = _Outbox(client, run_id, self.uri, spool_dir.resolve(),
                               self.retry_every, self.max_buffer)

    def _log_text(self, text: str, name: str) -> None:
        if self.active:
            self._outbox.send([("text", name, text)])

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


def failure_reason(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, cut to fit the ``clse.failure_reason`` tag."""
    text = str(exc).strip()
    return _cut(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, MAX_REASON)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _now_ms() -> int:
    return int(time.time() * 1000)


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


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"


def _with_context_tags(tags: dict[str, str]) -> dict[str, str]:
    """Add what ``mlflow.start_run`` would (user, source file, git commit); user tags win."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return resolve_tags(tags)
    except Exception:  # noqa: BLE001 - internal API; the tags are a nicety
        return tags
