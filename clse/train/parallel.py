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
from clse.errors import ConfigError
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


STRATEGIES = ("ddp", "fsdp")


class Replication:
    """How the ranks hold the model: one process or DDP (every rank a full copy) or FSDP
    (parameters, gradients and optimizer state sharded over ranks, for models that do not fit).

    ``full_modules()`` gives rank 0 the whole encoder and objective modules for evaluation,
    checkpoints and the export: the trained modules themselves under DDP, an unsharded copy
    refreshed from the shards (a collective: every rank calls it) under FSDP.
    """

    def __init__(self, strategy: str, model: nn.Module, extra: nn.Module | None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.sharded = strategy == "fsdp" and distributed.is_distributed()
        self.model, self.extra = model, extra
        self._trained = (model, extra)
        self._step: nn.Module | None = None
        if self.sharded and distributed.rank() == 0:  # rank 0's unsharded copies (ties kept)
            self.model, self.extra = copy.deepcopy((model, extra))

    def wrap(self, step: ObjectiveStep, device: torch.device, *, find_unused: bool = False) -> nn.Module:
        """DDP or FSDP around ``step`` under torchrun (frozen parameters stay out), else ``step``."""
        self._step = step
        if not distributed.is_distributed():
            return step
        if self.sharded:
            from torch.distributed.fsdp import fully_shard
            from transformers.modeling_layers import GradientCheckpointingLayer

            for module in step.modules():  # one FSDP unit per transformer block, then the rest
                if isinstance(module, GradientCheckpointingLayer):
                    fully_shard(module)
            return fully_shard(step)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused, broadcast_buffers=False)

    def full_modules(self) -> tuple[nn.Module, nn.Module | None]:
        """(encoder, objective modules) with the current weights, on rank 0."""
        if not self.sharded:
            return self.model, self.extra
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self._step, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))  # collective; only rank 0 receives it
        if distributed.rank() == 0:
            names = {id(m): n for n, m in self._step.named_modules()}
            for copy_, trained in zip((self.model, self.extra), self._trained):
                if copy_ is not None:
                    prefix = names[id(trained)] + "."
                    # strict for the encoder; the head's tied embedding lives in the encoder
                    copy_.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                           if k.startswith(prefix)}, strict=copy_ is self.model)
        return self.model, self.extra

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """What a checkpoint stores (under FSDP gathered on rank 0, keyed by parameter name)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self._step, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self._step, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))



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
