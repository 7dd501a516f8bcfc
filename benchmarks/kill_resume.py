"""Kill and resume: SIGKILL a real ``clse train`` at random moments, resume it, compare the weights.

    python benchmarks/kill_resume.py --kills 20                       # MEXMA, 2 x kills + 6 steps
    python benchmarks/kill_resume.py --kills 5 --objective none       # dual encoder + InfoNCE
    python benchmarks/kill_resume.py --kills 5 --truncate 2           # also 2 torn weights files

What it does:

1. an uninterrupted *reference* run: ``python -m clse.cli train <tiny settings>
   trainer.checkpoint_every=1 trainer.steps=N hydra.run.dir=<work>/reference``;
2. the *killed* run, in one fixed folder ``<work>/killed`` (what a requeued job does: the same
   command, plus ``trainer.resume=<work>/killed`` once an intact checkpoint exists): start it, and
   SIGKILL its process group (``os.killpg``) at a moment drawn from a seeded RNG; check the
   checkpoints folder; start it again; ... ``--kills`` times; then let it finish;
3. compare the final parameters (the ``step_N`` checkpoint's ``encoder/model.safetensors`` and the
   ``module.*`` tensors of ``extra.safetensors``) with the reference's: bit-identical is expected
   on CPU (``trainer.deterministic=true``, the default).

Each kill is of one of two kinds, in an order shuffled by the RNG (``--write-share`` of them
``write``); the delays are drawn from the same RNG, seeded by ``--seed``:

* ``write``: wait until this process starts its j-th checkpoint write (a new ``.tmp-step_*``
  folder appears; j random), then kill after a random share (0-80%) of a typical write's
  duration; a write that ends sooner moves the aim to the next one, with half the delay;
* ``time``: kill at a uniform random time between 80% of the (measured) start-up time and the
  start-up plus the steps still to do per kill still to come (+ half a step), landing in
  start-up, a step, a write, or a deletion of an old checkpoint;
* whatever the kind, a process that starts writing the last step's checkpoint while kills
  remain is killed then (so that every requested kill happens before the run completes).

Where a kill *landed* is read from the folder, not from the intent: "during a checkpoint write"
means that a ``.tmp-step_*`` folder created by the killed process was still there after it died
("after manifest.json": the write was complete but not yet renamed into place); "in start-up"
means before the process logged where it resumes from (a fresh start: before its first write);
"while deleting" means that a ``.trash-step_*`` folder it was deleting was left; "in a step" is
the rest (data, forward/backward, the optimizer, verifying checkpoints for retention, ...).

After each kill the folder must hold: every ``step_*`` folder intact
(``clse.train.checkpoint.verify(path) is None``; except one this script truncated, until the run
rewrites it), leftovers only under ``.tmp-*`` / ``.trash-*`` names, and at least one intact
checkpoint once one ever existed (retention never leaves zero good
checkpoints). With ``--truncate K``, after K of the kills (where two intact checkpoints exist) the
newest checkpoint's ``encoder/model.safetensors`` is truncated to half (a torn file that surfaced
after a crash): the resume must skip it with a warning naming that file and use the previous one.

**A kill survived** when (a) the folder after it passed the checks above, (b) the next process
resumed from exactly the newest intact checkpoint of that folder (the step it logs in ``resuming
from <path> at step S``, cross-checked with the step of its first checkpoint write; with no
intact checkpoint it starts afresh, S = 0) and, after a truncation, warned about the truncated
file (a process killed before it tells is skipped: the one after it judges), and (c) the run eventually completed (exit status 0)
with parameters bit-identical to the reference's. (c) is common to all kills: a mismatch makes
every kill count as not survived. The script ends with ``kills_survived=K/N`` (N: kills made) and
``params_identical=true|false``, and exits 1 unless both are perfect.

Timings: each ``clse`` start costs ~10 s on 2 CPU cores (importing torch and transformers), so a
kill cycle (start, kill, folder check) is ~10-20 s and 20 kills take several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAST = [  # tests/train/test_train_loop.py's tiny settings
    "quickstart=none", "encoder.vocab_size=400", "encoder.tokenizer_sample=4000", "data.batch_size=8",
    "data.max_length=32", "eval=none", "trainer.export=false", "progress=false",
    "tracking.enabled=false",
]
OBJECTIVES = {  # --objective NAME -> overrides
    "mexma": ["objective.head_layers=1"],
    "none": ["objective=none", "alignment=contrastive"],
}
MANIFEST = "manifest.json"
RESUMED = re.compile(r"resuming from (\S+) at step (\d+)")
SKIPPED = re.compile(r"skipping checkpoint (\S+): (.+?); trying the previous one")
TRUNCATED_FILE = "encoder/model.safetensors"


def _checkpoint_module():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from clse.train import checkpoint

    return checkpoint


def step_of(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def overrides(run_dir: Path, *, steps: int, objective: str = "mexma", checkpoint_every: int = 1,
              keep: int = 2, extra: list[str] = ()) -> list[str]:
    """The ``clse train`` arguments of both runs (``trainer.resume`` is added per start)."""
    return [*FAST, *OBJECTIVES.get(objective, [f"objective={objective}"]), f"trainer.steps={steps}",
            f"trainer.checkpoint_every={checkpoint_every}", f"trainer.keep_checkpoints={keep}",
            *extra, f"hydra.run.dir={run_dir}"]


# ----------------------------------------------------------------------------- the folder
@dataclass
class FolderState:
    good: list[int] = field(default_factory=list)  # steps of the intact step_* folders
    broken: dict[str, str] = field(default_factory=dict)  # step_* folder -> what is wrong
    leftovers: list[str] = field(default_factory=list)  # .tmp-* / .trash-* folders
    other: list[str] = field(default_factory=list)  # anything else

    @property
    def newest(self) -> int:
        return max(self.good, default=0)


def inspect_folder(ckpt_dir: Path) -> FolderState:
    verify = _checkpoint_module().verify
    state = FolderState()
    if not ckpt_dir.is_dir():
        return state
    for entry in sorted(ckpt_dir.iterdir()):
        if entry.name.startswith("step_") and entry.is_dir():
            problem = verify(entry)
            if problem is None:
                state.good.append(step_of(entry.name))
            else:
                state.broken[entry.name] = problem
        elif entry.name.startswith((".tmp-", ".trash-")):
            state.leftovers.append(entry.name)
        else:
            state.other.append(entry.name)
    return state


class Watcher(threading.Thread):
    """Polls ``ckpt_dir`` every few ms for checkpoint writes (``.tmp-step_*`` folders) that were
    not there when it was made: when each appeared, and when it was renamed away."""

    def __init__(self, ckpt_dir: Path, period: float = 0.004):
        super().__init__(daemon=True)
        self.ckpt_dir, self.period = ckpt_dir, period
        self.before = self._snapshot()  # leftovers of earlier processes: not this one's writes
        self.t0 = time.perf_counter()
        self.writes: dict[tuple, list[float | None]] = {}  # (name, ino, mtime) -> [appeared, gone]
        self.order: list[tuple] = []
        self.halt = threading.Event()

    def _snapshot(self) -> set[tuple]:
        out = set()
        try:
            with os.scandir(self.ckpt_dir) as it:
                for e in it:
                    if e.name.startswith(".tmp-step_"):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        out.add((e.name, st.st_ino, st.st_mtime_ns))
        except FileNotFoundError:
            pass
        return out

    def live(self) -> set[tuple]:
        """This process's writes in progress (by name: a write's mtime moves as files appear)."""
        now = {n for n, *_ in self._snapshot() - self.before}
        return {k for k in self.order if k[0] in now and self.writes[k][1] is None}

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.perf_counter() - self.t0
            names = {}
            for key in self._snapshot() - self.before:
                names.setdefault(key[0], key)
            for name, key in names.items():
                if not any(k[0] == name and self.writes[k][1] is None for k in self.order):
                    self.writes[key] = [now, None]
                    self.order.append(key)  # (after writes[key]: the main thread reads both)
            for key in self.order:
                if self.writes[key][1] is None and key[0] not in names:
                    self.writes[key][1] = now
            self.halt.wait(self.period)

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def started(self) -> list[float]:
        return [self.writes[k][0] for k in self.order]

    def durations(self) -> list[float]:
        return [b - a for a, b in (self.writes[k] for k in self.order) if b is not None]


# ----------------------------------------------------------------------------- processes
class Trainer:
    """One ``python -m clse.cli train`` process in its own session (killed as a group)."""

    def __init__(self, args: list[str], log: Path, cwd: Path):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)}
        self.log = log
        self.t0 = time.perf_counter()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "clse.cli", "train", *args],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                         start_new_session=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def resumed_step(self) -> int | None:
        """The step it logged resuming from; None for a fresh start or one killed before."""
        m = RESUMED.search(self.output())
        return int(m.group(2)) if m else None


def run_reference(work: Path, args: list[str], timeout: float = 900) -> dict:
    """The uninterrupted run, timed: start-up, seconds per step, seconds per checkpoint write."""
    run_dir = work / "reference"
    ckpt_dir = run_dir / "checkpoints"
    watcher = Watcher(ckpt_dir)
    t = Trainer([*args, f"hydra.run.dir={run_dir}"], work / "reference.log", work)
    watcher.t0 = t.t0
    watcher.start()
    try:
        rc = t.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        t.kill()
        rc = "timeout"
    wall = t.elapsed()
    watcher.stop()
    if rc != 0:
        raise RuntimeError(f"the reference run failed ({rc}):\n{t.output()[-3000:]}")
    starts, durations = watcher.started(), watcher.durations()
    step_s = statistics.median(b - a for a, b in zip(starts, starts[1:])) if len(starts) > 1 else 1.5
    return {"wall_s": wall, "startup_s": (starts[0] - step_s) if starts else 10.0,
            "step_s": step_s, "write_s": statistics.median(durations) if durations else 0.3,
            "run_dir": str(run_dir)}


def final_params(ckpt) -> dict:
    """The trained tensors of a checkpoint: the encoder's and the objective's (``module.*``)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    return {**load_file(str(ckpt / "encoder" / "model.safetensors")),
            **{k: v for k, v in load_file(str(ckpt / "extra.safetensors")).items()
               if k.startswith("module.")}}


