"""Checkpoints that survive a kill at any moment.

A checkpoint is a folder ``step_XXXXXXXX/`` holding:

* ``encoder/``: the encoder as a Hugging Face folder (config, safetensors weights, tokenizer);
* ``extra.safetensors``: the objective's own modules (e.g. the MEXMA head) and RNG states;
* ``optimizer.pt``: the optimizer state (tensors and numbers only: loaded with weights_only=True);
* ``state.json``: the step and bookkeeping; ``manifest.json``: SHA-256 of every file, written last.

It is written into ``.tmp-step_XXXXXXXX`` and renamed into place, so a reader sees either a
complete checkpoint or none. A folder whose manifest is missing or does not match is skipped.
Deleting is the same in reverse: a checkpoint is renamed to ``.trash-step_XXXXXXXX`` before it is
removed, so a kill in the middle of a deletion never leaves a half-deleted ``step_*`` folder.
Leftovers of killed writes and deletions (``.tmp-*``, ``.trash-*``) are removed at the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clse.errors import ClseError

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames) durable; best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def _to_trash(path: Path) -> Path:
    """Rename ``path`` out of the ``step_*`` namespace (atomic); the caller deletes the result."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():  # the leftover of a deletion that a kill interrupted
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    return trash


@dataclass
class TrainState:
    step: int
    torch_rng: torch.Tensor
    mask_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    extra_modules: dict[str, torch.Tensor]
    optimizer: dict
    info: dict


