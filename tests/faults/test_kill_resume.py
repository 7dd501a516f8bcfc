"""Faults: a real ``clse train`` SIGKILLed and resumed (benchmarks/kill_resume.py, 3 kills), and
retention/deletion faults of the checkpoint folder (a corrupt newest checkpoint, a deletion cut
short by a kill, a used folder) on a tiny fake encoder.

Covered elsewhere, not repeated here: resume at a checkpoint boundary is bit-exact and
``find_resumable`` skips a truncated checkpoint (tests/train/test_train_loop.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clse.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


def kill_resume_module():
    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kill_resume", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_three_times_then_resumed_ends_bit_identical(tmp_path):
    """~60-90 s on 2 idle cores (5 clse starts of ~10 s each, the reference beside the rest)."""
    kr = kill_resume_module()
    lines: list[str] = []
    # kill 1: during the fresh run's 3rd checkpoint write, then the newest checkpoint's weights
    # are truncated; kill 2: at a random moment; kill 3: during a checkpoint write
    report = kr.run_kill_resume(tmp_path, kills=3, steps=6, seed=1,
                                plan=["write:3", "time", "write"], truncate_at={0},
                                parallel_reference=True, echo=lines.append)
    log = "\n".join(lines + kr.format_report(report))
    print(log)
    assert report.completed and report.params_identical, log
    assert report.survived == 3 == len(report.kills), log
    assert all(k.folder_ok for k in report.kills), log
    assert sum(k.landed.startswith("write") for k in report.kills) >= 1, log  # mid-write kills
    # the torn weights file: the resume skipped it (warning naming the file), used the one before
    first = report.kills[0]
    assert first.truncated and first.truncated.endswith("/encoder/model.safetensors"), log
    torn = int(first.truncated.split("/")[1].removeprefix("step_"))
    assert first.resume_ok and report.kills[1].expected_start == torn - 1, log
    assert "kills_survived=3/3" in log and "params_identical=true" in log


# ----------------------------------------------------------------------------- the folder
class TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def save_pretrained(self, path, safe_serialization=True):
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file({"w": self.w.detach().clone()}, str(Path(path) / "model.safetensors"))


class TinyTokenizer:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer.json").write_text("{}")


def save(ckpt_dir: Path, step: int, keep: int) -> Path:
    return ckpt.save_checkpoint(ckpt_dir, step=step, encoder=TinyEncoder(), tokenizer=TinyTokenizer(),
                                extra_module=None, optimizer_state={"step": step},
                                mask_generator=torch.Generator(), info={}, keep=keep)


def names(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir())


def test_retention_keeps_the_old_good_checkpoint_when_the_newest_is_corrupt(tmp_path, monkeypatch):
    """keep=1, and the checkpoint just written turns out corrupt (a torn file surfacing after the
    rename): pruning must not delete the older good one, and a resume falls back to it, warning
    about the file."""
    ckpt_dir = tmp_path / "checkpoints"
    save(ckpt_dir, 1, keep=1)
    real = ckpt._fsync_dir

    def tear_after_rename(path):
        real(path)
        weights = ckpt_dir / "step_00000002" / "encoder" / "model.safetensors"
        if Path(path) == ckpt_dir and weights.is_file():
            weights.write_bytes(weights.read_bytes()[:50])

    monkeypatch.setattr(ckpt, "_fsync_dir", tear_after_rename)
    save(ckpt_dir, 2, keep=1)
    assert names(ckpt_dir) == ["step_00000001", "step_00000002"]
    assert ckpt.verify(ckpt_dir / "step_00000001") is None
    with pytest.warns(UserWarning, match=r"step_00000002: encoder/model\.safetensors does not match"):
        assert ckpt.find_resumable(tmp_path).name == "step_00000001"
    monkeypatch.setattr(ckpt, "_fsync_dir", real)
    save(ckpt_dir, 3, keep=1)  # the next good one: now the old one may go (the broken one stays)
    assert names(ckpt_dir) == ["step_00000002", "step_00000003"]


class Killed(BaseException):
    """A SIGKILL stand-in: not an Exception, so ``ignore_errors`` does not swallow it."""


@pytest.mark.parametrize("case", ["prune", "rewrite"])
def test_a_deletion_cut_short_leaves_no_broken_step_folder(tmp_path, monkeypatch, case):
    """A kill while an old checkpoint is being deleted (retention, or the same step written again)
    must leave every ``step_*`` folder intact: the half-deleted one is a ``.trash-*`` leftover,
    removed at the next save."""
    ckpt_dir = tmp_path / "checkpoints"
    save(ckpt_dir, 1, keep=1)
    if case == "rewrite":
        save(ckpt_dir, 2, keep=2)
    real = ckpt.shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        path = Path(path)
        if path.parent == ckpt_dir and not path.name.startswith(".tmp-"):
            next(p for p in sorted(path.rglob("*")) if p.is_file()).unlink()  # one file gone
            raise Killed
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(Killed):
        save(ckpt_dir, 2, keep=1)  # prune: deletes step 1 / rewrite: replaces step 2
    monkeypatch.setattr(ckpt.shutil, "rmtree", real)
    steps = ckpt.list_checkpoints(ckpt_dir)
    assert steps and all(ckpt.verify(p) is None for p in steps), names(ckpt_dir)
    assert [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".trash-")]
    save(ckpt_dir, 3, keep=1)
    assert names(ckpt_dir) == ["step_00000003"]  # leftovers and old checkpoints gone


def test_a_new_run_in_a_used_folder_keeps_its_own_checkpoint(tmp_path):
    """Retention counts only checkpoints up to the one just written: later steps left by another
    run in the same folder (a run restarted, or resumed from an earlier step, with a fixed
    hydra.run.dir) neither push the new checkpoint out nor get deleted."""
    ckpt_dir = tmp_path / "checkpoints"
    save(ckpt_dir, 6, keep=1)
    save(ckpt_dir, 1, keep=1)
    assert names(ckpt_dir) == ["step_00000001", "step_00000006"]
    save(ckpt_dir, 2, keep=1)
    assert names(ckpt_dir) == ["step_00000002", "step_00000006"]
    assert ckpt.load_state(ckpt_dir / "step_00000002").optimizer == {"step": 2}