def compare(a_ckpt: Path, b_ckpt: Path) -> tuple[bool, str]:
    import torch

    a, b = final_params(a_ckpt), final_params(b_ckpt)
    if a.keys() != b.keys():
        return False, f"different tensors: {sorted(a.keys() ^ b.keys())[:5]}"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if differ:
        worst = max(differ, key=lambda k: (a[k].float() - b[k].float()).abs().max().item())
        diff = (a[worst].float() - b[worst].float()).abs().max().item()
        return False, f"{len(differ)}/{len(a)} tensors differ (largest: {worst}, {diff:.3g})"
    return True, f"{len(a)} tensors bit-identical"


# ----------------------------------------------------------------------------- the experiment
@dataclass
class Kill:
    index: int
    kind: str  # write | time (what was planned)
    landed: str = ""  # write | write-after-manifest | delete | startup | step (what happened)
    at_s: float = 0.0  # seconds after this process's start
    cycle_s: float = 0.0  # start -> kill -> folder checked
    start_step: int | None = None  # where this process started (0: afresh)
    expected_start: int = 0
    newest_after: int = 0  # newest intact step after the kill
    folder_ok: bool = True
    problems: list[str] = field(default_factory=list)
    truncated: str | None = None  # the file truncated after this kill
    resume_ok: bool | None = None  # (b): the next process started where it should
    guard: bool = False  # killed at the last step's write so that the run does not complete


