"""The MLflow store: where it is, opening it (fast, with a clear error), and the process
environment around the calls made to it.

Concurrent jobs on one sqlite file (a sweep): each process opens the store under an exclusive
``flock`` on ``<db>.lock`` (:func:`file_lock`), so that jobs starting together on a new database
do not race MLflow's table creation (which fails with ``duplicate column name`` otherwise).
"""

from __future__ import annotations

import logging
import os
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from clse.errors import ClseError

LOCK_TIMEOUT = 300.0  # seconds to wait for another job to finish creating a sqlite schema


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<absolute cwd>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def connect(uri: str) -> Any:
    """An MlflowClient on ``uri`` that has answered one request, or a ClseError."""
    db = _sqlite_path(uri)
    lock: Any = nullcontext()
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ClseError(f"cannot create the MLflow database folder for {uri}: {e}") from None
        # MLflow creates the tables of a new database without a lock: concurrent first
        # connections (a sweep's jobs) fail with "duplicate column name". One at a time.
        lock = file_lock(db.with_name(db.name + ".lock"), LOCK_TIMEOUT)
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


@contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
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
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClseError(f"waited {timeout:.0f} s for the lock {path}: another job "
                                    f"holds it (a stuck process?)") from None
                time.sleep(0.05 + 0.1 * random.random())  # jitter: waiters do not wake together
            except OSError:  # a file system without flock (some NFS): go on unlocked
                break
        yield
    finally:
        os.close(fd)


# MLflow's own HTTP defaults (7 retries with exponential backoff, 120 s timeout) can hold one log
# call for many minutes when a server vanishes. We keep the records ourselves, so normal calls get
# a few quick retries (a value the user set in the environment wins), and a try while the store
# is known to be down gets none.
LOG_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


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


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]
