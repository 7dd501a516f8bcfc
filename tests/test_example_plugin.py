"""The third-party example package (examples/clse-example-plugin) end to end.

* unit tests of its alignment loss and pooling against independent loop computations;
* the round trip a stranger makes: build and install the package (into a temporary folder, never
  into this environment), then `clse plugins`, `clse train` with the new plugins, a YAML preset,
  and `CLSE_DISABLE_PLUGINS`, each in a subprocess that sees the package through PYTHONPATH.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clse.plugins as plugins_mod

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "clse-example-plugin"
PACKAGE = "clse-example-plugin"
ALIGNMENT, POOLING = "hard_negative_margin", "max_tokens"
# the fast overrides of tests/test_cli.py, cut further: no MEXMA heads, no evaluation, no export
# (the SentenceTransformers export knows only cls and mean pooling)
TINY = [
    "quickstart=none", "objective=none", "regularizer=none", "encoder.vocab_size=300", "encoder.tokenizer_sample=1000",
    "data.batch_size=8", "data.max_length=32", "trainer.steps=3", "trainer.log_every=1",
    "trainer.checkpoint_every=0", "progress=false", "eval=none", "trainer.export=false",
]


def _forget_example_modules() -> None:
    for name in [m for m in sys.modules if m == "clse_example" or m.startswith("clse_example.")]:
        del sys.modules[name]


@pytest.fixture
def example(monkeypatch):
    """The example modules, imported from the source tree (sys.path is restored afterwards)."""
    _forget_example_modules()  # a copy imported from the installed folder by another test
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    hnm = importlib.import_module("clse_example.hard_negative_margin")
    pool = importlib.import_module("clse_example.max_pooling")
    assert Path(hnm.__file__).is_relative_to(EXAMPLE_DIR)
    return hnm, pool


# ----------------------------------------------------------------------------- the loss
def _cos(x: list[float], y: list[float]) -> float:
    dot = sum(p * q for p, q in zip(x, y))
    return dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y)))


def same_sentence_groups(a: list, b: list, groups: list | None) -> list[int]:
    """Union-find over "equal a row, equal b row or equal group id": the group root of each row."""
    root = list(range(len(a)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for i in range(len(a)):
        for j in range(i):
            if a[i] == a[j] or b[i] == b[j] or (groups is not None and groups[i] == groups[j]):
                root[find(i)] = find(j)
    return [find(i) for i in range(len(a))]


def reference_loss(a, b, margin, hardest, groups=None) -> float:
    """VSE++ / VSE0 written out pair by pair, in plain Python floats."""
    a, b = a.tolist(), b.tolist()
    n = len(a)
    group = same_sentence_groups(a, b, groups)
    total = 0.0
    for i in range(n):
        negatives = [j for j in range(n) if group[j] != group[i]]
        pos = _cos(a[i], b[i])
        hinge_ab = [max(0.0, margin - pos + _cos(a[i], b[j])) for j in negatives]  # query a_i
        hinge_ba = [max(0.0, margin - pos + _cos(a[j], b[i])) for j in negatives]  # query b_i
        if hardest:
            total += max(hinge_ab, default=0.0) + max(hinge_ba, default=0.0)
        else:
            total += sum(hinge_ab) + sum(hinge_ba)
    return total / n


@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.7])
def test_loss_matches_the_pairwise_definition(example, hardest, margin):
    hnm, _ = example
    g = torch.Generator().manual_seed(int(margin * 10) + hardest)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    b[2] = 0.9 * a[2] + 0.1 * b[2]  # one easy pair, so some hinges are inactive
    got = hnm.hard_negative_margin(a, b, margin=margin, hardest=hardest)
    assert got.shape == ()
    assert got.item() == pytest.approx(reference_loss(a, b, margin, hardest), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("hardest", [True, False])
def test_duplicates_and_groups_are_not_negatives(example, hardest):
    hnm, _ = example
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a[4] = a[1]  # the same source sentence twice (its translations differ)
    b[5] = b[0]  # the same target sentence twice
    # pair 2 aligned, pair 3 a near copy of it: unmasked, each is the other's hardest negative
    b[2] = a[2] + 0.1 * b[2]
    a[3], b[3] = a[2] + 0.01 * a[3], b[2] + 0.01 * b[3]
    groups = torch.tensor([0, 1, 2, 2, 3, 4])  # rows 2 and 3 share a group
    plain = hnm.hard_negative_margin(a, b, hardest=hardest)
    masked = hnm.hard_negative_margin(a, b, hardest=hardest, group_ids=groups)
    assert plain.item() == pytest.approx(reference_loss(a, b, 0.2, hardest), rel=1e-5)
    assert masked.item() == pytest.approx(reference_loss(a, b, 0.2, hardest, groups.tolist()),
                                          rel=1e-5)
    assert masked.item() != pytest.approx(plain.item())  # the shared group does matter here
    # orthonormal pairs (negatives at cosine 0) plus a copy of pair 0: used as a negative, the
    # copy would sit at cosine 1 and cost the margin; masked, nothing is violated
    eye = torch.eye(3)
    dup = torch.cat([eye, eye[:1]])  # (4, 3): row 3 repeats row 0
    assert hnm.hard_negative_margin(dup, dup, margin=0.2, hardest=hardest).item() == 0.0


def test_loss_closed_forms_and_edge_cases(example):
    hnm, _ = example
    eye = torch.eye(4)  # S = I: positives at cosine 1, negatives at 0
    assert hnm.hard_negative_margin(eye, eye, margin=0.2).item() == pytest.approx(0.0)
    # margin 1.5: each hinge is 1.5 - 1 + 0 = 0.5; hardest: 2 directions; sum: 3 negatives each
    assert hnm.hard_negative_margin(eye, eye, margin=1.5).item() == pytest.approx(1.0)
    summed = hnm.hard_negative_margin(eye, eye, margin=1.5, hardest=False)
    assert summed.item() == pytest.approx(3.0)
    # no negatives at all (one pair; a batch of copies): 0 and finite gradients, not NaN
    for a in (torch.randn(1, 3), torch.randn(1, 3).expand(4, 3)):
        a = a.clone().requires_grad_(True)
        loss = hnm.hard_negative_margin(a, a.detach() + 1.0, margin=0.5)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="expected two"):
        hnm.hard_negative_margin(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="margin"):
        hnm.hard_negative_margin(torch.randn(3, 4), torch.randn(3, 4), margin=-0.1)


@pytest.mark.parametrize("hardest", [True, False])
def test_loss_gradients(example, hardest):
    hnm, _ = example
    g = torch.Generator().manual_seed(5)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y: hnm.hard_negative_margin(x, y, margin=0.5, hardest=hardest), (a, b))


def test_alignment_object(example):
    import inspect

    hnm, _ = example
    align = hnm.build(hnm.HardNegativeMarginConfig(weight=2.0, margin=0.1, hardest=False))
    assert align.weight == 2.0  # the loop reads it
    # the loop passes the batch's duplicate groups only to a __call__ that declares group_ids
    assert "group_ids" in inspect.signature(align.__call__).parameters
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    groups = torch.tensor([0, 0, 1, 2])
    assert align(a, b, group_ids=groups).item() == pytest.approx(
        reference_loss(a, b, 0.1, False, groups.tolist()), rel=1e-5)


# ----------------------------------------------------------------------------- the pooling
def reference_max(hidden, mask):
    out = torch.zeros(hidden.shape[0], hidden.shape[2], dtype=hidden.dtype)
    for r in range(hidden.shape[0]):
        tokens = [t for t in range(hidden.shape[1]) if mask[r, t]]
        for d in range(hidden.shape[2]):
            out[r, d] = max((float(hidden[r, t, d]) for t in tokens), default=0.0)
    return out


def test_max_pool_ignores_padding(example):
    _, pool = example
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 5, generator=g) - 3.0  # mostly negative: a zeroed pad would win
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]])
    hidden[mask == 0] = 100.0  # padding states must never be picked
    got = pool.build(pool.MaxPoolingConfig())(hidden, mask)
    assert got.shape == (4, 5)
    torch.testing.assert_close(got, reference_max(hidden, mask))
    assert (got[:3] < 0).all() and (got[3] == 0).all()  # the empty row gives zeros
    # left padding gives the same vector as right padding
    left = torch.cat([hidden[1:2, 4:], hidden[1:2, :4]], dim=1)
    torch.testing.assert_close(pool.max_pool(left, mask[1:2].flip(1)), got[1:2])


def test_max_pool_gradient_and_half_precision(example):
    _, pool = example
    hidden = torch.tensor([[[1.0, 5.0], [3.0, 2.0], [9.0, 9.0]]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    out = pool.max_pool(hidden, mask)
    out.sum().backward()
    assert out.tolist() == [[3.0, 5.0]]
    assert hidden.grad.tolist() == [[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]]  # only the maxima
    half = pool.max_pool(hidden.detach().bfloat16(), torch.tensor([[0, 0, 0]]))
    assert half.dtype == torch.bfloat16 and (half == 0).all()


# ----------------------------------------------------------------------------- install round trip
def _missing_build_tools() -> str | None:
    """Why the example cannot be built offline here, or None."""
    for module in ("pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable"
    from packaging.version import Version  # a dependency of transformers

    # setuptools < 70.1 builds wheels through the separate `wheel` package
    if (Version(importlib.metadata.version("setuptools")) < Version("70.1")
            and importlib.util.find_spec("wheel") is None):
        return "setuptools < 70.1 without the wheel package"
    return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package built and installed into a temporary --target folder (offline)."""
    missing = _missing_build_tools()
    if missing:
        pytest.skip(f"{missing}: building the example package offline (pip install "
                    f"--no-build-isolation) needs pip and setuptools>=70.1 in this environment")
    root = tmp_path_factory.mktemp("example_plugin")
    src, target = root / "src", root / "site"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE_DIR, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                          "--no-build-isolation", "--disable-pip-version-check", "--quiet",
                          "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return target


