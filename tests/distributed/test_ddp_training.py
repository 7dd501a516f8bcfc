"""`clse train` under torchrun (2 gloo processes on CPU): the same training as one process on the
global batch, rank 0 owning the run folder and the MLflow run, exact resume across ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.test_train_loop import FAST, compose_cfg, final_params

STEPS = ["trainer.steps=3", "trainer.checkpoint_every=3", "trainer.lr=1e-3", "seed=0"]
DUAL = ["objective=none", "alignment=contrastive", "regularizer=none", "pooling=mean",
        "encoder.hidden_dropout=0.0"]


def torchrun(cwd: Path, *overrides: str, uri: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CLSE_LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clse.cli", "train", *FAST, *overrides]
    if uri:
        cmd = [c for c in cmd if c != "tracking.enabled=false"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_ranks_train_like_one_process_on_the_global_batch(tmp_path):
    """Rank r takes rows [rB, (r+1)B) of the global batch; InfoNCE gathers negatives across
    ranks and DDP averages gradients: the weights follow the one-process run with batch 2B."""
    from clse.train.loop import train

    torchrun(tmp_path, *STEPS, *DUAL, "data.batch_size=4", "hydra.run.dir=ddp")
    train(compose_cfg(STEPS + DUAL + ["data.batch_size=8"]), tmp_path / "single")
    ddp, single = final_params(tmp_path / "ddp"), final_params(tmp_path / "single")
    assert ddp.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=2e-5, msg=key)
    # without the gathered negatives the ranks would train on B-row problems: a different model
    torchrun(tmp_path, *STEPS, *DUAL, "data.batch_size=4", "alignment.gather=false",
             "hydra.run.dir=local")
    local = final_params(tmp_path / "local")
    assert any(not torch.allclose(local[k], single[k], atol=1e-4) for k in single)


def test_rank0_owns_the_run_and_resume_is_exact(tmp_path):
    """MEXMA + gathered KoLeo on 2 ranks: one run folder, one MLflow run, and a run killed
    after step 2 and resumed (each rank its own RNG streams) ends bit-identical."""
    from mlflow.tracking import MlflowClient

    mexma = ["regularizer=koleo", "regularizer.gather=true", "trainer.checkpoint_every=2",
             "trainer.steps=4", "trainer.lr=1e-3"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torchrun(tmp_path, *mexma, "hydra.run.dir=full", uri=uri)
    torchrun(tmp_path, *mexma, "trainer.stop_after=2", "hydra.run.dir=killed")
    torchrun(tmp_path, *mexma, f"trainer.resume={tmp_path / 'killed'}", "hydra.run.dir=resumed")
    full, resumed = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key

    # rank 1's hydra files stayed out of the project; one MLflow run, tagged with the world size
    folders = {p.name for p in tmp_path.iterdir() if p.is_dir()} - {"mlartifacts"}
    assert folders == {"full", "killed", "resumed"}
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["clse.world_size"] == "2"
    assert "train/loss" in runs[0].data.metrics


def test_a_sweep_under_torchrun_is_refused(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    proc = subprocess.run([sys.executable, "-m", "clse.cli", "train", "-m", "quickstart=none", "seed=0,1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot run under torchrun" in proc.stderr


@pytest.mark.parametrize("world", [1, 2])
def test_gathered_koleo_query_rows(world):
    """koleo(full, query_rows) averaged over ranks = koleo of the whole batch (equal shards)."""
    from clse_plugins.koleo import koleo

    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    shard = 8 // world
    parts = [koleo(x, query_rows=slice(r * shard, (r + 1) * shard)) for r in range(world)]
    torch.testing.assert_close(torch.stack(parts).mean(), koleo(x))


def test_fsdp_trains_like_ddp_and_resumes(tmp_path):
    """trainer.strategy=fsdp (parameters, gradients and AdamW state sharded over 2 ranks) takes
    the same steps as DDP; its checkpoints hold the whole model and resume exactly."""
    common = [*DUAL, "trainer.steps=4", "trainer.checkpoint_every=2", "trainer.lr=1e-3",
              "data.batch_size=4"]
    torchrun(tmp_path, *common, "hydra.run.dir=ddp")
    torchrun(tmp_path, *common, "trainer.strategy=fsdp", "hydra.run.dir=fsdp")
    torchrun(tmp_path, *common, "trainer.strategy=fsdp", "trainer.stop_after=2",
             "hydra.run.dir=killed")
    torchrun(tmp_path, *common, "trainer.strategy=fsdp", f"trainer.resume={tmp_path / 'killed'}",
             "hydra.run.dir=resumed")
    import json

    last = sorted((tmp_path / "fsdp" / "checkpoints").iterdir())[-1]
    assert json.loads((last / "state.json").read_text())["strategy"] == "fsdp"
    ddp, fsdp = final_params(tmp_path / "ddp"), final_params(tmp_path / "fsdp")
    resumed = final_params(tmp_path / "resumed")
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-4, atol=2e-5, msg=key)
        assert torch.equal(fsdp[key], resumed[key]), key


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1 alone sees a NaN loss at step 2: both ranks stop there with the error (no hang)."""
    worker = Path(__file__).with_name("nonfinite_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(worker), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        text = (tmp_path / f"rank{rank}.txt").read_text()
        assert text.startswith("stopped: non-finite loss at step 2"), text
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints[-1] == "step_00000001"  # rank 0 wrote step 1 and nothing after
