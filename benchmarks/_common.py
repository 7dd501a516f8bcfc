"""Helpers shared by the benchmark scripts: the machine, timing with device sync, matmul rate.

Timings on a shared machine are noisy: compare variants measured side by side in one run
(interleaved rounds, medians), never numbers from different runs.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on (printed and copied into RESULTS.md)."""
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    info = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores ({', '.join(simd) or 'no AVX2'})",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "load average": "/".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                       f"CUDA {torch.version.cuda}")
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) that ``fn()`` takes, the device's queue drained
    before and after."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Matmul:
    """A square matmul whose timed samples give the machine's dense FLOP/s (``2 n^3`` per call)."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(device, dtype)
        self.b = torch.randn(n, n, generator=g).to(device, dtype)
        self.out = torch.empty(n, n, device=device, dtype=dtype)
        self.n, self.device, self.dtype = n, device, dtype
        self.samples: list[tuple[float, float]] = []  # (wall, CPU) seconds per call

    def sample(self, calls: int = 1) -> None:
        wall, cpu = timed(lambda: [torch.mm(self.a, self.b, out=self.out) for _ in range(calls)],
                          self.device)
        self.samples.append((wall / calls, cpu / calls))

    def rate(self, clock: str = "wall") -> float:
        """Median FLOP/s by the ``wall`` clock or the process' ``cpu`` time."""
        column = 0 if clock == "wall" else 1
        return 2 * self.n ** 3 / median([s[column] for s in self.samples])


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown pipe table (readable in a terminal, pasteable into RESULTS.md)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


# --------------------------------------------------------------------------- interleaved steps

@dataclass
class Sample:
    """One timed training step."""

    seconds: float  # wall clock
    real: int  # real (non-padding) tokens of the batch
    padded: int  # tokens the padded tensors hold (``real`` when nothing is padded)
    cpu: float = float("nan")  # process CPU seconds (all threads)
    phases: dict[str, float] = field(default_factory=dict)  # seconds of the step's parts

    def time(self, clock: str = "wall") -> float:
        return self.seconds if clock == "wall" else self.cpu


def summary(samples: Sequence[Sample], clock: str = "wall") -> dict[str, float]:
    """Medians of seconds and real tokens/s by ``clock`` (``wall`` or ``cpu``), and of wall and
    CPU seconds; means of the batch size and the padding share."""
    return {"rate": median([s.real / s.time(clock) for s in samples]),
            "seconds": median([s.time(clock) for s in samples]),
            "wall": median([s.seconds for s in samples]),
            "cpu": median([s.cpu for s in samples]),
            "real": float(sum(s.real for s in samples) / len(samples)),
            "padding": float(sum(1 - s.real / s.padded for s in samples) / len(samples))}


def interleave(runners: dict[str, Callable[..., Sample]], batch: Callable[[str, int], Any], *,
               warmup: int, steps: int, repeats: int, matmuls: Sequence[Matmul] = (),
               **step_kwargs: Any) -> dict[str, list[Sample]]:
    """Time ``runners`` side by side: ``warmup`` untimed steps each, then ``repeats`` rounds of
    ``steps`` steps each, the order rotating every round (load drift hits every runner alike),
    and a sample of each matmul after every turn. ``batch(name, k)`` is the input of timed step
    ``k`` (``k < 0``: warm-up steps)."""
    names = list(runners)
    for k in range(warmup):
        for name in names:
            runners[name](batch(name, -1 - k), **step_kwargs)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for s in range(steps):
                samples[name].append(runners[name](batch(name, r * steps + s), **step_kwargs))
            for matmul in matmuls:
                matmul.sample()
        line = ", ".join(f"{n} {samples[n][-1].seconds:.2f} s ({samples[n][-1].cpu:.2f} s CPU)"
                         for n in names)
        print(f"  round {r + 1}/{repeats}: {line}", flush=True)
    return samples


# --------------------------------------------------------------------------- FLOPs

def _cpu_sdpa_formulas() -> dict:
    """FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel: its formulas."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        mapping[fwd] = lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    if bwd is not None:
        mapping[bwd] = lambda g, q, k, v, *a, out_shape=None, **kw: \
            sdpa_backward_flop_count(g, q, k, v)
    return mapping


def count_flops(fn: Callable[[], object]) -> dict[str, float]:
    """FLOPs ``fn()`` executed (``FlopCounterMode``: matmuls and attention kernels, padding
    included): ``total`` and ``attention`` (SDPA kernels, and eager attention's ``bmm``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_formulas()) as counter:
        fn()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = sum(n for op, n in by_op.items() if "attention" in op or "bmm" in op)
    return {"total": float(sum(by_op.values())), "attention": float(attention)}


# dense bf16 peak (FLOP/s, no sparsity) by words in the GPU's name, for MFU; first match wins
GPU_PEAK_BF16 = [("H200", 989.4e12), ("H100 SXM", 989.4e12), ("H100 HBM3", 989.4e12),
                 ("H100 NVL", 835e12), ("H100", 756e12), ("A100", 312e12), ("L40S", 362e12),
                 ("L4", 121e12), ("A10", 125e12)]


def gpu_peak_bf16(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    for words, peak in GPU_PEAK_BF16:
        if all(w in name for w in words.split()):
            return peak
    return None
