"""Plugin discovery: built-ins and third-party packages through the ``clse`` entry-point group.

Each entry point is loaded in isolation: one that fails to import is reported as a warning and
skipped, so a broken third-party package cannot take the CLI down (set ``CLSE_STRICT_PLUGINS=1``
to make it fatal). ``CLSE_DISABLE_PLUGINS=name1,name2`` disables entry points or plugin names.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from clse.errors import PluginError
from clse.hookspecs import KINDS, PROJECT, ClseHookSpecs, PluginSpec

_HOOK_OF_KIND = {
    "encoder": "clse_encoders",
    "pooling": "clse_poolings",
    "objective": "clse_objectives",
    "alignment": "clse_alignments",
    "regularizer": "clse_regularizers",
    "evaluator": "clse_evaluators",
}


@dataclass(frozen=True)
class LoadedPlugin:
    spec: PluginSpec
    source: str  # entry point name
    package: str  # distribution providing it


@dataclass(frozen=True)
class FailedPlugin:
    source: str
    package: str
    error: str


def _strict() -> bool:
    return os.environ.get("CLSE_STRICT_PLUGINS", "") not in ("", "0", "false")


def _disabled() -> set[str]:
    raw = os.environ.get("CLSE_DISABLE_PLUGINS", "")
    return {x.strip() for x in raw.split(",") if x.strip()}


class Registry:
    """All plugins known to this process, looked up by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, sources: dict[int, tuple[str, str]],
                 failed: list[FailedPlugin], disabled: set[str]):
        self.pm = pm
        self.failed = failed
        self.disabled = disabled
        self._by_kind: dict[str, dict[str, LoadedPlugin]] = {k: {} for k in KINDS}
        for kind, hook_name in _HOOK_OF_KIND.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                source, package = sources.get(id(impl.plugin), (impl.plugin_name, "?"))
                try:
                    for spec in impl.function() or []:
                        self._add(kind, spec, source, package)
                except Exception as exc:  # one plugin's broken hook must not take clse down
                    if _strict():
                        raise
                    self.failed.append(FailedPlugin(source, package, f"{type(exc).__name__}: {exc}"))
                    warnings.warn(f"clse: skipping {kind} plugins of {source!r} ({package}): "
                                  f"{type(exc).__name__}: {exc}", stacklevel=2)

    def _add(self, kind: str, spec: PluginSpec, source: str, package: str) -> None:
        if spec.kind != kind:
            raise PluginError(f"plugin {spec.name!r} from {package} declares kind {spec.kind!r} "
                              f"but is returned by the {kind} hook")
        if spec.name in self.disabled:
            return
        if spec.config is not None:
            names = {f.name for f in dataclasses.fields(spec.config)}
            if "name" not in names:
                raise PluginError(f"{kind} plugin {spec.name!r} ({package}): its config dataclass "
                                  f"{spec.config.__name__} needs a field `name: str = {spec.name!r}`")
        other = self._by_kind[kind].get(spec.name)
        if other is not None:
            warnings.warn(f"{kind} plugin {spec.name!r} from {package} overrides the one from "
                          f"{other.package}", stacklevel=2)
        self._by_kind[kind][spec.name] = LoadedPlugin(spec, source, package)

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def all(self) -> list[LoadedPlugin]:
        return [p for kind in KINDS for _, p in sorted(self._by_kind[kind].items())]

    def get(self, kind: str, name: str) -> PluginSpec:
        if kind not in self._by_kind:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
        try:
            return self._by_kind[kind][name].spec
        except KeyError:
            avail = ", ".join(self.names(kind)) or "(none)"
            hint = " (it is disabled by CLSE_DISABLE_PLUGINS)" if name in self.disabled else ""
            raise PluginError(f"unknown {kind} {name!r}{hint}; available: {avail}") from None

    def build(self, kind: str, cfg: Any, **kwargs: Any) -> Any:
        """Build the component selected by ``cfg.name`` with ``cfg`` as its options."""
        name = cfg["name"] if isinstance(cfg, dict) else getattr(cfg, "name", None)
        if name is None:
            raise PluginError(f"the {kind} config has no `name`; choose one of {self.names(kind)}")
        spec = self.get(kind, name)
        if kind == "pooling":  # the encoder only for poolings that declare they need it
            encoder = kwargs.pop("encoder", None)
            if spec.takes_encoder:
                if encoder is None:
                    raise PluginError(f"pooling {name!r} needs the encoder it pools (its weights "
                                      f"live in the model); build it with encoder=...")
                kwargs["encoder"] = encoder
        return spec.factory(to_dataclass(spec, cfg), **kwargs)

    def config_dirs(self) -> list[str]:
        dirs: list[str] = []
        for result in self.pm.hook.clse_config_dirs():
            dirs.extend(result or [])
        return dirs


def to_dataclass(spec: PluginSpec, cfg: Any) -> Any:
    """Turn a (hydra/omegaconf or dict) plugin config into the plugin's config dataclass."""
    if spec.config is None:
        return cfg
    if isinstance(cfg, spec.config):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    known = {f.name for f in dataclasses.fields(spec.config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PluginError(f"{spec.kind} {spec.name!r} has no option(s) {unknown}; "
                          f"options are: {sorted(known)}")
    return spec.config(**data)


def _load_entry_points(pm: pluggy.PluginManager, disabled: set[str]):
    strict = _strict()
    sources: dict[int, tuple[str, str]] = {}
    failed: list[FailedPlugin] = []
    seen: set[str] = set()
    for ep in entry_points(group=PROJECT):
        package = ep.dist.name if ep.dist is not None else "?"
        if ep.name in disabled:
            continue
        if ep.name in seen:
            warnings.warn(f"clse: entry point {ep.name!r} of {package} has the name of one already "
                          f"loaded and is ignored; rename it in that package's pyproject.toml",
                          stacklevel=2)
            continue
        seen.add(ep.name)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take clse down
            if strict:
                raise PluginError(f"plugin {ep.name!r} ({package}) failed to load: {exc}") from exc
            failed.append(FailedPlugin(ep.name, package, f"{type(exc).__name__}: {exc}"))
            warnings.warn(f"clse: skipping plugin {ep.name!r} from {package}: "
                          f"{type(exc).__name__}: {exc} (set CLSE_STRICT_PLUGINS=1 to fail instead)",
                          stacklevel=2)
            continue
        sources[id(plugin)] = (ep.name, package)
    return sources, failed


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (entry points are read once)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ClseHookSpecs)
    disabled = _disabled()
    sources, failed = _load_entry_points(pm, disabled)
    return Registry(pm, sources, failed, disabled)


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin at run time)."""
    registry.cache_clear()
