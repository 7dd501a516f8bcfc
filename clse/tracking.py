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

Store outages. :meth:`Tracker.start` fails fast when the store cannot be reached. After that a
failing log call never stops training: its records (metrics with their step and timestamp, tags,
artifacts, the run's final status) are held in memory and appended to a JSON-lines spool file,
``<spool_dir>/mlflow_spool-<run_id>.jsonl``; one warning is logged per outage, and the store is
tried again at most every ``retry_every`` seconds. The first call that gets through sends the held
records first, in order, and deletes the spool file. When the store is still down at
:meth:`Tracker.end`, the spool file stays and one error message says where it is;
:func:`replay_spool` sends it later.

Concurrent jobs on one sqlite file (a sweep): each process opens the store under an exclusive
``flock`` on ``<db>.lock``, so that jobs starting together on a new database do not race MLflow's
table creation (which fails with ``duplicate column name`` otherwise).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import contextmanager, nullcontext
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
FAILURE_TAG = "clse.failure_reason"  # why a run FAILED (or was KILLED): "ValueError: diverged"
MAX_REASON = 1000  # characters of the failure reason kept in the tag

RETRY_EVERY = 30.0  # seconds between two tries of a store that is down
MAX_BUFFER = 100_000  # records held in memory during an outage; beyond, the spool file alone
SPOOL_VERSION = 1
SPOOL_DIR = "mlflow_spool"  # under the cwd, when the Tracker is given no spool_dir
LOCK_TIMEOUT = 300.0  # seconds to wait for another job to finish creating a sqlite schema

# MLflow's own HTTP defaults (7 retries with exponential backoff, 120 s timeout) can hold one log
# call for many minutes when a server vanishes. We keep the records ourselves, so normal calls get
# a few quick retries (a value the user set in the environment wins), and a try while the store
# is known to be down gets none.
LOG_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

# A record is a tuple (kind, *fields); in a spool file, one JSON object per line with these keys.
RECORD_FIELDS = {
    "metric": ("key", "value", "timestamp", "step"),
    "tag": ("key", "value"),
    "artifact": ("path", "artifact_path", "dir"),  # a local file or folder (absolute path)
    "text": ("name", "text"),  # a small text artifact kept inline (the temp file is gone)
    "end": ("status", "end_time"),  # the run's final status
}
Record = tuple

_monotonic = time.monotonic  # module-level so that tests can move the clock

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
        client = self._connect(self.uri)
        return client, self._experiment_id(client, self.uri, experiment)

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
    def _connect(uri: str) -> Any:
        """An MlflowClient on ``uri`` that has answered one request, or a ClseError."""
        db = _sqlite_path(uri)
        lock: Any = nullcontext()
        if db is not None:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ClseError(f"cannot create the MLflow database folder for {uri}: {e}"
                                ) from None
            # MLflow creates the tables of a new database without a lock: concurrent first
            # connections (a sweep's jobs) fail with "duplicate column name". One at a time.
            lock = _file_lock(db.with_name(db.name + ".lock"), LOCK_TIMEOUT)
        from mlflow.tracking import MlflowClient

        with lock:
            if db is not None:
                _probe_sqlite(db, uri)
            try:
                # Fail fast on a dead server: no retries, a short timeout, for this probe only.
                with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2"):
                    client = MlflowClient(tracking_uri=uri)
                    client.search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001 - anything MLflow raises while connecting
                hint = ""
                if uri.startswith(("http://", "https://")):
                    hint = (" Is the server running (e.g. `mlflow server --host 127.0.0.1 --port"
                            " ...`)? Or unset MLFLOW_TRACKING_URI to use a local sqlite store, or"
                            " set tracking.enabled=false.")
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


class _Undelivered(Exception):
    """A send stopped at a failure that a later try may get past; the first ``done`` records
    were delivered."""

    def __init__(self, done: int, cause: BaseException):
        super().__init__(_short(cause))
        self.done, self.cause = done, cause


class _Outbox:
    """Sends one run's records; while the store is down, holds them and tries again now and then.

    Held records are kept in memory (at most ``max_buffer``) and appended to the spool file as
    they come, so that a job killed during an outage still leaves them on disk. Once memory is
    full, the spool file is the only complete copy and is read back when the store returns.
    """

    def __init__(self, client: Any, run_id: str, uri: str, spool_dir: Path, retry_every: float,
                 max_buffer: int):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.spool_dir, self.retry_every, self.max_buffer = spool_dir, retry_every, max_buffer
        self.held: list[Record] = []
        self.unsent = 0  # records of this outage not delivered yet (memory, spool, or lost)
        self.lost = 0  # records neither in memory nor in the spool file (both were full/failing)
        self.file_only = False  # memory full: the spool file alone holds the records
        self.spool_path: Path | None = None  # this outage's spool file, once opened
        self._spool: Any = None  # its open handle
        self._spool_error: str | None = None  # why it could not be written
        self.down_since: float | None = None  # monotonic time of the outage's first failure
        self.next_try = 0.0

    def send(self, records: list[Record], force: bool = False) -> None:
        """Deliver ``records`` now, or hold them behind those held already (order is kept)."""
        if not records and self.down_since is None:
            return
        if self.down_since is not None:
            self._hold(records)
            if force or _monotonic() >= self.next_try:
                self._retry()
            return
        try:
            with _http_limits(self.uri, probe=False):
                _deliver(self.client, self.run_id, records)
        except _Undelivered as u:
            self.down_since = _monotonic()
            self.next_try = self.down_since + self.retry_every
            self._hold(records[u.done:])
            where = (f"in memory and in {self.spool_path}" if self._spool_error is None
                     else "in memory only")
            # once per outage: a long run must not print a warning per step
            log.warning("MLflow store %s failed while logging to run %s (%s). Training goes on: "
                        "metrics are kept %s and sent when the store answers again (tried every "
                        "%g s).", self.uri, self.run_id, _short(u.cause), where, self.retry_every)

    def close(self, final: list[Record]) -> None:
        """Send ``final`` (and anything held) with one last try; report what could not be sent."""
        self.send(final, force=True)
        if self.down_since is None:
            return
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        counts = _count(self._held_records())
        what = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items())
        if self._spool_error is None:
            log.error("MLflow store %s is still unreachable at the end of run %s: %s were not "
                      "sent. They are kept in %s. Once the store is back, send them with:\n"
                      "    %s", self.uri, self.run_id, what or "records", self.spool_path,
                      replay_command(self.spool_path))
        else:
            log.error("MLflow store %s is still unreachable at the end of run %s: %d records "
                      "(%s) were not sent and are lost: the spool file %s could not be written "
                      "(%s).", self.uri, self.run_id, self.unsent, what,
                      self.spool_path or self.spool_dir, self._spool_error)

    # -- during an outage

    def _retry(self) -> None:
        try:
            with _http_limits(self.uri, probe=True), _quiet_mlflow():
                _deliver(self.client, self.run_id, self._held_records())
        except _Undelivered as u:
            if not self.file_only:  # the spool keeps them: sending them again later is harmless
                del self.held[:u.done]
                self.unsent -= u.done
            self.next_try = _monotonic() + self.retry_every
            log.debug("MLflow store %s still down: %s", self.uri, _short(u.cause))
            return
        seconds = _monotonic() - self.down_since
        lost = f"; {self.lost} records could not be kept and are lost" if self.lost else ""
        log.warning("MLflow store %s answers again after %.0f s: sent the %d records held for run "
                    "%s%s.", self.uri, seconds, self.unsent - self.lost, self.run_id, lost)
        self._drop_spool()
        self.held, self.unsent, self.lost, self.file_only = [], 0, 0, False
        self.down_since = None

    def _held_records(self) -> Iterable[Record]:
        if not self.file_only:
            return list(self.held)
        if self._spool is not None:
            self._spool.flush()
        return self._spooled_records()

    def _spooled_records(self) -> Iterator[Record]:
        try:
            for _, record in _read_spool(self.spool_path):
                yield record
        except (OSError, ClseError) as e:  # deleted or damaged under us: never stop training
            log.error("cannot read back the MLflow spool file %s (%s): the records it holds "
                      "after this point are lost", self.spool_path, e)

    def _hold(self, records: list[Record]) -> None:
        if not records:
            return
        self.unsent += len(records)
        spooled = self._append(records)
        if self.file_only:
            self.lost += 0 if spooled else len(records)
            return
        room = self.max_buffer - len(self.held)
        if len(records) <= room:
            self.held.extend(records)
        elif spooled:  # memory is full: from now on the spool file alone holds the outage
            self.file_only = True
            self.held = []
            log.warning("MLflow store %s: more than %d records held; the rest are kept only in %s",
                        self.uri, self.max_buffer, self.spool_path)
        else:
            self.held.extend(records[:room])
            self.lost += len(records) - room

    def _append(self, records: list[Record]) -> bool:
        """Append to this outage's spool file (opened on first use); False if it cannot be."""
        if self._spool_error is not None:
            return False
        try:
            if self._spool is None:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                self.spool_path = _free_spool_path(self.spool_dir, self.run_id)
                self._spool = open(self.spool_path, "a", encoding="utf-8")
                self._spool.write(_spool_line({"kind": "run", "clse_spool": SPOOL_VERSION,
                                               "run_id": self.run_id, "uri": self.uri}))
            self._spool.writelines(_spool_line(_record_to_json(r)) for r in records)
            self._spool.flush()  # to the OS at each call: a killed job loses nothing written
            return True
        except OSError as e:
            self._spool_error = str(e)
            log.warning("cannot write the MLflow spool file %s (%s): held records stay in memory "
                        "only", self.spool_path or self.spool_dir, e)
            return False

    def _drop_spool(self) -> None:
        """The records of the spool file were all delivered: remove it."""
        if self._spool is not None:
            self._spool.close()
        if self.spool_path is not None:
            self.spool_path.unlink(missing_ok=True)
        self._spool, self.spool_path, self._spool_error = None, None, None


