"""A two-cell grid end to end: hydra multirun -> MLflow parent/child runs -> skip finished cells
-> resume an interrupted one -> `clse report` (from MLflow, and again from its CSV export)."""

from __future__ import annotations

import pytest

from tests.tests_cli_helpers import clse

pytestmark = pytest.mark.slow

# A grid of two Table 11 rows on the tiny test budget (the shipped grids need the MLM start and
# ../shared/data); the rows are the shipped row configs.
GRID = """# @package _global_
defaults:
  - override /eval: [default, xsimpp_generated]

budget:
  head_layers: 1
encoder:
  vocab_size: 400
  tokenizer_sample: 4000
data:
  batch_size: 8
  max_length: 32
trainer:
  steps: 4
  checkpoint_every: 2
  log_every: 2
  export: false
eval:
  every: 0
  evaluators:
    xsim: {source: bundled, max_sentences: 60, languages: [deu_Latn, fra_Latn]}
    xsimpp_generated: {max_sentences: 60, languages: [deu_Latn, fra_Latn]}
progress: false
tracking:
  experiment: grid_test
grid:
  table: tiny_grid
  title: A two-cell grid
hydra:
  sweeper:
    params:
      row: table11/4_clean_to_clean,table11/5_token_grads
      seed: "0"
"""
PAPER = """tiny_grid:
  source: "made up for the test"
  rows:
    clean_to_clean: {xsim: 0.15, xsimpp: 11.37}
    token_grads: {xsim: 0.10, xsimpp: 9.67}
"""


def _runs(db):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("grid_test")
    return client.search_runs([exp.experiment_id], max_results=100)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    (tmp / "configs" / "experiment").mkdir(parents=True)
    (tmp / "configs" / "experiment" / "tiny_grid.yaml").write_text(GRID)
    (tmp / "paper.yaml").write_text(PAPER)
    return tmp


def _train(workdir, *args):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    return clse("train", "-m", f"hydra.searchpath=[file://{workdir / 'configs'}]",
                "experiment=tiny_grid", *args, cwd=workdir, env=env)


def test_sweep_tracks_skips_resumes_and_reports(workdir):
    first = _train(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = _runs(workdir / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get("clse.grid.parent_of") == "tiny_grid"]
    children = [r for r in runs if "clse.grid.hash" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["clse.grid.table"] == "tiny_grid"
        assert child.data.tags["clse.grid.seed"] == "0"
        assert "devtest/xsim/avg" in child.data.metrics
        assert "devtest/xsimpp_generated/avg" in child.data.metrics
    assert {c.data.tags["clse.grid.row"] for c in children} == {"clean_to_clean", "token_grads"}
    assert len({c.data.tags["clse.grid.hash"] for c in children}) == 2

    # a rerun trains nothing: both cells are done
    again = _train(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is done already") == 2
    assert len(_runs(workdir / "mlflow.db")) == len(runs)

    # an interrupted cell (seed 1, stopped after its step-2 checkpoint) resumes from it
    killed = _train(workdir, "row=table11/4_clean_to_clean", "seed=1", "trainer.stop_after=2")
    assert killed.returncode == 0, killed.stderr[-3000:]
    statuses = [r.info.status for r in _runs(workdir / "mlflow.db")
                if r.data.tags.get("clse.grid.seed") == "1"]
    assert statuses == ["KILLED"]
    resumed = _train(workdir, "row=table11/4_clean_to_clean", "seed=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was interrupted: resuming from" in resumed.stdout
    seed1 = [r for r in _runs(workdir / "mlflow.db") if r.data.tags.get("clse.grid.seed") == "1"]
    done = [r for r in seed1 if r.info.status == "FINISHED"]
    assert len(done) == 1 and "step_00000002" in done[0].data.tags["clse.resumed_from"]
    assert done[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id

    # the report: the table, the plot, the export; and the same table again from the export
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    search = f"hydra.searchpath=[file://{workdir / 'configs'}]"
    rep = clse("report", "tiny_grid", search, "--out", "rep", "--export", "rep/runs.csv",
               "--paper", "paper.yaml", cwd=workdir, env=env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (workdir / "rep" / "tiny_grid.md").read_text()
    assert "| + Clean to clean alignment ④ | 2 |" in text  # seeds 0 and 1
    assert "| + Token-level grads ⑤ | 1 |" in text
    assert "made up for the test" in text and "0.15" in text and "↓ 0.05" in text  # paper Δ
    assert (workdir / "rep" / "tiny_grid.png").stat().st_size > 10_000
    again = clse("report", "tiny_grid", search, "--from", "rep/runs.csv", "--out", "rep2",
                 "--paper", "paper.yaml", cwd=workdir, env={"MLFLOW_TRACKING_URI": "sqlite:///none.db"})
    assert again.returncode == 0, again.stderr[-3000:]
    rebuilt = (workdir / "rep2" / "tiny_grid.md").read_text()
    assert rebuilt.split("## ", 1)[1] == text.split("## ", 1)[1]
    assert not (workdir / "none.db").exists()  # --from never opened a store

    # another machine: the export imported into a new store; the sweep skips every cell there,
    # and the report from that store is the same table
    moved = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'moved.db'}"}
    imp = clse("tracking", "import", "rep/runs.csv", cwd=workdir, env=moved)
    assert imp.returncode == 0, imp.stderr[-3000:]
    assert "3 imported" in imp.stdout
    twice = clse("tracking", "import", "rep/runs.csv", cwd=workdir, env=moved)
    assert "0 imported, 3 already there" in twice.stdout
    # (clse grid: the sweep, then the report, in one command)
    rep3 = clse("grid", "tiny_grid", search, "--out", "rep3", "--paper", "paper.yaml",
                cwd=workdir, env=moved)
    assert rep3.returncode == 0, rep3.stderr[-3000:]
    assert rep3.stdout.count("is done already") == 2
    assert "markdown: rep3/tiny_grid.md" in rep3.stdout
    assert (workdir / "rep3" / "tiny_grid.md").read_text().split("## ", 1)[1] == \
        text.split("## ", 1)[1]
