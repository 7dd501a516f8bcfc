"""Training throughput: packed vs padded attention, clse vs sentence-transformers, FLOP/s.

    python benchmarks/train_throughput.py                       # CPU, small preset, fp32 (~12 min)
    python benchmarks/train_throughput.py --scaling --memory --profile   # ~35 min
    python benchmarks/train_throughput.py --device cuda --precision bf16 --preset base   # + MFU

One step is clse's training loop (``clse/train/loop.py``) replicated for one step, on components
built as the trainer builds them: a hydra config composed as ``clse train`` composes it,
``build_components``, ``configure_packing``, ``Collator``, ``Views``, the objective,
``pair_losses``, backward, gradient clipping and AdamW. The timed step starts from the list of
sentence pairs, so tokenisation (the collator) is inside it, as in a trainer step.

* MEXMA: ``recipe=mexma`` (cross-unmasking with the default 6-layer head, MSE + KoLeo, CLS).
* dual encoder: ``objective=none alignment=contrastive regularizer=none pooling=mean``.

Variants, timed side by side in rounds (order rotating) on the same batches: ``packed``
(``encoder.packing=packed``), ``padded_sdpa``, ``padded_eager``, and on batches of a length-sorted
pool (``BatchPlanner(bucket=16)``) ``bucketed_sdpa`` (padded) and ``packed_bucketed``; for the
dual encoder also sentence-transformers' model + ``MultipleNegativesSymmetricRankingLoss`` on the
same initial weights and batches. Data: eng_Latn-X pairs of FLORES-200 devtest (80 directions,
found via ``clse.paths``) and a Unigram tokenizer trained on that text; without the shared data,
synthetic sentences with log-normal lengths (the output says so). Throughput counts the real
(non-padding) tokens of both sides of the batch once per step, as the trainer's
``train/tokens_per_s`` does. Ratios are of medians. The output ends with ``name=value`` lines.

Timing on a shared CPU: one torch thread by default (``--threads``), and the ratios use the
process' CPU time (``--clock cpu``, the default then): other jobs' time slices do not count,
which wall time cannot exclude. Wall-clock ratios are printed beside. On CUDA: wall clock.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (Matmul, Sample, count_flops, cpu_flags, gpu_peak_bf16,  # noqa: E402
                     interleave, machine, median, summary, sync, table)

REPO = Path(__file__).resolve().parent.parent
OBJECTIVES = {  # hydra overrides of each trained model
    "mexma": ["recipe=mexma"],
    "dual": ["objective=none", "alignment=contrastive", "regularizer=none", "pooling=mean"],
}
VARIANTS = ("packed", "padded_sdpa", "padded_eager", "bucketed_sdpa", "packed_bucketed")
BUCKET = 16  # batches per length-sorted pool (data.bucket)


# --------------------------------------------------------------------------- data

@dataclass
class Workload:
    pairs: list  # clse.data.readers.Pair
    tokenizer_dir: Path
    source: str  # what the pairs are (printed)
    sampler: Any  # clse.data.sampling.LanguageSampler


def _flores_pairs(root: Path):
    from clse.data.readers import load_corpus

    folder = root / "flores200" / "devtest"
    pairs = load_corpus({"kind": "multiway", "path": str(folder), "pivot": "eng_Latn"})
    texts = [line for path in sorted(folder.glob("*.txt"))
             for line in path.read_text(encoding="utf-8").splitlines()[:250]]
    langs = len({p.tgt_lang for p in pairs})
    return pairs, texts, f"FLORES-200 devtest, eng_Latn-X pairs over {langs} languages ({folder})"


def _synthetic_pairs(n_per_lang: int = 1000, seed: int = 0):
    """Sentences of random 'words' with log-normal word counts (median 17 words: FLORES-like)."""
    from clse.data.readers import Pair

    rng = np.random.default_rng(seed)
    langs = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans", "hin_Deva",
             "arb_Arab", "swh_Latn"]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {lg: ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(3000)]
             for lg in langs}
    zipf = 1.0 / np.arange(1, 3001)
    zipf /= zipf.sum()
    words = np.clip(rng.lognormal(np.log(17), 0.45, size=n_per_lang), 2, 120).astype(int)

    def sentence(lg: str, n: int) -> str:
        return " ".join(vocab[lg][i] for i in rng.choice(3000, size=n, p=zipf))

    eng = [sentence("eng_Latn", n) for n in words]
    pairs, texts = [], list(eng)
    for lg in langs[1:]:
        other = [sentence(lg, max(2, int(n * rng.uniform(0.8, 1.25)))) for n in words]
        texts += other
        pairs += [Pair("eng_Latn", lg, a, b) for a, b in zip(eng, other)]
    return pairs, texts, (f"FALLBACK (no shared data folder): synthetic sentences with "
                          f"log-normal lengths, eng_Latn-X over {len(langs) - 1} languages")


def load_workload(args) -> Workload:
    from clse.data.sampling import LanguageSampler
    from clse.data.tokenizer import train_tokenizer
    from clse.paths import data_root

    root = data_root()
    if root is not None and (root / "flores200" / "devtest").is_dir() and not args.synthetic:
        (pairs, texts, source), tag = _flores_pairs(root), "flores-devtest"
    else:
        (pairs, texts, source), tag = _synthetic_pairs(), "synthetic"
    cache = Path(tempfile.gettempdir()) / f"clse-bench-train-tokenizer-{tag}-{args.vocab_size}"
    if not (cache / "tokenizer.json").is_file():
        start = time.perf_counter()
        train_tokenizer(texts, args.vocab_size, cache)  # 250 lines per language: ~25 s
        print(f"tokenizer: trained on {len(texts)} lines in {time.perf_counter() - start:.0f} s,"
              f" cached in {cache}")
    else:
        print(f"tokenizer: cached in {cache}")
    return Workload(pairs, cache, source, LanguageSampler(pairs, alpha=0.5, seed=0))


def compose(args, work: Workload, objective: str):
    """The run's config, as ``clse train`` composes it with these overrides."""
    from hydra import compose as hydra_compose, initialize_config_module

    from clse.config import setup

    setup()
    overrides = ["quickstart=none", f"encoder.preset={args.preset}", f"encoder.tokenizer={work.tokenizer_dir}",
                 f"data.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
                 f"trainer.precision={args.precision}", f"trainer.device={args.device}",
                 "eval=none", "tracking.enabled=false", "progress=false",
                 *OBJECTIVES[objective], *args.override]
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