@dataclass
class Report:
    objective: str
    steps: int
    checkpoint_every: int
    keep: int
    seed: int
    kills_requested: int
    kills: list[Kill] = field(default_factory=list)
    reference: dict = field(default_factory=dict)
    completed: bool = False
    final_start_step: int | None = None
    final_resume_ok: bool = False
    params_identical: bool = False
    params_detail: str = ""
    final_problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    work: str = ""

    @property
    def survived(self) -> int:
        if not (self.completed and self.params_identical):
            return 0
        return sum(k.folder_ok and bool(k.resume_ok) for k in self.kills)

    def summary(self) -> dict:
        landed = [k.landed for k in self.kills]
        cycles = [k.cycle_s for k in self.kills]
        progress = [k.newest_after - k.expected_start for k in self.kills]
        return {
            "kills": len(self.kills), "kills_survived": self.survived,
            "during_write": sum(x.startswith("write") for x in landed),
            "during_write_after_manifest": landed.count("write-after-manifest"),
            "during_startup": landed.count("startup"), "during_step": landed.count("step"),
            "during_delete": landed.count("delete"),
            "guard_kills": sum(k.guard for k in self.kills),
            "cycle_s_median": statistics.median(cycles) if cycles else 0.0,
            "cycle_s_mean": statistics.fmean(cycles) if cycles else 0.0,
            "progress_steps_mean": statistics.fmean(progress) if progress else 0.0,
            "kills_with_folder_problems": sum(bool(k.problems) for k in self.kills),
            "resumed_from_newest": sum(bool(k.resume_ok) for k in self.kills),
            "truncations": sum(k.truncated is not None for k in self.kills),
            "params_identical": self.params_identical,
        }