def _deliver(client: Any, run_id: str, records: Iterable[Record]) -> None:
    """Send ``records`` to the run in order; metrics and tags go in batches (``log_batch``).

    Raises:
        _Undelivered: at the first failure a retry could fix; ``done`` says how many records
            (a prefix) were delivered before it. A record the store rejects as invalid, or an
            artifact whose local file is gone, is dropped with a warning instead: retrying
            cannot help, and it must not block the records behind it.
    """
    from mlflow.entities import Metric, RunTag

    done = 0
    metrics: list[Record] = []
    tags: list[Record] = []

    def attempt(call, n: int) -> None:
        nonlocal done
        try:
            call()
        except Exception as e:  # noqa: BLE001 - any store/network error
            if not _permanent(e):
                raise _Undelivered(done, e) from e
            log.warning("MLflow run %s: dropped %d record(s) the store cannot take: %s", run_id, n,
                        _short(e))
        done += n

    def flush() -> None:
        if metrics or tags:
            ms = [Metric(*m[1:]) for m in metrics]
            ts = [RunTag(*t[1:]) for t in tags]
            attempt(lambda: client.log_batch(run_id, metrics=ms, tags=ts), len(ms) + len(ts))
            metrics.clear()
            tags.clear()

    for record in records:
        kind = record[0]
        if kind == "metric":
            metrics.append(record)
        elif kind == "tag":
            tags.append(record)
        else:
            flush()
            attempt(lambda: _deliver_one(client, run_id, record), 1)
        if len(tags) >= PARAMS_PER_BATCH or len(metrics) + len(tags) >= METRICS_PER_BATCH:
            flush()
    flush()


