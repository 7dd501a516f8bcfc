"""SLURM through hydra's submitit launcher: the launcher config composes, and a task's SLURM
variables become torch.distributed's."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'clse[slurm]'")


def test_launcher_config_composes():
    from hydra import compose, initialize_config_module

    from clse.config import setup

    setup()
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["quickstart=none", "hydra/launcher=slurm", "hydra.launcher.nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == launcher.gpus_per_node == 8


def test_slurm_task_variables_become_torch_distributed_ones(monkeypatch):
    from clse import distributed

    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "11", "SLURM_NTASKS": "16",
             "SLURM_LOCALID": "3", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # registered with monkeypatch so the test restores them
        monkeypatch.delenv(key)
    assert distributed.slurm_to_torch_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("11", "16", "3")
    assert os.environ["MASTER_ADDR"] == "gpu07"
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    assert distributed.launched() and distributed.env_rank() == 11
    assert not distributed.slurm_to_torch_env()  # already set: left alone


def test_a_single_task_job_is_not_distributed(monkeypatch):
    from clse import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not distributed.slurm_to_torch_env() and not distributed.launched()