def clse(*args: str, cwd: Path, site: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("MLFLOW_TRACKING_URI", "CLSE_DISABLE_PLUGINS", "CLSE_STRICT_PLUGINS")}
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    full_env.update({"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "CLSE_LOG_LEVEL": "WARNING",
                     **(env or {})})
    return subprocess.run([sys.executable, "-m", "clse.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_registry_loads_the_installed_entry_points(installed, monkeypatch):
    (dist,) = importlib.metadata.distributions(path=[str(installed)])
    assert dist.metadata["Name"] == PACKAGE and "clse" in dist.requires
    own = [ep for ep in dist.entry_points if ep.group == "clse"]
    assert {ep.name for ep in own} == {"clse_example.hard_negative_margin",
                                       "clse_example.max_pooling"}
    # what PYTHONPATH does for a subprocess: the package's metadata becomes visible to
    # importlib.metadata.entry_points, and so to clse (restored, with the registry, afterwards)
    monkeypatch.syspath_prepend(str(installed))
    _forget_example_modules()  # load the installed copy, not the source tree's
    plugins_mod.reset_registry()
    try:
        reg = plugins_mod.registry()
        reg.pm.check_pending()  # a misspelled hook name would be silently ignored by pluggy
        assert [f for f in reg.failed if f.package == PACKAGE] == []
        ours = {(p.spec.kind, p.spec.name, p.source) for p in reg.all() if p.package == PACKAGE}
        assert ours == {("alignment", ALIGNMENT, "clse_example.hard_negative_margin"),
                        ("pooling", POOLING, "clse_example.max_pooling")}
        align = reg.build("alignment", {"name": ALIGNMENT, "margin": 0.3})
        assert (align.weight, align.margin, align.hardest) == (1.0, 0.3, True)
        assert callable(reg.build("pooling", {"name": POOLING}))
        assert str(installed / "clse_example" / "configs") in reg.config_dirs()
    finally:
        plugins_mod.reset_registry()
        _forget_example_modules()


def test_clse_plugins_lists_the_example(installed, tmp_path):
    res = clse("plugins", "--json", cwd=tmp_path, site=installed)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert [f for f in data["failed"] if f["package"] == PACKAGE] == []
    rows = {(r["kind"], r["name"]): r for r in data["plugins"]}
    for kind, name, ep in (("alignment", ALIGNMENT, "clse_example.hard_negative_margin"),
                           ("pooling", POOLING, "clse_example.max_pooling")):
        assert rows[(kind, name)]["package"] == PACKAGE
        assert rows[(kind, name)]["entry_point"] == ep
    assert rows[("alignment", "mse")]["package"] == "clse"  # the built-ins are still there


@pytest.mark.slow
def test_train_with_the_example_plugins(installed, tmp_path):
    res = clse("train", *TINY, f"alignment={ALIGNMENT}", "alignment.margin=0.3",
               f"pooling={POOLING}", "hydra.run.dir=run", cwd=tmp_path, site=installed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {}  # eval=none

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("clse").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["alignment.name"] == ALIGNMENT and params["pooling.name"] == POOLING
    assert params["alignment.margin"] == "0.3" and params["alignment.hardest"] == "True"
    history = client.get_metric_history(run.info.run_id, "train/alignment")
    assert [m.step for m in history] == [1, 2, 3]
    assert all(math.isfinite(m.value) and m.value >= 0 for m in history)
    assert any(m.value > 0 for m in history)  # an untrained encoder violates the margin
    # objective=none, regularizer=none: the whole loss is the new alignment loss
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.value for m in loss] == pytest.approx([m.value for m in history])


def test_yaml_preset_from_the_plugin_package(installed, tmp_path):
    import yaml

    res = clse("train", "quickstart=none", "alignment=vse0", f"pooling={POOLING}", "--cfg", "job", cwd=tmp_path,
               site=installed)
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = yaml.safe_load(res.stdout)
    assert cfg["alignment"] == {"name": ALIGNMENT, "weight": 1.0, "margin": 0.2, "hardest": False}
    assert cfg["pooling"] == {"name": POOLING}


@pytest.fixture(scope="module")
def disabled_run(installed, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("disabled")
    return clse("train", "quickstart=none", f"alignment={ALIGNMENT}", cwd=cwd, site=installed,
                env={"CLSE_DISABLE_PLUGINS": ALIGNMENT})


def test_disabled_plugin_cannot_be_selected(disabled_run):
    res = disabled_run
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert ALIGNMENT in res.stderr
    for other in ("mse", "contrastive", "additive_margin"):  # the options that remain are listed
        assert other in res.stderr


def test_disabled_plugin_error_is_one_clse_line(disabled_run):
    res = disabled_run
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("clse: error:") and "CLSE_DISABLE_PLUGINS" in line and "mse" in line
