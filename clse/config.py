"""Hydra/OmegaConf glue: plugin dataclasses in the ConfigStore, resolvers, friendly validation."""

from __future__ import annotations

import warnings

from omegaconf import OmegaConf

from clse.plugins import registry

# ConfigStore groups of plugin kinds (the trainer's config groups use the same names)
GROUP_OF_KIND = {"encoder": "encoder", "pooling": "pooling", "objective": "objective",
                 "alignment": "alignment", "regularizer": "regularizer", "evaluator": "evaluator"}


def _data_path(rel: str = "") -> str:
    from clse.paths import require_data_root

    root = require_data_root(f"${{clse_data:{rel}}}")
    return str(root / rel) if rel else str(root)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("clse_data"):
        OmegaConf.register_new_resolver("clse_data", _data_path)


def register_plugin_configs() -> None:
    """Store each plugin's config dataclass as ``<group>/<name>`` (``objective=mexma`` works)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for loaded in registry().all():
        spec = loaded.spec
        group = GROUP_OF_KIND[spec.kind]
        try:
            node = {"name": spec.name} if spec.config is None else OmegaConf.structured(spec.config())
        except Exception as exc:  # e.g. a field without a default: skip that plugin, say why
            warnings.warn(f"clse: {spec.kind} {spec.name!r} ({loaded.package}) has a config that "
                          f"cannot be built with defaults and is not selectable: {exc}", stacklevel=2)
            continue
        cs.store(group=group, name=spec.name, node=node, provider=loaded.package)


def register_search_path_plugin() -> None:
    """Make hydra use clse's search-path plugin even where namespace-package scanning misses it."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    from hydra_plugins.clse_searchpath import ClseSearchPathPlugin

    plugins = Plugins.instance()
    if ClseSearchPathPlugin not in plugins.discover(SearchPathPlugin):
        plugins.register(ClseSearchPathPlugin)


def setup() -> None:
    register_resolvers()
    register_plugin_configs()
    register_search_path_plugin()