class Batches:
    """Pair indices of each timed step: random batches (``sampler.batch``, the trainer's default)
    or, for the bucketed variants, batches of one ``BatchPlanner(bucket=16)`` pool taken at evenly
    spaced quantiles of its length-sorted batches, so a few timed steps stand for the whole pool."""

    def __init__(self, work: Workload, cfg, batch_size: int, timed: int, offset: int = 1000):
        from clse.data.batching import BatchPlanner, TokenLengths
        from clse.data.tokenizer import load_tokenizer

        self.work, self.batch_size, self.offset = work, batch_size, offset
        lengths = TokenLengths(work.pairs, load_tokenizer(work.tokenizer_dir),
                               max_length=cfg.data.max_length)
        planner = BatchPlanner(work.sampler, batch_size, bucket=BUCKET, lengths=lengths)
        pool = [planner.batch(s) for s in range(BUCKET)]
        size = []  # what the padding collator allocates: B x (longest A + longest B)
        for batch in pool:
            a, b = lengths(np.asarray(batch))
            size.append(len(batch) * int(a.max() + b.max()))
        by_size = [pool[i] for i in sorted(range(BUCKET), key=size.__getitem__)]
        self.bucketed = [by_size[min(BUCKET - 1, int((k + 0.5) * BUCKET / timed))]
                         for k in range(timed)]
        self.bucketed_median = by_size[BUCKET // 2]

    def __call__(self, variant: str, k: int) -> list[int]:
        if variant.endswith("bucketed") or variant.startswith("bucketed"):
            return self.bucketed_median if k < 0 else self.bucketed[k % len(self.bucketed)]
        return self.random(k)

    def random(self, k: int) -> list[int]:
        step = self.offset + k if k >= 0 else self.offset - 100 + k
        return self.work.sampler.batch(step, self.batch_size)


# --------------------------------------------------------------------------- one training step

class ClseStep:
    """One step of ``clse.train.loop.train`` for one attention variant. Each variant has its own
    components, built from the same seed, so all start from the same weights."""

    def __init__(self, cfg, work: Workload, variant: str, device: torch.device):
        import inspect

        from clse.model import packing
        from clse.train.build import autocast_dtype, build_components, seed_everything

        self.cfg, self.work, self.variant, self.device = cfg, work, variant, device
        seed_everything(cfg.seed, cfg.trainer.deterministic)  # as train() does
        with tempfile.TemporaryDirectory() as tmp:
            self.comp = comp = build_components(cfg, work.pairs, Path(tmp))
        self.model = comp.encoder.model.to(device)
        self.extra = comp.objective.modules()
        if self.extra is not None:
            self.extra.to(device)
        self.dtype = autocast_dtype(cfg.trainer.precision, device)
        self.forward_model = packing.configure_packing(
            self.model, self.extra, mode="packed" if variant.startswith("packed") else "padded",
            backend=cfg.encoder.get("packing_backend", "auto"))
        self.described = packing.describe(self.forward_model, device, self.dtype)
        if variant == "padded_eager":  # transformers' eager attention: softmax(QK^T) V as bmm
            for config in packing.hf_configs((self.model, self.extra)):
                config._attn_implementation = "eager"
            self.described = "padded:eager"
        self._collators: dict[int, Any] = {}
        params = list(self.model.parameters())
        if self.extra is not None:
            seen = {id(p) for p in params}
            params += [p for p in self.extra.parameters() if id(p) not in seen]
        self.params = [p for p in params if p.requires_grad]
        t = cfg.trainer
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay,
                                           betas=tuple(t.betas), eps=t.eps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.mask_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.align_groups = "group_ids" in inspect.signature(comp.alignment.__call__).parameters
        self.model.train()
        if self.extra is not None:
            self.extra.train()

    def collate(self, idx: list[int], max_length: int | None = None):
        from clse.data.collate import Collator

        n = max_length or self.cfg.data.max_length
        if n not in self._collators:
            self._collators[n] = Collator(self.comp.encoder.tokenizer, max_length=n)
        return self._collators[n]([self.work.pairs[i] for i in idx])

    def __call__(self, idx: list[int], max_length: int | None = None,
                 phases: bool = False) -> Sample:
        """One step on the pairs ``idx``; ``phases`` also times its parts (a sync after each)."""
        from clse.interfaces import Views
        from clse.train.loop import pair_losses

        comp, device, marks = self.comp, self.device, []

        def mark(name: str) -> None:  # parts in process CPU time (phases are CPU-only)
            if phases:
                sync(device)
                marks.append((name, time.process_time()))

        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = self.collate(idx, max_length).to(device)
        real = batch.real_tokens
        mark("collate")
        with torch.autocast(device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = comp.objective(Views(batch, self.forward_model, comp.pooling, self.mask_gen))
        mark("forward")
        terms = dict(out.terms)
        loss = comp.objective.weight * sum(out.terms.values(), torch.zeros((), device=device))
        if out.pair is not None:
            pair_loss, pair_terms = pair_losses(comp, *out.pair,
                                                batch.groups if self.align_groups else None)
            loss, terms = loss + pair_loss, {**terms, **pair_terms}
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss in {self.variant}")
        mark("losses")
        self.scaler.scale(loss).backward()
        mark("backward")
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.trainer.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        for value in {**terms, "loss": loss}.values():  # the loop logs every term
            value.item()
        mark("optimizer")
        sync(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        split, prev = {}, cpu_start
        for name, at in marks:
            split[name], prev = at - prev, at
        return Sample(seconds, real, batch.a_ids.numel() + batch.b_ids.numel(), cpu, split)

    def useful_flops(self, idx: list[int]) -> float:
        """Model FLOPs on the real tokens (what MFU counts): 6 x non-embedding parameters x tokens
        per encoder or head pass, attention 12 x layers x hidden x sum(len^2) per pass, and
        MEXMA's vocabulary projection on the masked tokens (taken as mask_ratio x tokens)."""
        batch = self.collate(idx)
        lens = torch.cat([batch.a_mask.sum(1), batch.b_mask.sum(1)]).double()
        tokens, squares = float(lens.sum()), float((lens ** 2).sum())
        config = self.model.config
        d = config.hidden_size
        emb = sum(p.numel() for n, p in self.model.named_parameters() if "embeddings" in n)
        body = sum(p.numel() for p in self.model.parameters()) - emb
        flops = 6 * body * tokens + 12 * config.num_hidden_layers * d * squares
        head = getattr(self.extra, "layers", None)
        if head is not None:  # MEXMA: clean and masked views, the head on both masked sides
            flops *= 2
            flops += 6 * sum(p.numel() for p in head.parameters()) * tokens \
                + 12 * self.extra.config.num_hidden_layers * d * squares
            flops += 6 * d * config.vocab_size * self.cfg.objective.mask_ratio * tokens
        return flops


class StStep:
    """sentence-transformers' model, preprocessing and MultipleNegativesSymmetricRankingLoss in a
    manual loop (forward, loss, backward, gradient clipping, AdamW; no Trainer)."""

    def __init__(self, folder: Path, cfg, work: Workload, device: torch.device, dtype):
        from sentence_transformers import SentenceTransformer

        self.cfg, self.work, self.device, self.dtype = cfg, work, device, dtype
        self.model = SentenceTransformer(str(folder), device=str(device))
        self.model.train()
        self.loss = _st_loss()(self.model, scale=20.0)  # 1 / temperature 0.05, as clse's
        t = cfg.trainer
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay,
                                           betas=tuple(t.betas), eps=t.eps)
        self.described = f"padded:{self.model[0].auto_model.config._attn_implementation}"

    def __call__(self, idx: list[int], max_length: int | None = None,
                 phases: bool = False) -> Sample:
        pairs, device = [self.work.pairs[i] for i in idx], self.device
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        features = [self.model.preprocess([p.src for p in pairs]),
                    self.model.preprocess([p.tgt for p in pairs])]
        features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()}
                    for f in features]
        with torch.autocast(device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            loss = self.loss(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.trainer.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        sync(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return Sample(seconds, sum(int(f["attention_mask"].sum()) for f in features),
                      sum(f["attention_mask"].numel() for f in features), cpu)


def _st_loss():
    try:
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesSymmetricRankingLoss)
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import MultipleNegativesSymmetricRankingLoss
    return MultipleNegativesSymmetricRankingLoss


def export_st(stepper: ClseStep, folder: Path) -> None:
    """The dual encoder's (initial) weights as a SentenceTransformer folder, mean pooling."""
    from clse.export import export_sentence_transformers

    export_sentence_transformers(stepper.model, stepper.comp.encoder.tokenizer, folder,
                                 pooling="mean", max_seq_length=stepper.cfg.data.max_length)


def st_trainer_run(folder: Path, cfg, work: Workload, batches: list[list[int]], args,
                   device: torch.device) -> list[Sample] | str:
    """``SentenceTransformerTrainer`` over ``batches`` in this order; a step's sample is the time
    between consecutive ``on_step_end`` calls (data loading and ST's collator included)."""
    try:
        import accelerate  # noqa: F401  (the HF Trainer needs it)
        from datasets import Dataset
        from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                           SentenceTransformerTrainingArguments)
        from transformers import TrainerCallback
    except ImportError as exc:
        return f"skipped ({exc}; pip install accelerate datasets)"
    from torch.utils.data import BatchSampler, SequentialSampler

    rows = [work.pairs[i] for b in batches for i in b]
    data = Dataset.from_dict({"anchor": [p.src for p in rows], "positive": [p.tgt for p in rows]})
    marks: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync(device)
            marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **k):
            sync(device)
            marks.append((time.perf_counter(), time.process_time()))

    t = cfg.trainer
    quiet = io.StringIO()  # its model-card widget bar and end-of-training dict
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
        model = SentenceTransformer(str(folder), device=str(device))
        real = [sum(len(x) for side in ("src", "tgt") for x in model.tokenizer(
            [getattr(work.pairs[i], side) for i in b], truncation=True,
            max_length=cfg.data.max_length)["input_ids"]) for b in batches]
        targs = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=len(batches[0]), max_steps=len(batches),
            learning_rate=t.lr, weight_decay=t.weight_decay, adam_beta1=t.betas[0],
            adam_beta2=t.betas[1], adam_epsilon=t.eps, max_grad_norm=t.clip_norm,
            lr_scheduler_type="constant", save_strategy="no", report_to="none",
            logging_steps=10 ** 6, disable_tqdm=True, dataloader_drop_last=True, seed=0,
            bf16=args.precision == "bf16", use_cpu=device.type == "cpu",
            # the batches in the order given: the ones clse steps through
            batch_sampler=lambda dataset, batch_size, drop_last, **_: BatchSampler(
                SequentialSampler(dataset), batch_size, drop_last))
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data,
                                             loss=_st_loss()(model, scale=20.0),
                                             callbacks=[Clock()])
        trainer.train()
    steps = np.diff(np.asarray(marks), axis=0)  # (steps, [wall, CPU])
    return [Sample(float(w), real[k], real[k], float(c))
            for k, (w, c) in enumerate(steps)][args.warmup:]


