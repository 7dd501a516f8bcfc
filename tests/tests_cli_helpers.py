"""The `clse` command in a subprocess, and small configs for end-to-end runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TINY = [
    "quickstart=none", "encoder.vocab_size=400", "encoder.tokenizer_sample=4000", "objective.head_layers=1",
    "data.batch_size=8", "data.max_length=32", "trainer.steps=6", "trainer.log_every=2",
    "trainer.checkpoint_every=3", "progress=false",
]
SMALL_EVAL = [
    "eval.evaluators.xsim.source=bundled", "eval.evaluators.xsim.max_sentences=60",
    "eval.evaluators.xsim.languages=[deu_Latn,fra_Latn]",
]


def clse(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLSE_LOG_LEVEL": "WARNING", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    if env and "MLFLOW_TRACKING_URI" in env:
        full_env["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    return subprocess.run([sys.executable, "-m", "clse.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)
