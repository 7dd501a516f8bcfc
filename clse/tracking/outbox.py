"""Store outages: a run's records held while the store is down, the spool file that keeps them
on disk, and :func:`replay_spool`, which sends a spool file later.

After :meth:`Tracker.start <clse.tracking.Tracker.start>` a failing log call never stops training:
its records (metrics with their step and timestamp, tags, artifacts, the run's final status) are
held in memory and appended to a JSON-lines spool file, ``<spool_dir>/mlflow_spool-<run_id>.jsonl``;
one warning is logged per outage, and the store is tried again at most every ``retry_every``
seconds. The first call that gets through sends the held records first, in order, and deletes the
spool file. When the store is still down at the end of the run, the spool file stays and one error
message says where it is.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Iterator

from clse.errors import ClseError
from clse.tracking.store import _http_limits, _quiet_mlflow, _short, connect

log = logging.getLogger(__name__)

PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH
SPOOL_VERSION = 1

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
            clients[run_uri] = connect(run_uri)
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
