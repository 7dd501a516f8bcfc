"""The shared training loop: every objective, alignment loss and regulariser runs through it.

Read top to bottom: data -> model -> optimizer -> (resume) -> steps (forward, losses, backward,
step, log, eval, checkpoint) -> final evaluation -> export. The loop never names a method: the
objective asks ``Views`` for the encoder passes it needs and returns named loss terms.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from clse import distributed
from clse.errors import ClseError, ConfigError
from clse.eval.model import EvalModel
from clse.eval.runner import run_evaluators
from clse.model import packing
from clse.progress import bars_off
from clse.train import checkpoint as ckpt
from clse.train import compiling
from clse.train import parallel
from clse.train.grad_cache import batch_encoder, grad_cache_backward
from clse.train.build import (autocast_dtype, build_components, load_pairs, resolve_device,
                              seed_everything)
from clse.train.schedule import lr_at

log = logging.getLogger("clse.train")


class NonFiniteError(ClseError):
    """A NaN/Inf loss or gradient (``trainer.nonfinite=stop``); the message names the step, the
    loss terms and the batch's languages. Checkpoints written before it are intact."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    export_dir: Path | None = None
    run_id: str | None = None


def evaluate(components, model, cfg: DictConfig, split: str, device, dtype,
             out_dir: Path | None = None) -> dict[str, float]:
    """The run's evaluators on ``split`` (the same runner as ``clse eval``)."""
    encoder = EvalModel(model, components.encoder.tokenizer, components.pooling,
                        max_length=cfg.eval.max_length, device=device, autocast_dtype=dtype,
                        prompt=components.encoder.prompt)
    return run_evaluators(encoder, components.evaluators, split, out_dir=out_dir)[0]


