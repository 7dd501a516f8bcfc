"""Hydra/OmegaConf glue: plugin dataclasses in the ConfigStore, resolvers, friendly validation."""

from __future__ import annotations

import dataclasses

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
        if spec.config is None:
            node = {"name": spec.name}
        else:
            node = spec.config()
            if dataclasses.is_dataclass(node):
                node = OmegaConf.structured(node)
        cs.store(group=group, name=spec.name, node=node, provider=loaded.package)


def setup() -> None:
    register_resolvers()
    register_plugin_configs()
