"""``trainer.compile``: ``torch.compile`` the encoder forward, failing with a clse error.

``true`` means the default backend (inductor, which generates C++/Triton code and needs a working
compiler toolchain); a backend name picks another one, e.g. ``aot_eager`` (graph capture and
AOT autograd without code generation: no compiler needed). Shapes are dynamic because packed
rows change length every step.
"""

from __future__ import annotations

import torch
from torch import nn

from clse.errors import ConfigError

BACKENDS = ("inductor", "aot_eager", "eager")


def backend_of(option: bool | str) -> str | None:
    """The backend a ``trainer.compile`` value asks for (None: do not compile)."""
    if option is False or option is None:
        return None
    backend = "inductor" if option is True else str(option)
    if backend not in BACKENDS:
        raise ConfigError(f"trainer.compile must be true, false or one of {', '.join(BACKENDS)}, "
                          f"got {option!r}")
    return backend


class CompiledEncoder(nn.Module):
    """Calls a compiled copy of ``model``; its parameters stay registered under ``model``.

    A backend that cannot build the graph (no C++ compiler, an unsupported op) fails at the first
    call; that failure becomes a :class:`ConfigError` naming the option and the fallbacks.
    """

    def __init__(self, model: nn.Module, backend: str):
        super().__init__()
        self.model, self.backend = model, backend
        # not registered as a submodule: it shares `model`'s parameters
        object.__setattr__(self, "_compiled", torch.compile(model, dynamic=True, backend=backend))

    @property
    def config(self):  # what callers read from the encoder (attention implementation, sizes)
        return self.model.config

    def forward(self, *args, **kwargs):
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"trainer.compile={self.backend}: torch.compile could not build the encoder "
                f"({reason}). Use trainer.compile=aot_eager (needs no C++ compiler) or "
                f"trainer.compile=false") from exc