def save_checkpoint(ckpt_dir: Path, *, step: int, encoder, tokenizer, extra_module: torch.nn.Module | None,
                    optimizer_state: dict, mask_generator: torch.Generator,
                    info: dict, keep: int = 2,
                    rank_rng: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a checkpoint atomically; ``rank_rng`` holds every rank's RNG states under DDP
    (rank 0 writes them all, so each rank resumes its own dropout and masking streams)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    encoder.save_pretrained(tmp / "encoder", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "encoder")
    tensors = {"rng.torch": torch.get_rng_state(), "rng.mask": mask_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for r, states in enumerate(rank_rng or []):
        tensors.update({f"rng.{name}.rank{r}": value for name, value in states.items()})
    if extra_module is not None:
        # tied weights (the head's vocabulary projection) live in the encoder: store each tensor once
        encoder_ptrs = {p.data_ptr() for p in encoder.parameters()}
        for key, value in extra_module.state_dict().items():
            if value.data_ptr() not in encoder_ptrs:
                tensors[f"module.{key}"] = value.detach().contiguous().clone()
    save_file(tensors, str(tmp / "extra.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **info}, indent=2))
    _fsync_tree(tmp)
    files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(files, indent=2))
    _fsync_tree(tmp)
    # the same step written again (a resume that skipped a broken step_N, or a new run in a used
    # folder): move the old one aside by renaming, never delete it in place, so that a kill leaves
    # no half-deleted step_N (the step is absent only between the two renames)
    trash = _to_trash(final) if final.exists() else None
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    _prune(ckpt_dir, keep, newest=final)
    return final


def verify(ckpt: Path) -> str | None:
    """None when ``ckpt`` is complete and intact, else what is wrong."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (the write did not finish)"
    try:
        files = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return "manifest.json is not valid JSON"
    for rel, digest in files.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel} is missing"
        if _sha256(path) != digest:
            return f"{rel} does not match its checksum (truncated or corrupt)"
    return None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))


def _prune(ckpt_dir: Path, keep: int, newest: Path | None = None) -> None:
    """Delete all but the ``keep`` newest intact checkpoints up to ``newest`` (the one just
    written) and the leftovers of killed writes and deletions (one writer per folder: rank 0).

    Only intact checkpoints count towards ``keep``, so a broken one never pushes the last good one
    out. Checkpoints of later steps than ``newest`` (another run's, when a run was started or
    resumed from an earlier step in a used folder) are neither counted nor deleted: counting them
    would delete the checkpoint just written.
    """
    for leftover in ckpt_dir.iterdir():
        if leftover.name.startswith((".tmp-step_", ".trash-step_")) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    if keep <= 0:
        return
    ckpts = list_checkpoints(ckpt_dir)
    if newest is not None:
        ckpts = [p for p in ckpts if p.name <= newest.name]
    good = [p for p in ckpts if verify(p) is None]
    for old in good[:-keep]:
        shutil.rmtree(_to_trash(old), ignore_errors=True)


def find_resumable(path: str | Path) -> Path:
    """The newest intact checkpoint in a run folder, a checkpoints folder, or the checkpoint itself."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ClseError(f"trainer.resume={path}: no such file or folder")
    if (path / MANIFEST).exists() or path.name.startswith("step_"):
        problem = verify(path)
        if problem:
            raise ClseError(f"checkpoint {path} is not usable: {problem}")
        return path
    for ckpt_dir in (path / "checkpoints", path):
        candidates = list_checkpoints(ckpt_dir)
        for ckpt in reversed(candidates):
            problem = verify(ckpt)
            if problem is None:
                return ckpt
            import warnings

            warnings.warn(f"skipping checkpoint {ckpt}: {problem}; trying the previous one",
                          stacklevel=2)
    raise ClseError(f"trainer.resume={path}: no intact checkpoint found "
                    f"(looked for step_*/ folders with a matching manifest.json)")


def restore(ckpt: Path, *, extra_module: torch.nn.Module | None,
            mask_generator: torch.Generator, device: torch.device, rank: int = 0) -> TrainState:
    """Load the objective's modules and the RNG states in place (the encoder is built from
    ``ckpt/encoder``; the optimizer state is in the returned state, for the trainer to load once
    its optimizer exists). ``rank`` picks that rank's RNG streams when saved per rank."""
    state = load_state(ckpt, rank)
    if extra_module is not None:
        result = extra_module.load_state_dict(state.extra_modules, strict=False)
        tied = ("embeddings.",)  # stored once, in the encoder
        missing = [k for k in result.missing_keys if not k.startswith(tied)]
        if missing or result.unexpected_keys:
            raise ClseError(f"checkpoint {ckpt} does not match the configured objective: "
                            f"missing {missing}, unexpected {result.unexpected_keys}")
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)
    mask_generator.set_state(state.mask_rng)
    return state


def load_state(ckpt: Path, rank: int = 0) -> TrainState:
    tensors = load_file(str(ckpt / "extra.safetensors"))
    for name in ("torch", "mask", "cuda"):  # this rank's streams, when saved per rank
        if f"rng.{name}.rank{rank}" in tensors:
            tensors[f"rng.{name}"] = tensors[f"rng.{name}.rank{rank}"]
    info = json.loads((ckpt / "state.json").read_text())
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")
    modules = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
    return TrainState(step=int(info["step"]), torch_rng=tensors["rng.torch"],
                      mask_rng=tensors["rng.mask"], cuda_rng=tensors.get("rng.cuda"),
                      extra_modules=modules, optimizer=optimizer,
                      info=info)


def load_encoder(ckpt: Path, encoder_cfg):
    """The encoder of checkpoint ``ckpt`` with the options of its run: the configured dropouts
    and frozen parts, and the prompts it trained with (recorded in ``state.json``)."""
    from clse.model.loader import load_encoder as load, prepare

    state = json.loads((ckpt / "state.json").read_text())
    bundle = load(ckpt / "encoder", attn_implementation=encoder_cfg.get("attn_implementation", "sdpa"),
                  hidden_dropout=encoder_cfg.get("hidden_dropout"),
                  attention_dropout=encoder_cfg.get("attention_dropout"))
    return prepare(bundle, prompts=state.get("prompts", {}), prompt=state.get("prompt_name") or "",
                   freeze_parts=encoder_cfg.get("freeze") or [])