def _deliver_one(client: Any, run_id: str, record: Record) -> None:
    kind, *fields = record
    if kind == "artifact":
        path, artifact_path, is_dir = fields
        if not os.path.exists(path):
            raise FileNotFoundError(f"artifact {path} does not exist")
        fn = client.log_artifacts if is_dir else client.log_artifact
        fn(run_id, path, artifact_path)
    elif kind == "text":
        name, text = fields
        with tempfile.TemporaryDirectory(prefix="clse-mlflow-") as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            client.log_artifact(run_id, str(path))
    elif kind == "end":
        status, end_time = fields
        client.set_terminated(run_id, status, end_time)
    else:
        raise ValueError(f"unknown tracking record {kind!r}")


def _permanent(e: BaseException) -> bool:
    """Whether retrying ``e`` is pointless: the store rejected the data, or a local file is gone.

    Everything else (connection errors, 5xx, sqlite "database is locked" or "readonly", a run
    that is not found because the store was swapped) counts as an outage: the records are kept.
    """
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return True
    return getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE"


# ----------------------------------------------------------------------------- spool files


def replay_command(spool_path: str | Path) -> str:
    """The shell command that sends a spool file (printed when a run ends during an outage)."""
    return f"clse tracking replay {spool_path}"


def replay_spool(spool_path: str | Path, uri: str | None = None) -> dict[str, int]:
    """Send the records of a spool file to their run(s), in order, with their original steps
    and timestamps; the run's final status (if recorded) is set last.

    Args:
        spool_path: a ``mlflow_spool-<run_id>.jsonl`` file left by a run that ended during a
            store outage.
        uri: the store to send to; ``None`` means the one written in the file.

    Returns:
        How many records of each kind were sent (``{"metric": 1200, "tag": 1, "end": 1}``).
        The file is then renamed ``<name>.replayed``.

    Raises:
        ClseError: the file is missing or not a spool file, the store cannot be reached, the run
            is not in the store, or the store failed part-way (the file is left as it is; replay
            it again: MLflow drops metrics identical to ones already logged).
    """
    path = Path(spool_path)
    if not path.is_file():
        raise ClseError(f"no MLflow spool file at {path}")
    sent: Counter[str] = Counter()
    clients: dict[str, Any] = {}

    def counted(group: Iterable[tuple[dict, Record]]) -> Iterator[Record]:
        for _, record in group:
            yield record
            sent[record[0]] += 1

    runs = itertools.groupby(_read_spool(path), key=lambda hr: (hr[0]["run_id"],
                                                                uri or hr[0]["uri"]))
    for (run_id, run_uri), group in runs:
        if run_uri not in clients:
            clients[run_uri] = Tracker._connect(run_uri)
        client = clients[run_uri]
        try:
            client.get_run(run_id)
        except Exception as e:  # noqa: BLE001
            raise ClseError(f"MLflow run {run_id!r} of {path} not found in {run_uri}: "
                            f"{_short(e)}") from None
        try:
            _deliver(client, run_id, counted(group))
        except _Undelivered as u:
            raise ClseError(f"MLflow store {run_uri} failed while replaying {path} "
                            f"({_short(u.cause)}); the file is left as it is: replay it again "
                            f"later") from None
    path.rename(path.with_name(path.name + ".replayed"))
    return dict(sent)


