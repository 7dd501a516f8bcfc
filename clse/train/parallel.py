"""Data parallelism for the shared loop (torchrun: DDP over ranks; one process: plain modules).

* Every rank builds the same model: rank 0 first (it trains the tokenizer into the run folder),
  then the others, loading that tokenizer instead of training their own.
* The objective's whole forward (every encoder view, the MEXMA head, ...) runs inside one
  ``DistributedDataParallel`` call of :class:`ObjectiveStep`, so DDP synchronises the gradients of
  the encoder and the objective's modules together, overlapped with the backward.
* Rank 0 owns the run folder, the MLflow run, evaluation, checkpoints and the export; the others
  wait at barriers (see :mod:`clse.train.loop`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from clse import distributed
from clse.interfaces import ObjectiveOutput, Views


class ObjectiveStep(nn.Module):
    """``(batch, mask generator) -> ObjectiveOutput``: what DDP wraps.

    ``forward_model`` is what views call (the packed wrapper or the encoder); ``extra`` holds the
    objective's own trainable modules. Both are registered, so their parameters are DDP's.
    """

    def __init__(self, forward_model: nn.Module, extra: nn.Module | None, objective, pooling):
        super().__init__()
        self.forward_model = forward_model
        self.extra = extra
        self.objective = objective
        self.pooling = pooling

    def forward(self, batch, generator: torch.Generator) -> ObjectiveOutput:
        return self.objective(Views(batch, self.forward_model, self.pooling, generator))


def wrap(step: ObjectiveStep, device: torch.device, *, find_unused: bool = False) -> nn.Module:
    """DDP around ``step`` under torchrun (frozen parameters are left out), else ``step``."""
    if not distributed.is_distributed():
        return step
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def build_on_ranks(build, cfg: DictConfig, run_dir: Path):
    """``build(cfg)`` on rank 0, then on the other ranks with rank 0's tokenizer (a tokenizer
    trained on each rank could differ, and the ranks' embedding tables must agree)."""
    if not distributed.is_distributed():
        return build(cfg)
    comp = build(cfg) if distributed.rank() == 0 else None
    distributed.barrier()
    if distributed.rank() != 0:
        trained = Path(run_dir) / "tokenizer"
        if trained.is_dir() and not cfg.encoder.get("tokenizer"):
            cfg = copy.deepcopy(cfg)
            with open_dict(cfg):
                cfg.encoder.tokenizer = str(trained)
        comp = build(cfg)
    return comp


def device_for_rank(device: torch.device) -> torch.device:
    """Each rank's own GPU (``LOCAL_RANK``) under torchrun; CPU stays CPU."""
    if device.type == "cuda" and distributed.is_distributed():
        return torch.device("cuda", distributed.local_rank())
    return device


def rng_states(generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states (global torch RNG and the masking generator), in rank order."""
    return distributed.gather_objects({"torch": torch.get_rng_state(),
                                       "mask": generator.get_state()})
