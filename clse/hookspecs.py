"""The plugin contract: pluggy hook specifications.

A plugin is a Python module (or object) registered under the entry-point group ``clse``. It
implements one or more of the hooks below, each returning a list of :class:`PluginSpec`. Built-in
plugins (in ``plugins/``) use exactly the same mechanism as third-party packages.

Example (a third-party ``my_pkg/my_loss.py``)::

    from clse.hookspecs import hookimpl, PluginSpec

    @hookimpl
    def clse_alignments():
        return [PluginSpec(kind="alignment", name="cosine", factory=build, config=CosineConfig)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

PROJECT = "clse"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

KINDS = ("encoder", "pooling", "objective", "alignment", "regularizer", "evaluator")


@dataclass(frozen=True)
class PluginSpec:
    """One named, configurable component.

    Attributes:
        kind: one of :data:`KINDS`; it is also the hydra config group (``objective=NAME``).
        name: the name users select it by.
        factory: ``factory(cfg) -> component``; ``cfg`` is an instance of ``config``
            (or an omegaconf node with the same keys).
        config: a dataclass with a ``name: str`` field defaulting to ``name``. It is registered
            in hydra's ConfigStore as ``<kind>/<name>``, so ``clse train <kind>=<name>`` works
            without any YAML file. ``None`` means the plugin takes no options.
        description: one line shown by ``clse plugins``.
        takes_encoder: a pooling whose factory needs the encoder (``factory(cfg,
            encoder=EncoderBundle)``), e.g. one with trainable weights it attaches to the model.
    """

    kind: str
    name: str
    factory: Callable[[Any], Any]
    config: type | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    takes_encoder: bool = False


class ClseHookSpecs:
    """Hook specifications. Each returns the plugins of one kind that the implementer provides."""

    @hookspec
    def clse_encoders(self) -> list[PluginSpec]:
        """Encoders: ``factory(cfg, texts=..., work_dir=...) -> EncoderBundle`` (model + tokenizer).

        ``texts()`` yields training sentences (for a tokenizer trained locally); ``work_dir`` is
        the run folder, where such a tokenizer is saved.
        """

    @hookspec
    def clse_poolings(self) -> list[PluginSpec]:
        """Poolings: ``factory(cfg) -> Pooling`` mapping (hidden, mask) to sentence vectors
        (``factory(cfg, encoder=EncoderBundle)`` when the spec says ``takes_encoder``)."""

    @hookspec
    def clse_objectives(self) -> list[PluginSpec]:
        """Token-level objectives: ``factory(cfg, encoder=EncoderBundle) -> Objective``."""

    @hookspec
    def clse_alignments(self) -> list[PluginSpec]:
        """Sentence-level alignment losses: ``factory(cfg) -> Alignment``."""

    @hookspec
    def clse_regularizers(self) -> list[PluginSpec]:
        """Regularisers on sentence vectors (e.g. KoLeo): ``factory(cfg) -> Regularizer``."""

    @hookspec
    def clse_evaluators(self) -> list[PluginSpec]:
        """Evaluators: ``factory(cfg) -> Evaluator``."""

    @hookspec
    def clse_config_dirs(self) -> list[str]:
        """Extra directories of hydra YAML config groups (``objective/NAME.yaml`` ...)."""