# --------------------------------------------------------------------------- memory (subprocess)

def _rss_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` (peak) of this process in KiB, from /proc (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Free what can be freed, reset the kernel's peak-RSS mark; the RSS now, in bytes."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages to the kernel
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        return (_rss_kib("VmRSS") or 0) * 1024
    except OSError:  # no /proc: the peak since the process started
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(args) -> None:
    """In a fresh process: build one variant, take one step (lazy imports, AdamW state), then
    the peak memory of two more steps on the same batch above the memory held before them:
    activations, gradients and temporaries."""
    objective, variant = args.memory_child.split(":")
    device = torch.device(args.device)
    work = load_workload(args)
    cfg = compose(args, work, objective)
    stepper = ClseStep(cfg, work, variant, device)
    idx = Batches(work, cfg, args.batch_size, 1)(variant, 0)
    stepper(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    sample = [stepper(idx) for _ in range(2)][-1]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        hwm = _rss_kib("VmHWM")
        peak = hwm * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("MEMORY " + json.dumps({"peak": peak - base, "real": sample.real,
                                  "padded": sample.padded}))


def measure_memory(args) -> dict[str, dict[str, float]]:
    flags = ["--preset", args.preset, "--device", args.device, "--precision", args.precision,
             "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
             "--vocab-size", str(args.vocab_size), "--threads", str(args.threads or 0)]
    flags += ["--synthetic"] if args.synthetic else []
    for o in args.override:
        flags += ["--override", o]
    out = {}
    for objective in OBJECTIVES:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--memory-child", f"{objective}:{variant}", *flags]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = [x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")]
            if proc.returncode or not line:
                print(f"  {objective} {variant}: failed\n{proc.stderr[-2000:]}")
                continue
            out[f"{objective}:{variant}"] = r = json.loads(line[-1][len("MEMORY "):])
            print(f"  {objective} {variant}: {r['peak'] / 2**20:.0f} MiB", flush=True)
    return out


# --------------------------------------------------------------------------- scaling

def scaling(args, work: Workload, steppers: dict[str, dict[str, Any]], device: torch.device,
            metrics: dict[str, float]) -> None:
    """Step time vs batch size and vs truncation length; xsim time vs number of languages."""
    rounds = dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats)
    phases, clock = device.type == "cpu", args.clock
    print(f"## Scaling: dual encoder step vs batch size (contrastive loss: B x B logits; "
          f"{clock} clock)")
    rows = []
    pair = {k: steppers["dual"][k] for k in ("packed", "padded_sdpa")}
    for size in (16, 32, 64, 128):
        res = interleave(pair, lambda name, k: work.sampler.batch(20_000 + 97 * size + k, size),
                         phases=phases, **rounds)
        loss = median([s.phases.get("losses", float("nan")) / s.cpu for s in res["packed"]])
        s = {n: summary(v, clock) for n, v in res.items()}
        rows.append([size, f"{s['packed']['real']:.0f}", f"{s['packed']['seconds']:.2f}",
                     f"{s['padded_sdpa']['seconds']:.2f}", f"{s['packed']['rate']:.0f}",
                     f"{s['padded_sdpa']['rate']:.0f}",
                     f"{s['packed']['rate'] / s['padded_sdpa']['rate']:.2f}x",
                     f"{100 * loss:.2f} %"])
        metrics[f"scaling_dual_packed_tokens_per_s_batch_{size}"] = s["packed"]["rate"]
    print(table(["batch", "real tokens/batch", "packed s/step", "padded sdpa s/step",
                 "packed tokens/s", "padded tokens/s", "packed/padded",
                 "loss share of packed step"], rows) + "\n")

    print(f"## Scaling: step vs max length (batch {args.batch_size}, sentences truncated; "
          f"{clock} clock)")
    rows = []
    for objective in OBJECTIVES:
        pair = {k: steppers[objective][k] for k in ("packed", "padded_sdpa")}
        for length in (32, 64, 128, 200):
            res = interleave(pair, lambda name, k: work.sampler.batch(30_000 + k, args.batch_size),
                             max_length=length, **rounds)
            s = {n: summary(v, clock) for n, v in res.items()}
            rows.append([objective, length, f"{s['packed']['real']:.0f}",
                         f"{100 * s['padded_sdpa']['padding']:.0f} %",
                         f"{s['packed']['seconds']:.2f}", f"{s['padded_sdpa']['seconds']:.2f}",
                         f"{s['packed']['rate']:.0f}", f"{s['padded_sdpa']['rate']:.0f}",
                         f"{s['packed']['rate'] / s['padded_sdpa']['rate']:.2f}x"])
            metrics[f"scaling_packed_over_padded_sdpa_{objective}_len_{length}"] = \
                s["packed"]["rate"] / s["padded_sdpa"]["rate"]
    print(table(["objective", "max length", "real tokens/batch", "padding (padded)",
                 "packed s/step", "padded sdpa s/step", "packed tokens/s", "padded tokens/s",
                 "packed/padded"], rows) + "\n")

    print("## Scaling: xsim X->eng on FLORES devtest vs number of languages (the dual encoder, "
          "padded sdpa, batches of 64 sorted by length, faiss search)")
    from clse.paths import data_root

    if data_root() is None:
        print("skipped: no shared data folder (FLORES-200)\n")
        return
    from eval_speed import Timed, suite_languages

    from clse.eval.model import EvalModel
    from clse_plugins.xsim_flores import XsimConfig, XsimEvaluator

    stepper = steppers["dual"]["padded_sdpa"]
    model = EvalModel(stepper.model, stepper.comp.encoder.tokenizer, "mean", cache=False,
                      max_length=args.max_length, device=device, autocast_dtype=stepper.dtype)
    rows = []
    for n in (1, 5, 10):
        evaluator = XsimEvaluator(XsimConfig(source="flores200", languages=suite_languages()[:n]))
        evaluator.load("devtest")
        wrapped = Timed(model)
        start, cpu_start = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator(wrapped, "devtest")
        # Timed re-tokenises every sentence to count tokens: that time is taken out
        total = time.perf_counter() - start - wrapped.counting
        cpu = time.process_time() - cpu_start - wrapped.counting
        rows.append([n, f"{total:.1f}", f"{cpu:.1f}", f"{wrapped.seconds:.1f}",
                     f"{total - wrapped.seconds:.2f}", f"{wrapped.tokens / wrapped.seconds:.0f}",
                     f"{total / (n + 1):.2f}"])
        metrics[f"scaling_xsim_seconds_{n}_languages"] = total
    print(table(["X->eng directions", "wall s", "CPU s", "encoding wall s",
                 "search + rest wall s", "encoding tokens/s (wall)",
                 "wall s per language (eng included)"], rows) + "\n")


# --------------------------------------------------------------------------- the report

PHASES = ("collate", "forward", "losses", "backward", "optimizer")


def throughput_table(results: dict[str, list[Sample]], steppers: dict[str, Any],
                     clock: str) -> str:
    ref = summary(results["padded_sdpa"], clock)["rate"]
    ref_wall = summary(results["padded_sdpa"], "wall")["rate"]
    rows = []
    for name, samples in results.items():
        s, wall = summary(samples, clock), summary(samples, "wall")
        split = " / ".join(f"{median([x.phases[k] for x in samples]):.2f}" for k in PHASES
                           if k in samples[0].phases)
        rows.append([name, steppers[name].described, f"{s['real']:.0f}",
                     f"{100 * s['padding']:.0f} %", f"{s['wall']:.2f}", f"{s['cpu']:.2f}",
                     f"{s['rate']:.0f}", f"**{s['rate'] / ref:.2f}x**",
                     f"{wall['rate'] / ref_wall:.2f}x", split or "-"])
    return table(["variant", "attention", "real tokens/batch", "padding", "wall s/step",
                  "CPU s/step", f"real tokens/s ({clock})", "vs padded sdpa",
                  "(wall clock)", "CPU s: collate / fwd / loss / bwd / opt"], rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help="encoder size preset (clse.model.presets)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=64, help="pairs per batch")
    p.add_argument("--max-length", type=int, default=200)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--steps", type=int, default=1,
                   help="consecutive timed steps per variant in each round")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds (variant order rotating); medians over steps x repeats samples")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 on CPU, where other jobs share the cores and "
                        "2 threads ran a step up to 5x slower; torch's default on CUDA)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None,
                   help="what the ratios time: the process' CPU time (default with 1 thread on "
                        "CPU: other jobs' time slices do not count) or the wall clock")
    p.add_argument("--scaling", action="store_true", help="also batch/length/xsim scaling")
    p.add_argument("--memory", action="store_true",
                   help="also peak memory per real token (a fresh process per variant)")
    p.add_argument("--profile", action="store_true",
                   help="also torch.profiler's top ops of one packed step per objective")
    p.add_argument("--skip-st-trainer", action="store_true",
                   help="skip SentenceTransformerTrainer (the manual ST loop still runs)")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even if FLORES exists")
    p.add_argument("--override", action="append", default=[],
                   help="a hydra override for every clse variant (repeatable)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def quiet_libraries() -> None:
    import logging

    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # xsim's and sentence-transformers' bars
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_libraries()
    if args.threads is None and not args.device.startswith("cuda"):
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock is None:  # CPU time = work done only while a single compute thread runs
        args.clock = "cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    if args.memory_child:
        return memory_child(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no GPU")
    started = time.perf_counter()
    print("# Training throughput")
    for key, value in machine(device).items():
        print(f"{key}: {value}")
    if device.type == "cpu" and args.precision == "bf16" and \
            not {"avx512_bf16", "amx_bf16"} & cpu_flags():
        print("warning: this CPU has no bf16 instructions (avx512_bf16/amx_bf16): bf16 matmuls "
              "run far slower than fp32 here (70x for 1024x1024 on an AVX2 EPYC)")
    work = load_workload(args)
    print(f"data: {work.source}; {len(work.pairs)} pairs")
    print(f"model: preset {args.preset}, {args.precision}, batch {args.batch_size} pairs, max "
          f"length {args.max_length}; {args.warmup} warm-up step(s), then {args.repeats} rounds "
          f"x {args.steps} step(s) per variant\n")

    n = 2048 if device.type == "cpu" else 8192
    matmuls = [Matmul(n, device)] + ([Matmul(n, device, torch.bfloat16)]
                                     if args.precision == "bf16" else [])
    mm = matmuls[-1]  # the rate of the step's precision
    rounds = dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats)
    timed = args.steps * args.repeats
    metrics: dict[str, float] = {}
    steppers: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, list[Sample]]] = {}
    batches: dict[str, Batches] = {}
    cfgs: dict[str, Any] = {}
    st_folder = Path(tempfile.mkdtemp(prefix="clse-bench-st-"))

    # --- 1 and 2: real tokens/s of each variant, side by side
    clock = args.clock
    if clock == "cpu":
        print("clock: cpu (ratios and FLOP/s use the process' CPU time: with one compute thread "
              "it counts this process' work, not the time slices other jobs take from it; "
              "wall-clock ratios are shown beside)\n")
    else:
        print("clock: wall (ratios and FLOP/s use wall time)\n")
    for objective in OBJECTIVES:
        cfg = cfgs[objective] = compose(args, work, objective)
        start = time.perf_counter()
        steppers[objective] = {v: ClseStep(cfg, work, v, device) for v in VARIANTS}
        if objective == "dual":
            export_st(steppers["dual"]["padded_sdpa"], st_folder)  # before any step: same init
            steppers["dual"]["sentence_transformers"] = StStep(st_folder, cfg, work, device,
                                                               steppers["dual"]["packed"].dtype)
        batches[objective] = Batches(work, cfg, args.batch_size, timed)
        n_params = sum(p.numel() for p in steppers[objective]["packed"].params)
        print(f"## {objective}: {n_params / 1e6:.1f} M trained parameters, "
              f"{len(steppers[objective])} variants built in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        # phases need a sync after each part, which would drain a GPU's queue: CPU only
        res = results[objective] = interleave(
            steppers[objective], batches[objective], matmuls=matmuls,
            phases=device.type == "cpu", **rounds)
        print(throughput_table(res, steppers[objective], clock) + "\n")
        for suffix, c in (("", clock), ("_wall", "wall")):
            rate = {name: summary(v, c)["rate"] for name, v in res.items()}
            metrics[f"packed_over_padded_sdpa_{objective}{suffix}"] = \
                rate["packed"] / rate["padded_sdpa"]
            if objective == "dual":
                metrics[f"clse_over_sentence_transformers{suffix}"] = \
                    rate["packed"] / rate["sentence_transformers"]
        rate = {name: summary(v, clock)["rate"] for name, v in res.items()}
        for name in rate:
            metrics[f"tokens_per_s_{objective}_{name}"] = rate[name]
        for name in ("padded_eager", "bucketed_sdpa"):
            metrics[f"packed_over_{name}_{objective}"] = rate["packed"] / rate[name]
        for name in ("bucketed_sdpa", "packed_bucketed"):
            metrics[f"{name}_over_padded_sdpa_{objective}"] = rate[name] / rate["padded_sdpa"]
        metrics[f"padding_share_{objective}"] = summary(res["padded_sdpa"])["padding"]
        metrics[f"padding_share_bucketed_{objective}"] = summary(res["bucketed_sdpa"])["padding"]
        if objective == "dual":
            st = rate["sentence_transformers"]
            metrics["clse_padded_sdpa_over_sentence_transformers"] = rate["padded_sdpa"] / st
            metrics["clse_packed_bucketed_over_sentence_transformers"] = \
                rate["packed_bucketed"] / st

    # --- 2b: sentence-transformers' own Trainer (its own loop, so run after, on the same batches)
    if not args.skip_st_trainer:
        print("## sentence-transformers: SentenceTransformerTrainer on the same weights and "
              "batches, then clse dual packed again", flush=True)
        got = st_trainer_run(st_folder, cfgs["dual"], work,
                             [batches["dual"].random(k) for k in range(-args.warmup, timed)],
                             args, device)
        if isinstance(got, str):
            print(f"SentenceTransformerTrainer: {got}\n")
        else:
            again = interleave({"packed": steppers["dual"]["packed"]},
                               lambda name, k: batches["dual"].random(k), **rounds)
            clse = summary(results["dual"]["packed"] + again["packed"], clock)
            manual = summary(results["dual"]["sentence_transformers"], clock)
            trainer = summary(got, clock)
            rows = [["SentenceTransformerTrainer: data loading + ST collator + step",
                     f"{trainer['wall']:.2f}", f"{trainer['cpu']:.2f}", f"{trainer['rate']:.0f}"],
                    ["ST model + loss, manual loop (the rounds above)",
                     f"{manual['wall']:.2f}", f"{manual['cpu']:.2f}", f"{manual['rate']:.0f}"],
                    ["clse dual packed (the rounds above and the ones after the Trainer)",
                     f"{clse['wall']:.2f}", f"{clse['cpu']:.2f}", f"{clse['rate']:.0f}"]]
            print(table(["", "wall s/step", "CPU s/step", f"real tokens/s ({clock})"], rows)
                  + "\n")
            metrics["clse_over_sentence_transformers_trainer"] = clse["rate"] / trainer["rate"]

    # --- 3: FLOPs executed by one step, and the rate achieved over the matmul rate
    print("## FLOPs: what one step executed (FlopCounterMode, padding included) and on real "
          f"tokens (analytic); FLOP/s = FLOPs per real token x median real tokens/s ({clock})")
    for _ in range(3):
        for matmul in matmuls:
            matmul.sample()
    rows, model_rates = [], {}
    peak = mm.rate(clock)
    for objective in OBJECTIVES:
        for variant in ("packed", "padded_sdpa", "bucketed_sdpa", "packed_bucketed"):
            stepper = steppers[objective][variant]
            idx = batches[objective](variant, 0 if "bucketed" not in variant else -1)
            executed = count_flops(lambda: stepper(idx))
            useful = stepper.useful_flops(idx)
            real = stepper.collate(idx).real_tokens
            tokens_per_s = summary(results[objective][variant], clock)["rate"]
            achieved, model_rate = executed["total"] / real * tokens_per_s, \
                useful / real * tokens_per_s
            rows.append([objective, variant, f"{executed['total'] / 1e9:.0f}",
                         f"{100 * executed['attention'] / executed['total']:.0f} %",
                         f"{useful / 1e9:.0f}", f"{achieved / 1e9:.1f}",
                         f"{achieved / peak:.2f}", f"{model_rate / peak:.2f}"])
            metrics[f"flops_fraction_of_matmul_{objective}_{variant}"] = achieved / peak
            metrics[f"model_flops_fraction_of_matmul_{objective}_{variant}"] = model_rate / peak
            model_rates[f"{objective}_{variant}"] = model_rate
    metrics["flops_fraction_of_matmul"] = metrics["flops_fraction_of_matmul_mexma_packed"]
    for matmul in matmuls:
        metrics[f"matmul_{str(matmul.dtype)[6:]}_gflops_per_s"] = matmul.rate(clock) / 1e9
    print(table(["objective", "variant", "GFLOP executed", "of which attention",
                 "GFLOP on real tokens", "GFLOP/s executed", "of matmul rate",
                 "real-token FLOP/s of matmul rate"], rows))
    print(", ".join(f"matmul {m.n}x{m.n} {str(m.dtype)[6:]}: {m.rate(clock) / 1e9:.1f} GFLOP/s "
                    f"({clock}; wall clock {m.rate('wall') / 1e9:.1f}; median of "
                    f"{len(m.samples)}, interleaved with the steps)" for m in matmuls) + "\n")
    if device.type == "cuda":
        gpu = gpu_peak_bf16(device)
        if gpu is not None:
            for objective in OBJECTIVES:
                metrics[f"mfu_{objective}_packed"] = model_rates[f"{objective}_packed"] / gpu
            print(f"MFU ({torch.cuda.get_device_name(device)}, dense bf16 peak "
                  f"{gpu / 1e12:.0f} TFLOP/s; model FLOPs on real tokens): MEXMA packed "
                  f"{100 * metrics['mfu_mexma_packed']:.1f} %, dual packed "
                  f"{100 * metrics['mfu_dual_packed']:.1f} %\n")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                               if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for objective in OBJECTIVES:
            with profile(activities=activities) as prof:
                steppers[objective]["packed"](batches[objective].random(0))
            print(f"## Profile: one packed {objective} step, top ops by self time")
            print(prof.key_averages().table(sort_by=sort, row_limit=15) + "\n")

    # --- 4: peak memory per real token
    if args.memory:
        print("## Peak memory of a step per real token (a fresh process per variant; after one "
              "step, the peak of two more on the same batch above the memory held before them; "
              + ("max_memory_allocated" if device.type == "cuda" else
                 "peak RSS (VmHWM) above the RSS before the steps") + ")", flush=True)
        mem = measure_memory(args)
        rows = []
        for key, r in mem.items():
            rows.append([*key.split(":"), r["real"], r["padded"], f"{r['peak'] / 2**20:.0f}",
                         f"{r['peak'] / r['real'] / 1024:.1f}"])
        print(table(["objective", "variant", "real tokens", "padded tokens", "peak MiB",
                     "KiB per real token"], rows) + "\n")
        for objective in OBJECTIVES:
            a, b = mem.get(f"{objective}:padded_sdpa"), mem.get(f"{objective}:packed")
            if a and b and a["peak"] > 0 and b["peak"] > 0:
                metrics[f"memory_per_token_padded_sdpa_over_packed_{objective}"] = \
                    (a["peak"] / a["real"]) / (b["peak"] / b["real"])

    # --- 5: scaling
    if args.scaling:
        scaling(args, work, steppers, device, metrics)

    print(f"total wall time {time.perf_counter() - started:.0f} s; load average at the end "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()))
    first = ["packed_over_padded_sdpa_mexma", "packed_over_padded_sdpa_dual",
             "clse_over_sentence_transformers", "flops_fraction_of_matmul"]
    for name in first + sorted(set(metrics) - set(first)):
        value = metrics.get(name)
        if value is not None and math.isfinite(value):
            print(f"{name}={value:.4g}")


if __name__ == "__main__":
    main()
