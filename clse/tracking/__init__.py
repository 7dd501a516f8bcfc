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

Modules, each importing only those listed after it:

- :mod:`clse.tracking.tracker`: :class:`Tracker` (one run), :func:`flatten`,
  :func:`sanitize_name`, :func:`failure_reason`;
- :mod:`clse.tracking.outbox`: outages: records held and spooled, :func:`replay_spool`;
- :mod:`clse.tracking.store`: where the store is and opening it (:func:`default_tracking_uri`,
  the sqlite lock :func:`~clse.tracking.store.file_lock`, bounded HTTP retries).
"""

from __future__ import annotations

from clse.tracking.outbox import replay_command, replay_spool
from clse.tracking.store import default_tracking_uri
from clse.tracking.tracker import (
    FAILURE_TAG,
    PARENT_TAG,
    Tracker,
    failure_reason,
    flatten,
    sanitize_name,
)

__all__ = [
    "FAILURE_TAG",
    "PARENT_TAG",
    "Tracker",
    "default_tracking_uri",
    "failure_reason",
    "flatten",
    "replay_command",
    "replay_spool",
    "sanitize_name",
]