def _free_spool_path(spool_dir: Path, run_id: str) -> Path:
    """``mlflow_spool-<run_id>.jsonl``, or ``-1``, ``-2``... when a spool file of an earlier
    tracker of this run is there (its records are not ours to delete once ours are sent)."""
    path = spool_dir / f"mlflow_spool-{run_id}.jsonl"
    n = 0
    while path.exists():
        n += 1
        path = spool_dir / f"mlflow_spool-{run_id}-{n}.jsonl"
    return path


def _spool_line(obj: dict) -> str:
    # NaN and inf stay as Python's json writes them (NaN, Infinity): a diverged loss is data too
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _record_to_json(record: Record) -> dict:
    kind, *fields = record
    return {"kind": kind, **dict(zip(RECORD_FIELDS[kind], fields))}


def _read_spool(path: Path) -> Iterator[tuple[dict, Record]]:
    """``(header, record)`` for each record line; a header line names the run that follows."""
    header = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:  # a job killed mid-write leaves a cut last line
                log.warning("%s:%d is not a JSON line (cut off?): skipped", path, n)
                continue
            kind = obj.get("kind")
            if kind == "run":
                if obj.get("clse_spool", 0) > SPOOL_VERSION:
                    raise ClseError(f"{path} is a newer spool format ({obj['clse_spool']}); "
                                    f"update clse")
                header = obj
            elif header is None or kind not in RECORD_FIELDS:
                raise ClseError(f"{path}:{n} is not a clse MLflow spool record")
            else:
                yield header, (kind, *(obj[f] for f in RECORD_FIELDS[kind]))


def _count(records: Iterable[Record]) -> dict[str, int]:
    names = {"metric": "metric", "tag": "tag", "artifact": "artifact", "text": "artifact",
             "end": "run status"}
    counts: Counter[str] = Counter(names[r[0]] for r in records)
    return dict(counts)


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
        con = sqlite3.connect(db, timeout=30)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):  # a database, busy with another job's write
            return
        raise ClseError(f"cannot open the MLflow sqlite database {db} ({uri}): {e}") from None
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


def failure_reason(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, cut to fit the ``clse.failure_reason`` tag."""
    text = str(exc).strip()
    return _cut(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, MAX_REASON)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed); released when the block ends or
    the process dies. Without flock (Windows) or a writable folder, no lock: such a folder
    cannot hold a new database anyway."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        deadline = _monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _monotonic() > deadline:
                    raise ClseError(f"waited {timeout:.0f} s for the lock {path}: another job "
                                    f"holds it (a stuck process?)") from None
                time.sleep(0.05 + 0.1 * random.random())  # jitter: waiters do not wake together
            except OSError:  # a file system without flock (some NFS): go on unlocked
                break
        yield
    finally:
        os.close(fd)


@contextmanager
def _http_limits(uri: str, probe: bool) -> Iterator[None]:
    """Bounded MLflow HTTP retries/timeout for one call to a server (see LOG_HTTP)."""
    if not uri.startswith(("http://", "https://", "databricks")):
        yield
        return
    limits = PROBE_HTTP if probe else {k: v for k, v in LOG_HTTP.items() if k not in os.environ}
    with _env(**limits):
        yield


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's own logging (its sqlite layer logs a traceback per failed call) while we
    try a store that is known to be down: the outage was reported once already."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