def pair_losses(comp, a: torch.Tensor, b: torch.Tensor,
                groups: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted alignment + regulariser of the sentence vectors, in fp32 outside autocast
    (KoLeo's log-distances and the contrastive softmax lose too much in bf16)."""
    a, b = a.float(), b.float()
    with torch.autocast(a.device.type, enabled=False):
        align = comp.alignment(a, b) if groups is None else comp.alignment(a, b, group_ids=groups)
        reg = (comp.regularizer(a) + comp.regularizer(b)) / 2
    loss = comp.alignment.weight * align + comp.regularizer.weight * reg
    return loss, {"alignment": align, "regularizer": reg}


def train(cfg: DictConfig, run_dir: Path, tracker=None) -> TrainResult:
    from clse.data.collate import Collator
    from clse.data.batching import planner_from_config
    from clse.data.sampling import LanguageSampler

    from clse.config import validate_train_config

    validate_train_config(cfg)  # wrong types and ranges: one ConfigError naming the key
    tcfg = cfg.trainer
    run_dir = Path(run_dir)
    seed_everything(cfg.seed, tcfg.deterministic)  # the same initial weights on every rank
    device = resolve_device(tcfg.device)
    distributed.init_from_env(device.type)  # torchrun: join the process group (else a no-op)
    device = parallel.device_for_rank(device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0  # owns the run folder, tracking, evaluation, checkpoints and the export
    if not main:
        tracker = None
    dtype = autocast_dtype(tcfg.precision, device)
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))

    # --- data: a sampler that is a pure function of (seed, step), so resuming needs no data state
    pairs = load_pairs(cfg.data)
    sampler = LanguageSampler(pairs, alpha=cfg.data.alpha, seed=cfg.seed, mix=cfg.data.mix)

    # --- model and losses (from the checkpoint's encoder folder when resuming)
    resume_from = ckpt.find_resumable(tcfg.resume) if tcfg.resume else None
    encoder_bundle = None
    if resume_from is not None:  # the checkpoint's encoder, with the options it trained with
        encoder_bundle = ckpt.load_encoder(resume_from, cfg.encoder)
    comp = parallel.build_on_ranks(
        lambda c: build_components(c, pairs, run_dir, encoder=encoder_bundle), cfg, run_dir)
    model = comp.encoder.model.to(device)
    extra = comp.objective.modules()
    if extra is not None:
        extra.to(device)
    # packed attention: the objective's views call `forward_model`; evaluation calls `model` padded
    forward_model = packing.configure_packing(model, extra, mode=cfg.encoder.get("packing", "auto"),
                                      backend=cfg.encoder.get("packing_backend", "auto"))
    packed = isinstance(forward_model, packing.PackedEncoder)
    packing_tag = packing.describe(forward_model, device, dtype)
    backend = compiling.backend_of(tcfg.get("compile", False))
    if backend is not None:
        forward_model = compiling.CompiledEncoder(forward_model, backend)
    collate = Collator(comp.encoder.tokenizer, max_length=cfg.data.max_length,
                       prompt=comp.encoder.prompt)
    token_cost = cfg.data.get("token_cost", "auto")
    if token_cost == "auto":  # what a batch costs: real tokens when packed, else its padded size
        token_cost = "packed" if packed else "padded"
    planner = planner_from_config({**cfg.data, "token_cost": token_cost}, sampler, pairs,
                                  comp.encoder.tokenizer, rank=rank, world_size=world,
                                  prompt=comp.encoder.prompt)
    grad_cache = tcfg.get("grad_cache_chunk")
    if grad_cache is not None and not getattr(comp.objective, "pair_only", False):
        raise ConfigError(f"trainer.grad_cache_chunk needs a dual encoder (objective=none); "
                          f"objective={cfg.objective.name} has loss terms of its own")
    amp = lambda: torch.autocast(device.type, dtype=dtype or torch.float32,  # noqa: E731
                                 enabled=dtype is not None)
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1 + 1000 * rank)
    if world > 1:  # each rank its own dropout stream (the weights are already equal)
        torch.manual_seed(cfg.seed + 1000 * rank)
    start, resumed = 0, None
    if resume_from is not None:  # objective modules and RNGs now, optimizer below; data: no state
        resumed = ckpt.restore(resume_from, extra_module=extra, mask_generator=mask_gen,
                               device=device, rank=rank)
        start = resumed.step
        log.info("resuming from %s at step %d", resume_from, start)

    # --- replication over ranks: the objective's whole forward is one DDP (or FSDP) module
    strategy = tcfg.get("strategy", "ddp")
    if resumed is not None and resumed.info.get("strategy", "ddp") != strategy:
        raise ConfigError(f"{resume_from} was written with trainer.strategy="
                          f"{resumed.info.get('strategy', 'ddp')}; resume with the same strategy")
    if grad_cache is not None and strategy == "fsdp":
        raise ConfigError("trainer.grad_cache_chunk does not work with trainer.strategy=fsdp")
    replicas = parallel.Replication(strategy, model, extra)
    step_fn = replicas.wrap(parallel.ObjectiveStep(forward_model, extra, comp.objective,
                                                   comp.pooling), device,
                            find_unused=bool(tcfg.get("find_unused_parameters", False)))
    params = list(model.parameters())  # after wrapping: FSDP replaces them by shards
    if extra is not None:
        seen = {id(p) for p in params}
        params += [p for p in extra.parameters() if id(p) not in seen]
    params = [p for p in params if p.requires_grad]  # e.g. a momentum encoder is not trained
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                  betas=tuple(tcfg.betas), eps=tcfg.eps)
    if resumed is not None:
        replicas.load_optimizer_state(optimizer, resumed.optimizer)
    # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    total_steps, accum = int(tcfg.steps), int(tcfg.grad_accum)
    nonfinite = tcfg.get("nonfinite", "stop")
    if nonfinite not in ("stop", "skip"):
        raise ConfigError(f"trainer.nonfinite must be stop or skip, got {nonfinite!r}")
    skipped = int(resumed.info.get("skipped_steps", 0)) if resumed is not None else 0
    skipped_in_a_row = 0
    n_params = sum(p.numel() for p in params) * (world if replicas.sharded else 1)
    if tracker is not None:
        model_cfg = comp.encoder.model.config
        tracker.set_tags({"clse.params": str(n_params), "clse.encoder": comp.encoder.source,
                          "clse.prompt": comp.encoder.prompt,
                          "clse.frozen_tensors": str(len(comp.encoder.frozen)),
                          "clse.dropout": json.dumps({k: getattr(model_cfg, k) for k in (
                              "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                              "attention_dropout") if hasattr(model_cfg, k)}),
                          "clse.packing": packing_tag,
                          "clse.resumed_from": str(resume_from or ""),
                          "clse.world_size": str(world), "clse.strategy": strategy})
        tracker.log_metrics({f"data/p_{k}": v for k, v in sampler.probabilities().items()}, step=0)

    # --- baseline: the untrained model on the final split, for "did it learn?"
    metrics: dict[str, float] = {}
    if start == 0 and cfg.eval.baseline and comp.evaluators and main:
        base = evaluate(comp, replicas.model, cfg, cfg.eval.final_split, device, dtype)
        metrics.update({f"untrained/{k}": v for k, v in base.items()})
        if tracker is not None:
            tracker.log_metrics({f"untrained/{k}": v for k, v in base.items()}, step=0)

    # contrastive alignments take the batch's duplicate groups (repeated sentences are no negatives)
    align_groups = "group_ids" in inspect.signature(comp.alignment.__call__).parameters
    model.train()
    if extra is not None:
        extra.train()
    bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="train",
               dynamic_ncols=True, disable=bars_off(cfg.progress) or not main)
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, lr=tcfg.lr, total_steps=total_steps, warmup_ratio=tcfg.warmup_ratio,
                   start_factor=tcfg.warmup_start_factor)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # --- forward and losses, over `accum` micro-batches
        logs: dict[str, float] = {}
        tokens, languages, problem = 0, set(), None
        for micro in range(accum):
            batch = collate([pairs[i] for i in planner.batch(step * accum + micro)]).to(device)
            tokens += batch.real_tokens
            languages.update(batch.a_lang + batch.b_lang)
            metrics_out: dict[str, float] = {}
            if grad_cache:  # dual encoder: encode in chunks, backward through cached vector grads
                loss, terms = grad_cache_backward(
                    batch_encoder(batch, forward_model, comp.pooling), len(batch), grad_cache,
                    lambda a, b: pair_losses(comp, a, b, batch.groups if align_groups else None),
                    scale=lambda value: scaler.scale(value / accum), context=amp)
            else:
                # DDP: sync gradients on the last micro-batch only
                last = micro == accum - 1 or not hasattr(step_fn, "no_sync")
                sync = contextlib.nullcontext() if last else step_fn.no_sync()
                with sync, amp():
                    out = step_fn(batch, mask_gen)
                terms = {f"objective/{k}": v for k, v in out.terms.items()}
                loss = comp.objective.weight * sum(out.terms.values(), torch.zeros((), device=device))
                if out.pair is not None:
                    pair_loss, pair_terms = pair_losses(
                        comp, *out.pair, batch.groups if align_groups else None)
                    loss, terms = loss + pair_loss, {**terms, **pair_terms}
                elif comp.alignment.weight or comp.regularizer.weight:  # never drop a loss silently
                    raise ConfigError(
                        f"objective={cfg.objective.name} returned no sentence pair (e.g. "
                        f"objective.sentence_pair=false), so alignment={cfg.alignment.name} and "
                        f"regularizer={cfg.regularizer.name} would not train; set both to none")
                metrics_out = out.metrics
            if not distributed.all_true(torch.isfinite(loss), device) and problem is None:
                problem = (f"non-finite loss at step {step + 1} (this rank's loss "
                           f"{loss.item():.4g}; " + ", ".join(
                               f"{k}={v.item():.4g}" for k, v in terms.items())
                           + f"; languages {sorted(set(batch.a_lang + batch.b_lang))})")
                if nonfinite == "stop":  # a collective check: every rank stops at this step
                    raise NonFiniteError(problem)
            if not grad_cache:  # (under `skip`, a non-finite backward keeps DDP's ranks in step)
                with sync:
                    scaler.scale(loss / accum).backward()
            for k, v in {**terms, "loss": loss}.items():
                logs[k] = logs.get(k, 0.0) + v.item() / accum
            for k, v in metrics_out.items():
                logs[f"objective/{k}"] = logs.get(f"objective/{k}", 0.0) + v / accum

        # --- step
        if grad_cache:  # its backward ran outside DDP: average the gradients over ranks here
            distributed.average_gradients(params)
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip_norm)
        # fp16's GradScaler skips inf steps itself (that is how it finds its scale)
        if problem is None and not torch.isfinite(grad_norm) and dtype is not torch.float16:
            problem = (f"non-finite gradient norm at step {step + 1} (loss "
                       f"{logs.get('loss', float('nan')):.4g}; languages {sorted(languages)})")
            if nonfinite == "stop":
                raise NonFiniteError(problem)
        if problem is None:
            scaler.step(optimizer)
            skipped_in_a_row = 0
        else:  # trainer.nonfinite=skip: drop this update, keep going, count it
            skipped += 1
            skipped_in_a_row += 1
            log.warning("%s: update skipped (%d so far)", problem, skipped)
            if skipped_in_a_row > int(tcfg.get("max_skipped_in_a_row", 10)):
                raise NonFiniteError(f"{problem}; {skipped_in_a_row} updates in a row were "
                                     "non-finite (trainer.max_skipped_in_a_row)")
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        done = step + 1

        # --- log
        logs.update({"lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens / elapsed,
                     "skipped_steps": skipped})
        bar.set_postfix(loss=f"{logs['loss']:.3f}", tok_s=f"{logs['tokens_per_s']:.0f}")
        if done % tcfg.log_every == 0 or done == total_steps:  # ranks average (tokens/s: sum)
            logs = distributed.mean_over_ranks(logs, device, summed=("tokens_per_s",))
            if tracker is not None:
                tracker.log_metrics({f"train/{k}": v for k, v in logs.items()}, step=done)

        # --- periodic evaluation and checkpoint (rank 0; the others wait)
        evaluating = bool(cfg.eval.every) and done % cfg.eval.every == 0 and done < total_steps
        saving = bool(tcfg.checkpoint_every) and (done % tcfg.checkpoint_every == 0
                                                  or done == total_steps)
        full_model, full_extra = replicas.full_modules() if evaluating or saving else (None, None)
        if evaluating and main:
            dev = evaluate(comp, full_model, cfg, cfg.eval.split, device, dtype)
            if tracker is not None:
                tracker.log_metrics(dev, step=done)
        if saving:
            rank_rng = parallel.rng_states(mask_gen) if world > 1 else None
            optimizer_state = replicas.optimizer_state(optimizer)
            if main:
                ckpt.save_checkpoint(run_dir / "checkpoints", step=done, encoder=full_model,
                                     tokenizer=comp.encoder.tokenizer, extra_module=full_extra,
                                     optimizer_state=optimizer_state, mask_generator=mask_gen,
                                     info={"objective": cfg.objective.name, "world_size": world,
                                           "strategy": strategy, "skipped_steps": skipped,
                                           "prompts": comp.encoder.prompts,
                                           "prompt_name": comp.encoder.prompt_name},
                                     keep=tcfg.keep_checkpoints, rank_rng=rank_rng)
        if evaluating or saving:
            distributed.barrier()
        if tcfg.stop_after and done >= tcfg.stop_after:  # testing aid: simulate a killed run
            bar.close()
            return TrainResult(run_dir, done, metrics)
    bar.close()
    model, extra = replicas.full_modules()  # FSDP: the trained weights gathered on rank 0
    if not main:  # evaluation, metrics and the export are rank 0's (no collective follows)
        return TrainResult(run_dir, total_steps, metrics)

    # --- final evaluation and export
    final_split = cfg.eval.final_split
    if comp.evaluators:
        for split in dict.fromkeys([cfg.eval.split, final_split]):  # tables/plots: <run>/eval/
            metrics.update(evaluate(comp, model, cfg, split, device, dtype,
                                    out_dir=run_dir / "eval" / split))
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in metrics.items() if not k.startswith("untrained/")},
                                step=total_steps)
            if (run_dir / "eval").is_dir():  # evaluators' tables and plots
                tracker.log_artifacts(run_dir / "eval", "eval")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    export_dir = None
    if tcfg.export:
        from clse.export import export_all

        export_dir = run_dir / "export"
        export_all(model.cpu(), comp.encoder.tokenizer, export_dir, pooling=cfg.pooling.name,
                   max_seq_length=cfg.eval.max_length, prompts=comp.encoder.prompts,
                   normalize=bool(cfg.pooling.get("normalize", False)),
                   default_prompt_name=comp.encoder.prompt_name)
        if tracker is not None:
            tracker.log_artifacts(export_dir, "model")
    if tracker is not None:
        tracker.log_artifact(run_dir / "metrics.json")
    return TrainResult(run_dir, total_steps, metrics, export_dir)
