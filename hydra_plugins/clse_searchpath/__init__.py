"""Hydra search-path plugin: adds the config folders of clse plugin packages.

Hydra has no entry-point discovery of config groups; it scans the ``hydra_plugins`` namespace
package. This plugin asks clse's pluggy registry (entry-point group ``clse``) for the folders that
plugin packages declare through the ``clse_config_dirs`` hook, so a third-party package only
declares an entry point and ships YAML (or registers dataclasses, which need no folder).
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ClseSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        try:
            from clse.plugins import registry

            dirs = registry().config_dirs()
        except Exception:  # never break hydra for other applications
            return
        for folder in dirs:
            search_path.append(provider="clse-plugin", path=f"file://{folder}")
