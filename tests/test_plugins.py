"""The registry: entry points loaded in isolation, lookups with clear errors, disabling by name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import clse.plugins as plugins_mod
from clse.errors import PluginError
from clse.hookspecs import PluginSpec, hookimpl


class FakeDist:
    name = "thirdparty"


class FakeEntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name, self._obj, self._error, self.dist = name, obj, error, FakeDist()

    def load(self):
        if self._error:
            raise self._error
        return self._obj


@dataclass
class CosineConfig:
    name: str = "cosine"
    weight: float = 1.0


class CosinePlugin:
    @hookimpl
    def clse_alignments(self):
        return [PluginSpec(kind="alignment", name="cosine", factory=lambda cfg: ("built", cfg),
                           config=CosineConfig, description="test")]


@pytest.fixture
def fake_eps(monkeypatch):
    def install(eps):
        monkeypatch.setattr(plugins_mod, "entry_points", lambda group: eps)
        plugins_mod.reset_registry()
        return plugins_mod.registry()

    yield install
    plugins_mod.reset_registry()


def test_broken_plugin_warns_and_others_load(fake_eps):
    with pytest.warns(UserWarning, match="skipping plugin 'broken'.*ImportError: no module foo"):
        reg = fake_eps([FakeEntryPoint("broken", error=ImportError("no module foo")),
                        FakeEntryPoint("cosine", obj=CosinePlugin())])
    assert reg.names("alignment") == ["cosine"]
    assert reg.failed[0].source == "broken" and reg.failed[0].package == "thirdparty"
    assert reg.all()[0].package == "thirdparty"


def test_strict_mode_makes_a_broken_plugin_fatal(fake_eps, monkeypatch):
    monkeypatch.setenv("CLSE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        fake_eps([FakeEntryPoint("broken", error=RuntimeError("boom"))])


def test_build_and_errors(fake_eps):
    reg = fake_eps([FakeEntryPoint("cosine", obj=CosinePlugin())])
    built, cfg = reg.build("alignment", {"name": "cosine", "weight": 2.0})
    assert built == "built" and cfg == CosineConfig(weight=2.0)
    with pytest.raises(PluginError, match="unknown alignment 'cosin'; available: cosine"):
        reg.get("alignment", "cosin")
    with pytest.raises(PluginError, match="no option.*'wieght'"):
        reg.build("alignment", {"name": "cosine", "wieght": 2.0})
    with pytest.raises(PluginError, match="unknown plugin kind"):
        reg.get("loss", "cosine")


def test_disable_by_name(fake_eps, monkeypatch):
    monkeypatch.setenv("CLSE_DISABLE_PLUGINS", "cosine")
    reg = fake_eps([FakeEntryPoint("cosine", obj=CosinePlugin())])
    with pytest.raises(PluginError, match="disabled"):
        reg.get("alignment", "cosine")


def test_config_without_name_field_is_rejected(fake_eps):
    @dataclass
    class NoName:
        weight: float = 1.0

    class Bad:
        @hookimpl
        def clse_poolings(self):
            return [PluginSpec(kind="pooling", name="bad", factory=lambda c: c, config=NoName)]

    with pytest.warns(UserWarning, match="needs a field `name"):
        reg = fake_eps([FakeEntryPoint("bad", obj=Bad()), FakeEntryPoint("cosine", obj=CosinePlugin())])
    assert reg.names("pooling") == [] and reg.names("alignment") == ["cosine"]
    assert reg.failed[0].source == "bad"


def test_raising_hook_is_isolated(fake_eps):
    class Raises:
        @hookimpl
        def clse_objectives(self):
            raise RuntimeError("bug in a third-party plugin")

    with pytest.warns(UserWarning, match="bug in a third-party plugin"):
        reg = fake_eps([FakeEntryPoint("raises", obj=Raises()), FakeEntryPoint("cosine", obj=CosinePlugin())])
    assert reg.names("alignment") == ["cosine"]


def test_builtins_come_from_entry_points():
    plugins_mod.reset_registry()
    reg = plugins_mod.registry()
    assert {"mexma"} <= set(reg.names("objective"))
    assert {"mse", "contrastive", "info_nce", "none"} <= set(reg.names("alignment"))
    assert {p.package for p in reg.all()} == {"clse"}
