"""The ablation grids' rows are the paper's switches; cells hash by what they compute."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from clse.grid import cell_of, config_hash

# table -> row config -> (objective, alignment, regularizer, objective switches) as the paper
# describes each row (MEXMA §5.1, Table 6's text, appendix B.1 and B.2)
MEXMA = "mexma"
PAPER_ROWS = {
    "table11": {
        "1_non_symmetric": (MEXMA, "none", "none", dict(symmetric=False, token_grads=False)),
        "2_symmetric": (MEXMA, "none", "none", dict(symmetric=True, token_grads=False)),
        "3_clean_to_dirty": (MEXMA, "mse", "none",
                             dict(symmetric=True, token_grads=False, align="clean_masked")),
        "4_clean_to_clean": (MEXMA, "mse", "none",
                             dict(symmetric=True, token_grads=False, align="clean")),
        "5_token_grads": (MEXMA, "mse", "none", dict(symmetric=True, token_grads=True,
                                                      align="clean")),
        "6_koleo": (MEXMA, "mse", "koleo", dict(symmetric=True, token_grads=True, align="clean",
                                                mask_ratio=0.4)),
    },
    "table5": {
        "1_sentence_grads": (MEXMA, "mse", "none", dict(symmetric=True, token_grads=False)),
        "2_token_grads": (MEXMA, "mse", "none", dict(symmetric=True, token_grads=True)),
        "3_koleo": (MEXMA, "mse", "koleo", dict(symmetric=True, token_grads=True)),
    },
    "table6": {
        "1_contrastive_xlmr": ("none", "contrastive", "none", {}),
        "2_contrastive_mexma_sentence_grads": (MEXMA, "contrastive", "none",
                                               dict(symmetric=True, token_grads=False)),
        "3_contrastive_mexma": (MEXMA, "contrastive", "none",
                                dict(symmetric=True, token_grads=True)),
    },
    "table12": {f"mask{p}": (MEXMA, "mse", "koleo", dict(symmetric=True, token_grads=True,
                                                         mask_ratio=p / 100))
                for p in range(20, 100, 10)},
}
# rows two tables share must be one cell (the same config hash)
SHARED = [("table5/1_sentence_grads", "table11/4_clean_to_clean"),
          ("table5/2_token_grads", "table11/5_token_grads"),
          ("table5/3_koleo", "table11/6_koleo"),
          ("table12/mask40", "table11/6_koleo")]


def _compose(overrides):
    from clse.config import setup

    setup()
    with initialize_config_module(config_module="clse_configs", version_base="1.3"):
        return compose("train", overrides=["quickstart=none", *overrides], return_hydra_config=True)


def _row(table, row, *extra):
    return _compose([f"experiment={table}", f"row={table}/{row}", *extra])


@pytest.mark.parametrize("table,row", [(t, r) for t, rows in PAPER_ROWS.items() for r in rows])
def test_every_row_has_the_papers_switches(table, row):
    objective, alignment, regularizer, switches = PAPER_ROWS[table][row]
    cfg = _row(table, row)
    assert (cfg.objective.name, cfg.alignment.name, cfg.regularizer.name) == \
        (objective, alignment, regularizer)
    for key, value in switches.items():
        assert cfg.objective[key] == value, (key, cfg.objective[key])
    if objective == MEXMA:
        assert cfg.objective.head_layers == cfg.budget.head_layers
    assert cfg.grid.table == table and cfg.grid.row and cfg.grid.label
    assert cfg.encoder.init_from == "outputs/ablation_mlm"  # every row starts from the MLM run


@pytest.mark.parametrize("table", sorted(PAPER_ROWS))
def test_the_sweep_covers_every_row_with_three_seeds(table):
    cfg = _compose([f"experiment={table}"])
    params = cfg.hydra.sweeper.params
    assert params.row.split(",") == [f"{table}/{r}" for r in PAPER_ROWS[table]]
    assert params.seed.split(",") == ["0", "1", "2"]


@pytest.mark.parametrize("a,b", SHARED)
def test_rows_shared_by_two_tables_are_one_cell(a, b):
    (ta, ra), (tb, rb) = a.split("/"), b.split("/")
    assert config_hash(_row(ta, ra)) == config_hash(_row(tb, rb))


def test_distinct_rows_are_distinct_cells():
    hashes: dict[str, set] = {}
    for table, rows in PAPER_ROWS.items():
        for row in rows:
            hashes.setdefault(config_hash(_row(table, row)), set()).add(f"{table}/{row}")
    shared = {frozenset(v) for v in hashes.values() if len(v) > 1}
    assert shared == {frozenset({"table5/1_sentence_grads", "table11/4_clean_to_clean"}),
                      frozenset({"table5/2_token_grads", "table11/5_token_grads"}),
                      frozenset({"table5/3_koleo", "table11/6_koleo", "table12/mask40"})}
    assert len(hashes) == 16  # 20 rows in four tables; 16 distinct cells per seed


def test_the_hash_ignores_labels_and_bookkeeping_but_not_training():
    base = _row("table11", "6_koleo")
    h = config_hash(base)
    cell = cell_of(base)
    assert cell.hash == h and cell.table == "table11" and cell.row == "koleo" and cell.seed == 0
    for extra in (["seed=5"], ["run_name=x"], ["tracking.experiment=other"], ["progress=true"],
                  ["trainer.threads=1"], ["trainer.log_every=7"], ["grid.label=renamed"]):
        assert config_hash(_row("table11", "6_koleo", *extra)) == h, extra
    for extra in (["trainer.steps=301"], ["trainer.lr=0.01"], ["objective.mask_ratio=0.5"],
                  ["data.batch_size=32"], ["budget.head_layers=3"]):
        assert config_hash(_row("table11", "6_koleo", *extra)) != h, extra


def test_a_plain_run_is_no_cell():
    assert cell_of(_compose([])) is None


@pytest.mark.parametrize("table,row", [(t, r) for t, rows in PAPER_ROWS.items() for r in rows])
def test_every_row_builds_and_takes_a_step(table, row, tiny_bundle, batch):
    """The row's plugins accept its switches together (e.g. symmetric=false needs
    align=clean_masked) and give a finite loss with gradients."""
    import torch

    from clse.interfaces import Views
    from clse.plugins import registry

    cfg = _row(table, row)
    reg = registry()
    objective = reg.build("objective", cfg.objective, encoder=tiny_bundle)
    alignment, regularizer = reg.build("alignment", cfg.alignment), \
        reg.build("regularizer", cfg.regularizer)
    out = objective(Views(batch, tiny_bundle.model, reg.build("pooling", cfg.pooling),
                          torch.Generator().manual_seed(0)))
    a, b = out.pair
    loss = sum(out.terms.values(), torch.zeros(())) * objective.weight \
        + alignment.weight * alignment(a, b) + regularizer.weight * regularizer(a)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in tiny_bundle.model.parameters())


def test_a_missing_mlm_start_says_how_to_make_it(tmp_path, monkeypatch):
    from clse.errors import ConfigError
    from clse_plugins.xlmr import _checkpoint_encoder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="init_from=outputs/ablation_mlm: no such folder.*"
                                          "clse train experiment=ablation_mlm"):
        _checkpoint_encoder("outputs/ablation_mlm")


def test_clse_grid_reports_with_the_overrides_that_set_the_budget():
    from clse.cli import _split_sweeps

    fixed, swept = _split_sweeps(["seed=0,1,2,3", "row=table11/4_clean_to_clean", "seed=1",
                                  "trainer.lr=1e-3,3e-3", "eval=[default,xsimpp_generated]",
                                  "trainer.steps=600"])
    # row and seed pick cells (the report composes every row itself); lists are one value
    assert fixed == ["eval=[default,xsimpp_generated]", "trainer.steps=600"]
    assert swept == {"seed", "trainer.lr"}


def test_clse_grid_refuses_a_malformed_override_in_one_line(tmp_path):
    from tests.tests_cli_helpers import clse

    res = clse("grid", "table11", "trainer.lr=[1e-3", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("clse: error: clse grid:") and "Traceback" not in res.stderr
    assert not (tmp_path / "multirun").exists()  # nothing ran