def _writes_left(start: int, steps: int, every: int) -> int:
    return sum(1 for s in range(start + 1, steps + 1) if s % every == 0 or s == steps)


def run_kill_resume(work: Path, *, kills: int, seed: int = 0, steps: int | None = None,
                    objective: str = "mexma", checkpoint_every: int = 1, keep: int = 2,
                    truncate: int = 0, write_share: float = 0.4, plan: list[str] | None = None,
                    truncate_at: set[int] | None = None, extra: list[str] = (),
                    parallel_reference: bool = False, timing: dict | None = None,
                    timeout: float = 900, echo=print) -> Report:
    """The whole experiment in ``work``. ``plan`` fixes the kinds of the kills (``time``,
    ``write`` or ``write:N``: during this process's N-th checkpoint write), else a shuffled list
    with ``round(write_share * kills)`` writes; ``truncate_at`` fixes after which kills (0-based)
    to truncate, else ``truncate`` of them are drawn. ``parallel_reference``: run the reference
    beside the killed run (faster on 2+ cores; its timings are then not reported)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    steps = steps or 2 * kills + 6
    rng = random.Random(seed)
    if plan is None:
        n_write = round(write_share * kills)
        plan = ["write"] * n_write + ["time"] * (kills - n_write)
        rng.shuffle(plan)
    assert len(plan) == kills
    if truncate_at is None:
        truncate_at = set(rng.sample(range(kills), min(truncate, kills))) if truncate else set()
    truncate_at = set(truncate_at)
    base = [a for a in overrides(work, steps=steps, objective=objective,
                                 checkpoint_every=checkpoint_every, keep=keep, extra=list(extra))
            if not a.startswith("hydra.run.dir=")]
    report = Report(objective, steps, checkpoint_every, keep, seed, kills, work=str(work))
    t_all = time.perf_counter()
    echo(f"kill_resume: objective={objective} steps={steps} checkpoint_every={checkpoint_every} "
         f"keep={keep} seed={seed} kills={kills} work={work}")

    # 1. the reference (in a thread when parallel: its timings then are not representative)
    ref_box: dict = {}

    def reference():
        try:
            ref_box.update(run_reference(work, base, timeout))
        except Exception as exc:  # noqa: BLE001 - reported below
            ref_box["error"] = exc

    ref_thread = threading.Thread(target=reference, daemon=True)
    ref_thread.start()
    if not parallel_reference:
        ref_thread.join()
        if "error" in ref_box:
            raise ref_box["error"]
        echo(f"reference run: {ref_box['wall_s']:.1f} s (start-up {ref_box['startup_s']:.1f} s, "
             f"{ref_box['step_s']:.2f} s/step, checkpoint write {ref_box['write_s']:.2f} s)")
    est = {"startup_s": 10.0, "step_s": 1.5, "write_s": 0.3, **(timing or {}),
           **{k: v for k, v in ref_box.items() if k.endswith("_s") and k != "wall_s"}}

    # 2. the killed run
    run_dir = work / "killed"
    ckpt_dir = run_dir / "checkpoints"
    ever_good = 0
    expected_start, expect_warning = 0, None
    pending: list[Kill] = []  # kills whose (b) waits for a process that gets far enough to tell
    torn: set[str] = set()  # checkpoints this script truncated, until the run rewrites them
    for i in range(kills):
        kill = Kill(i + 1, plan[i], expected_start=expected_start)
        trash_before = _trash(ckpt_dir)
        trainer, watcher = _start(work, base, run_dir, expected_start, f"killed.{i + 1:02d}.log")
        quota = max(1, (steps - expected_start) // (kills - i + 1))
        last_write = f".tmp-step_{steps:08d}"
        if plan[i].startswith("write"):
            left = _writes_left(expected_start, steps, checkpoint_every)
            nth = int(plan[i].partition(":")[2] or rng.randint(1, max(1, min(quota, left))))
            jitter, deadline = rng.uniform(0.0, 0.8) * est["write_s"], None
        else:
            nth, jitter = None, 0.0
            deadline = rng.uniform(0.8 * est["startup_s"],
                                   est["startup_s"] + (quota + 0.5) * est["step_s"])
        fire_at = deadline
        while trainer.proc.poll() is None:
            now = trainer.elapsed()
            if any(k[0] == last_write for k in watcher.live()):  # do not let it complete
                kill.guard = fire_at is None or now < fire_at
                break
            if nth is not None and len(watcher.order) >= nth:
                appeared, gone = watcher.writes[watcher.order[nth - 1]]
                if gone is not None and gone < appeared + jitter:  # it was quicker: the next one
                    nth, jitter = nth + 1, jitter / 2
                else:
                    fire_at = appeared + jitter
            if (fire_at is not None and now >= fire_at) or now > timeout:
                break
            time.sleep(0.002)
        kill.at_s = trainer.elapsed()
        trainer.kill()
        watcher.stop()
        out = trainer.output()
        if trainer.proc.returncode != -signal.SIGKILL:
            kill.problems.append(f"the process ended by itself (exit status "
                                 f"{trainer.proc.returncode}) before the kill:\n{out[-2000:]}")
        # where it landed: did a write of this process stay behind in its .tmp folder?
        live = [n for n, *_ in watcher._snapshot() - watcher.before if (ckpt_dir / n).is_dir()]
        kill.start_step = _started_at(trainer, watcher, expected_start, checkpoint_every)
        if live:
            kill.landed = ("write-after-manifest" if any(
                (ckpt_dir / n / MANIFEST).is_file() for n in live) else "write")
        elif _trash(ckpt_dir) - trash_before:
            kill.landed = "delete"  # while deleting an old checkpoint (retention)
        elif kill.start_step is None:
            kill.landed = "startup"
        else:
            kill.landed = "step"
        # (b) of the kills before: did this process start from the newest intact checkpoint?
        verdict = _resume_ok(kill.start_step, expected_start, expect_warning, out)
        if verdict is not None:  # else killed too early to tell: the next process judges them
            for k in pending:
                k.resume_ok = verdict
            pending = []
        # the folder after the kill
        state = inspect_folder(ckpt_dir)
        torn &= set(state.broken)  # rewritten (the resume got past it) or deleted: forgotten
        kill.problems += [f"{name}: {problem}" for name, problem in state.broken.items()
                          if name not in torn]  # (the harness's own truncation is no fault)
        if ever_good and not state.good:
            kill.problems.append("no intact checkpoint left (retention deleted the last good one)")
        if state.other:
            kill.problems.append(f"unexpected entries: {state.other}")
        ever_good = max(ever_good, state.newest)
        kill.newest_after = state.newest
        if verdict is not None or kill.newest_after != expected_start or expect_warning is None:
            expected_start, expect_warning = state.newest, None
        if i in truncate_at and len(state.good) >= 2:
            victim = ckpt_dir / f"step_{state.newest:08d}" / TRUNCATED_FILE
            data = victim.read_bytes()
            victim.write_bytes(data[: len(data) // 2])
            kill.truncated = str(victim.relative_to(run_dir))
            torn.add(f"step_{state.newest:08d}")
            expected_start, expect_warning = sorted(state.good)[-2], f"step_{state.newest:08d}"
        elif i in truncate_at and i + 1 < kills:
            truncate_at.add(i + 1)  # not two intact checkpoints yet: at the next kill
        kill.folder_ok = not kill.problems
        kill.cycle_s = trainer.elapsed()
        _learn(est, watcher, kill.at_s)
        report.kills.append(kill)
        pending.append(kill)
        echo(f"kill {i + 1:2d}/{kills}: {kill.kind:5s} at {kill.at_s:5.1f} s -> {kill.landed}"
             f"{' (last-write guard)' if kill.guard else ''}; started at step {kill.start_step}"
             f", newest intact now {kill.newest_after} (intact {state.good}, leftovers "
             f"{state.leftovers}){'; truncated ' + kill.truncated if kill.truncated else ''}"
             f"{'; PROBLEMS: ' + '; '.join(kill.problems) if kill.problems else ''}"
             f" [{kill.cycle_s:.1f} s]")

    # 3. the last start runs to completion
    trainer, watcher = _start(work, base, run_dir, expected_start, "killed.final.log")
    try:
        rc = trainer.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        trainer.kill()
        rc = "timeout"
    watcher.stop()
    out = trainer.output()
    report.completed = rc == 0
    report.final_start_step = _started_at(trainer, watcher, expected_start, checkpoint_every)
    verdict = _resume_ok(report.final_start_step, expected_start, expect_warning, out)
    report.final_resume_ok = bool(verdict)
    for k in pending:
        k.resume_ok = bool(verdict)
    if not report.completed:
        report.final_problems.append(f"the last start failed ({rc}):\n{out[-3000:]}")
    state = inspect_folder(ckpt_dir)
    if set(state.broken) - torn:
        report.final_problems.append(f"broken checkpoints at the end: {state.broken}")
    ref_thread.join()
    if "error" in ref_box:
        raise ref_box["error"]
    report.reference = dict(ref_box)
    final = ckpt_dir / f"step_{steps:08d}"
    reference = work / "reference" / "checkpoints" / f"step_{steps:08d}"
    if report.completed and final.is_dir() and reference.is_dir():
        report.params_identical, report.params_detail = compare(reference, final)
    else:
        report.params_detail = f"missing {final if not final.is_dir() else reference}"
    report.wall_s = time.perf_counter() - t_all
    return report


def _trash(ckpt_dir: Path) -> set[tuple[str, int]]:
    """The ``.trash-*`` folders (checkpoints being deleted) in ``ckpt_dir``, with their inodes."""
    if not ckpt_dir.is_dir():
        return set()
    return {(p.name, p.stat().st_ino) for p in ckpt_dir.iterdir() if p.name.startswith(".trash-")}


def _learn(est: dict, watcher: Watcher, killed_at: float) -> None:
    """Move the timing estimates halfway to what this process showed (the load changes)."""
    starts, durations = watcher.started(), watcher.durations()
    if not starts:  # killed before its first write: start-up took at least that long
        est["startup_s"] = max(est["startup_s"], killed_at - est["step_s"])
    if len(starts) > 1:
        est["step_s"] = (est["step_s"] + statistics.median(b - a for a, b in zip(starts, starts[1:]))) / 2
    if starts:
        est["startup_s"] = (est["startup_s"] + max(1.0, starts[0] - est["step_s"])) / 2
    if durations:
        est["write_s"] = (est["write_s"] + statistics.median(durations)) / 2


def _start(work: Path, base: list[str], run_dir: Path, resume_step: int,
           log: str) -> tuple[Trainer, Watcher]:
    """Start the killed run's next process: resumed from ``run_dir`` when an intact checkpoint
    exists (what a requeued job does), else afresh in the same folder."""
    args = [*base, f"hydra.run.dir={run_dir}"] + ([f"trainer.resume={run_dir}"] if resume_step else [])
    watcher = Watcher(run_dir / "checkpoints")  # (its snapshot of leftovers: before the start)
    trainer = Trainer(args, work / log, work)
    watcher.t0 = trainer.t0  # one clock: seconds since the start
    watcher.start()
    return trainer, watcher


def _started_at(trainer: Trainer, watcher: Watcher, expected: int, every: int) -> int | None:
    """The step a process started from: its ``resuming from`` line, or 0 for a fresh start once it
    has begun a checkpoint write (None: killed before it could tell). The step of its first
    checkpoint write must agree (else the negated step of that write: never an expected step)."""
    step = trainer.resumed_step()
    if step is None and not expected and (watcher.order or trainer.proc.returncode == 0):
        step = 0  # started afresh (no trainer.resume), and got as far as a checkpoint write
    if step is not None and watcher.order:
        first = step_of(watcher.order[0][0])
        want = next(s for s in range(step + 1, step + every + 1) if s % every == 0)
        if first not in (want, step + 1):  # (the last step is saved even off the grid)
            return -first  # contradicts the log: never equal to an expected step
    return step


def _resume_ok(started: int | None, expected: int, warning: str | None, out: str) -> bool | None:
    """Did a process start at ``expected`` (and warn about ``warning``'s truncated file)?
    None when it was killed too early to tell."""
    if started is None:
        return None
    if started != expected:
        return False
    if warning is not None:
        return any(warning in path and TRUNCATED_FILE in why for path, why in SKIPPED.findall(out))
    return True


def format_report(r: Report) -> list[str]:
    s = r.summary()
    ref = r.reference
    lines = []
    if ref:
        lines.append(f"reference run: {ref['wall_s']:.1f} s (start-up {ref['startup_s']:.1f} s, "
                     f"{ref['step_s']:.2f} s/step, checkpoint write {ref['write_s']:.2f} s)")
    lines += [
        f"kills: {s['kills']}/{r.kills_requested} (landed during a checkpoint write: "
        f"{s['during_write']}, of them after manifest.json: {s['during_write_after_manifest']}; "
        f"during start-up: {s['during_startup']}; while deleting an old checkpoint: "
        f"{s['during_delete']}; elsewhere in a step: {s['during_step']}; "
        f"last-write guard: {s['guard_kills']})",
        f"kill cycle (start -> SIGKILL -> folder checked): median {s['cycle_s_median']:.1f} s, "
        f"mean {s['cycle_s_mean']:.1f} s; total {r.wall_s:.0f} s",
        f"progress per kill cycle: {s['progress_steps_mean']:.1f} steps on average",
        f"folder after each kill (every step_* intact, leftovers only .tmp-*/.trash-*, never zero "
        f"intact): {'all passed' if not s['kills_with_folder_problems'] else 'FAILED after %d kills' % s['kills_with_folder_problems']}",
        f"resumes from the newest intact checkpoint: {s['resumed_from_newest']}/{s['kills']}"
        + (f" (truncated-file fallbacks: {s['truncations']})" if s["truncations"] else ""),
        f"run completed: {str(r.completed).lower()}; params: {r.params_detail}",
        *[p for p in r.final_problems],
        f"kills_survived={r.survived}/{len(r.kills)}",
        f"params_identical={str(r.params_identical).lower()}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="trainer.steps (default 2 x kills + 6)")
    p.add_argument("--objective", default="mexma",
                   help="mexma (head_layers=1) | none (+ alignment=contrastive) | any objective")
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--keep", type=int, default=2, help="trainer.keep_checkpoints")
    p.add_argument("--truncate", type=int, default=0,
                   help="after this many of the kills (drawn; where 2 intact checkpoints exist, so "
                        "--keep >= 2), truncate the newest checkpoint's weights file")
    p.add_argument("--write-share", type=float, default=0.4,
                   help="share of the kills aimed at a checkpoint write")
    p.add_argument("--override", action="append", default=[], help="an extra clse train override")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="clse-kill-resume-"))
    report = run_kill_resume(work, kills=args.kills, seed=args.seed, steps=args.steps,
                             objective=args.objective, checkpoint_every=args.checkpoint_every,
                             keep=args.keep, truncate=args.truncate, write_share=args.write_share,
                             extra=args.override)
    lines = format_report(report)
    print("\n".join(lines[1:] if report.reference else lines))  # the reference line came first
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "summary": report.summary()},
                                        indent=2, default=str))
    ok = report.survived == len(report.kills) == args.kills and report.params_identical
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
