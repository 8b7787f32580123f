"""The compare report on logged runs with known predictions: numbers, filters, files, and the HTML in Chromium."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from fashion_core import metrics as M
from fashion_core import tracking
from fashion_core.report import (
    SECTIONS,
    CompareError,
    display_summary,
    find_runs,
    markdown_table,
    run_compare,
    shot_bin,
)
from tests.helpers.browser import chromium, dump_dom
from tests.helpers.runs import recompute
from tests.helpers.store import module_store

# "NA" must stay a class name (not a missing value); "Sarees" has no test image; "Perfume" is test-only.
PRETRAIN = ["NA", "Shirts", "Tshirts", "Watches", "Sarees"]
PRE_TRAIN_N = [30, 80, 120, 50, 9]
PRE_TEST_N = [12, 25, 40, 20, 0]
FINETUNE = ["Belts", "Caps", "Scarves", "Ties"]
FT_TRAIN_N = [1, 3, 8, 20]
FT_TEST_N = [4, 6, 5, 9]
TEST_ONLY = {"Perfume": 7}


def fake_eval(classes, n_train, n_test, skill, seed, test_only=None):
    """A per-class table and predictions of a model that is right with probability ``skill`` per image."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), n_test)
    n = len(labels)
    top5 = np.stack([rng.permutation(len(classes))[:5] for _ in range(n)]) if n else np.zeros((0, 5), int)
    if top5.shape[1] < 5:
        top5 = np.concatenate([top5, -np.ones((n, 5 - top5.shape[1]), int)], axis=1)
    right = rng.random(n) < skill
    top5[right, 0] = labels[right]
    names = [classes[i] for i in labels]
    ids = np.arange(n)
    if test_only:
        extra = [c for c, k in test_only.items() for _ in range(k)]
        names += extra
        ids = np.arange(n + len(extra))
        top5 = np.concatenate([top5, rng.integers(0, len(classes), (len(extra), 5))])
    preds = M.predictions_frame(ids, np.array(names, dtype=object), top5, classes)
    table = M.per_class_table(labels, top5[:n], classes, n_train, np.ones(len(classes), int), test_only)
    return table, preds


def log_fake_run(stage, technique, seed, skill, digest="digest-a", leaky=False, tags=None, corrupt=False,
                 experiment="fake-data", config=None):
    """A FINISHED run with ``eval/per_class.csv`` and ``eval/predictions.csv``, as run_stage logs them."""
    if stage == "pretrain":
        table, preds = fake_eval(PRETRAIN, PRE_TRAIN_N, PRE_TEST_N, skill, seed)
    else:
        table, preds = fake_eval(FINETUNE, FT_TRAIN_N, FT_TEST_N, skill, seed, TEST_ONLY)
    if corrupt:  # a per_class.csv that disagrees with its predictions: the report must trust the predictions
        table.loc[1, "top1"] = 0.123
    tracking.set_experiment(experiment)
    all_tags = {"seed": seed, "leaky": str(leaky).lower(), "transfer": technique if stage == "finetune" else "",
                "fusion": "late" if leaky else "none", **(tags or {})}
    with tracking.start_run(stage, technique, digest, run_name=f"{stage}/{technique}/seed{seed}",
                            tags=all_tags, config=config) as run:
        tracking.log_frame(table, "eval/per_class.csv")
        tracking.log_frame(preds, "eval/predictions.csv")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow sqlite store for the module (creating one costs seconds); tests add their own experiments."""
    with module_store(tmp_path_factory, "report") as (root, mp):
        yield root


@pytest.fixture(scope="module")
def fake_runs(store):
    """Two pretrain and two finetune techniques, two seeds each; one leaky; one corrupted per_class.csv."""
    ids = {}
    for seed in (0, 1):
        ids[("pretrain", "baseline", seed)] = log_fake_run("pretrain", "baseline", seed, 0.5 + 0.1 * seed)
        ids[("pretrain", "focal", seed)] = log_fake_run("pretrain", "focal", seed, 0.8, corrupt=seed == 1)
        ids[("finetune", "ncm", seed)] = log_fake_run("finetune", "ncm", seed, 0.4, tags={"team": "a"})
        ids[("finetune", "fusion", seed)] = log_fake_run("finetune", "fusion", seed, 0.9, leaky=True)
    return ids


@pytest.fixture(scope="module")
def compared(fake_runs, store):
    """The report of the fake runs, built once."""
    return run_compare(experiment="fake-data", grid="none", out=store / "out", log=lambda m: None)


def plotly_data(html_text: str, div_id: str) -> list[dict]:
    """The traces passed to ``Plotly.newPlot`` for one figure of the report."""
    start = html_text.index(f'"{div_id}"')
    start = html_text.index("[", start)
    data, _ = json.JSONDecoder().raw_decode(html_text[start:])
    return data


def array(v) -> np.ndarray:
    """A plotly JSON array: a list or a typed array ``{"dtype", "bdata", "shape"}``."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = [int(s) for s in str(v.get("shape", len(a))).split(",")]
        return a.reshape(shape).astype(float)
    return np.array([np.nan if x is None else x for x in np.ravel(v)], dtype=float).reshape(np.shape(v))


def test_every_per_class_number_equals_the_predictions(fake_runs, compared, tmp_path):
    res, out = compared, compared.out
    long = pd.read_csv(out / "per_class_runs.csv", dtype={"class": str}, keep_default_na=False,
                       na_values={"top1": [""], "top5": [""]})
    assert set(long["run_id"]) == set(fake_runs.values())
    expected_long = []
    for (stage, technique, seed), run_id in fake_runs.items():
        truth = recompute(run_id, tmp_path / "dl")
        mine = long[long["run_id"] == run_id].set_index("class")
        tested = mine[mine["n_test"] > 0]
        assert set(tested.index) == set(truth.index)
        for col in ("top1", "top5", "n_test"):
            assert np.allclose(tested[col].to_numpy(float), truth.loc[tested.index, col].to_numpy(float)), (run_id, col)
        assert mine[mine["n_test"] == 0][["top1", "top5"]].isna().all().all()
        expected_long.append(truth.assign(stage=stage, technique=technique, seed=seed))
    truth_all = pd.concat(expected_long).reset_index(names="class")
    means = truth_all.groupby(["stage", "class", "technique"])[["top1", "top5"]].mean()
    html_text = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for stage in ("pretrain", "finetune"):
        wide = pd.read_csv(out / f"per_class_{stage}.csv", dtype={"class": str}, keep_default_na=False,
                           na_values=[""])
        techniques = list(res.tables.summary[stage]["technique"])
        for t in techniques:
            for c in wide["class"]:
                for m in ("top1", "top5"):
                    got = wide.loc[wide["class"] == c, f"{t} {m}"].iloc[0]
                    want = means.loc[(stage, c, t), m] if (stage, c, t) in means.index else np.nan
                    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want), (stage, c, t, m)
        # The Markdown copy of every number, rounded to 3 decimals.
        scored = means.loc[stage].dropna()
        assert len(scored)
        for (c, t), row in scored.iterrows():
            line = next(ln for ln in md.split(f"## {stage}: per class")[1].splitlines() if ln.startswith(f"| {c} |"))
            assert f"{row['top1']:.3f}" in line and f"{row['top5']:.3f}" in line, (stage, c, t)
        # The heatmap shows the evaluated classes (most training images first) x ranked techniques.
        trace = plotly_data(html_text, f"heatmap-{stage}")[0]
        assert trace["x"] == techniques
        evaluated = wide[(wide["n_train"] > 0) & (wide["n_test"] > 0)]
        assert trace["y"] == [f"{c} ({a}/{b})" for c, a, b in zip(evaluated["class"], evaluated["n_train"],
                                                                   evaluated["n_test"])]
        z = array(trace["z"])
        want = np.array([[means.loc[(stage, c, t), "top1"] for t in techniques] for c in evaluated["class"]])
        assert np.allclose(z, want)


def test_summary_tables(fake_runs, compared):
    res = compared
    pre, ft = res.tables.summary["pretrain"], res.tables.summary["finetune"]
    assert list(pre["technique"]) == ["focal", "baseline"]  # ranked by class-mean top-1
    assert list(pre["rank"]) == [1, 2] and list(pre["seeds"]) == ["0,1", "0,1"]
    runs = res.tables.runs.set_index("run_id")
    base = [M.summarize(res.tables.per_class_runs[res.tables.per_class_runs["run_id"] == fake_runs[("pretrain", "baseline", s)]])
            for s in (0, 1)]
    row = pre.set_index("technique").loc["baseline"]
    assert row["top1_mean"] == pytest.approx(np.mean([b["top1_mean"] for b in base]))
    assert row["top1_std"] == pytest.approx(np.std([b["top1_mean"] for b in base], ddof=1))
    assert row["top1_lo"] <= row["top1_mean"] <= row["top1_hi"]
    assert row["n_classes_evaluated"] == 4  # NA, Shirts, Tshirts, Watches; Sarees has no test image
    assert row["top1_micro"] == pytest.approx(np.mean([b["top1_micro"] for b in base]))
    assert runs.loc[fake_runs[("pretrain", "focal", 1)], "n_mismatch"] == 1  # the corrupted per_class.csv
    assert runs.loc[fake_runs[("pretrain", "focal", 0)], "n_mismatch"] == 0
    f = ft.set_index("technique")
    assert bool(f.loc["fusion", "leaky"]) and not bool(f.loc["ncm", "leaky"])
    assert f.loc["fusion", "inputs"] == "image+metadata" and f.loc["ncm", "inputs"] == "image"
    assert f.loc["ncm", "n_classes_evaluated"] == 4
    assert f["classes_won"].sum() >= 4
    ne = res.tables.not_evaluated.set_index(["stage", "class"])
    assert "no test images" in ne.loc[("pretrain", "Sarees"), "reason"]
    assert "test-only" in ne.loc[("finetune", "Perfume"), "reason"]
    assert ne.loc[("finetune", "Perfume"), "n_test"] == 7
    md = (res.out / "summary.md").read_text()
    assert "| 1 | focal |" in md and "LEAKY" in md
    files = {p.name for p in res.out.iterdir()}
    assert {"report.html", "report.md", "summary.md", "summary_pretrain.csv", "summary_finetune.csv",
            "per_class_pretrain.csv", "per_class_finetune.csv", "per_class_runs.csv", "not_evaluated.csv",
            "runs.csv"} <= files


def test_compare_run_holds_the_report(fake_runs, compared, tmp_path):
    from mlflow.tracking import MlflowClient

    res = compared
    run = MlflowClient().get_run(res.run_id)
    assert run.data.tags["stage"] == "compare" and run.info.status == "FINISHED"
    assert run.data.tags["dataset_digest"] == "digest-a"
    names = {a.path for a in MlflowClient().list_artifacts(res.run_id, "report")}
    assert {"report/report.html", "report/summary.md", "report/summary_pretrain.csv"} <= names
    assert "focal" in run.data.tags["mlflow.note.content"]
    # A compare run is not itself compared.
    again = run_compare(experiment="fake-data", grid="none", out=tmp_path / "again", log_run=False,
                        log=lambda m: None)
    assert res.run_id not in set(again.tables.runs["run_id"])


def test_filters_and_left_out_runs(store):
    from mlflow.tracking import MlflowClient

    def run(*a, **k):
        return log_fake_run(*a, experiment="filters", **k)

    older = run("finetune", "ncm", 0, 0.4, tags={"team": "a"})
    kept_runs = [run("pretrain", "focal", 0, 0.8), run("finetune", "fusion", 0, 0.9)]
    newer = run("finetune", "ncm", 0, 0.7, tags={"team": "a"})  # supersedes the older ncm seed 0
    other = run("pretrain", "baseline", 5, 0.5, digest="digest-b")  # newest, but on other data
    scope = find_runs(experiment="filters", grid="none")
    assert {r.info.run_id for r in scope.runs} == {newer, *kept_runs}
    left = scope.left_out.set_index("run_id")["reason"]
    assert "superseded" in left[older] and "digest" in left[other]
    assert {r.data.tags["stage"] for r in find_runs("filters", stages=("finetune",), grid="none").runs} == {"finetune"}
    assert [r.info.run_id for r in find_runs("filters", grid="none", tags={"team": "a"}).runs] == [newer]
    with pytest.raises(CompareError, match="no experiment 'nope'.*filters"):
        find_runs(experiment="nope")
    with pytest.raises(CompareError, match="no finished"):
        find_runs("filters", grid="none", tags={"team": "nobody"})
    # A grid scope: only the runs its runs.csv lists (reused runs of older grids included) or its children.
    client = MlflowClient()
    exp = client.get_experiment_by_name("filters")
    parent = client.create_run(exp.experiment_id, run_name="grid/x/seeds0",
                               tags={"stage": "grid", "technique": "grid", "dataset_digest": "digest-a"}).info.run_id
    client.log_text(parent, pd.DataFrame({"run_id": kept_runs}).to_csv(index=False), "grid/runs.csv")
    client.set_terminated(parent, "FINISHED")
    assert {r.info.run_id for r in find_runs("filters", grid="latest").runs} == set(kept_runs)
    assert {r.info.run_id for r in find_runs(grid=parent).runs} == set(kept_runs)  # the grid names its experiment
    with pytest.raises(CompareError, match="not a grid run"):
        find_runs("filters", grid=kept_runs[0])
    with pytest.raises(CompareError, match="no such run"):
        find_runs("filters", grid="0" * 32)


def test_the_seed_mean_interval_includes_the_seeds_spread(store, tmp_path):
    """Two seeds far apart: the interval of their mean spans them (the mean of per-seed bounds did not)."""
    low, high = log_fake_run("pretrain", "shaky", 0, 0.2, experiment="spread"), \
        log_fake_run("pretrain", "shaky", 1, 0.95, experiment="spread")
    res = run_compare(experiment="spread", grid="none", out=tmp_path / "o", log_run=False, log=lambda m: None)
    row = res.tables.summary["pretrain"].set_index("technique").loc["shaky"]
    runs = res.tables.runs.set_index("run_id")
    seeds = [runs.loc[low, "top1_mean"], runs.loc[high, "top1_mean"]]
    assert (row["top1_min"], row["top1_max"]) == (min(seeds), max(seeds))
    narrow = (runs["top1_hi"] - runs["top1_lo"]).mean()  # the width the mean of per-seed bounds has
    assert row["top1_hi"] - row["top1_lo"] > 3 * narrow
    assert row["top1_lo"] < np.mean(seeds) < row["top1_hi"]
    assert row["top1_lo"] <= min(seeds) + narrow and row["top1_hi"] >= max(seeds) - narrow
    shown = display_summary(res.tables.summary["pretrain"]).set_index("technique").loc["shaky"]
    assert shown["Top-1 seeds min-max"] == f"{min(seeds):.3f}-{max(seeds):.3f}"


def test_grid_none_keeps_each_configuration_of_a_technique(store, tmp_path):
    """A 20-epoch override does not replace the 4-epoch run: two rows, told apart by the differing key."""
    def run(seed, epochs, **k):
        config = {"train": {"epochs": epochs, "seed": seed, "device": "cpu"}, "loss": {"name": "ce"}}
        return log_fake_run("finetune", "fused", seed, 0.5 if epochs == 4 else 0.8, experiment="configs",
                            config=config, **k)

    short = [run(0, 4), run(1, 4)]
    long_old = run(0, 20)
    long = [run(0, 20), run(1, 20)]  # the newer seed-0 run of the same config supersedes long_old
    older_code = log_fake_run("finetune", "fused", 2, 0.5, experiment="configs",
                              config={"train": {"epochs": 4, "seed": 2}})  # logged before loss.name existed
    scope = find_runs(experiment="configs", grid="none")
    assert {r.info.run_id for r in scope.runs} == {*short, *long, older_code}
    assert "superseded" in scope.left_out.set_index("run_id").loc[long_old, "reason"]
    res = run_compare(experiment="configs", grid="none", out=tmp_path / "o", log_run=False, log=lambda m: None)
    summ = res.tables.summary["finetune"].set_index("technique")
    assert set(summ.index) == {"fused [train.epochs=4]", "fused [train.epochs=20]"}
    assert summ.loc["fused [train.epochs=4]", "seeds"] == "0,1,2"
    assert summ.loc["fused [train.epochs=20]", "n_seeds"] == 2
    runs = res.tables.runs.set_index("run_id")
    assert runs.loc[long[0], "config"] == "train.epochs=20"
    assert runs.loc[short[0], "technique"] == "fused [train.epochs=4]"


def test_cli_compare(fake_runs, tmp_path):
    from click.testing import CliRunner

    from fashion_core.cli import main

    r = CliRunner().invoke(main, ["compare", "--experiment", "fake-data", "--grid", "none", "--stage", "pretrain", "--out", str(tmp_path / "o"),
                                  "--tag", "leaky=false", "--no-log-run"])
    assert r.exit_code == 0, r.output
    assert "| 1 | focal |" in r.output and (tmp_path / "o" / "report.html").is_file()
    assert not (tmp_path / "o" / "summary_finetune.csv").exists()
    bad = CliRunner().invoke(main, ["compare", "--experiment", "nope", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "no experiment 'nope'" in bad.output


def test_markdown_and_bins():
    df = pd.DataFrame({"a": ["x|y", "z"], "b": [0.12345, float("nan")], "c": [True, False]})
    assert markdown_table(df).splitlines() == ["| a | b | c |", "| --- | ---: | --- |", "| x\\|y | 0.1235 | yes |",
                                               "| z |  |  |"]
    assert [shot_bin(n) for n in (1, 2, 3, 5, 6, 20, 50, 100, 500, 501, 4000)] == \
        ["1-2", "1-2", "3-5", "3-5", "6-10", "11-20", "21-50", "51-100", "101-500", "501+", "501+"]


# ---------------------------------------------------------------- headless Chromium


# Injected first into <head>: every uncaught error, rejected promise and console.error lands in #js-errors.
ERROR_COLLECTOR = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push('error: '+(e.message||e.type))},true);
window.addEventListener('unhandledrejection',function(e){window.__errors.push('rejection: '+e.reason)});
(function(){var ce=console.error;console.error=function(){window.__errors.push('console: '+
Array.prototype.join.call(arguments,' '));ce.apply(console,arguments)}})();
window.addEventListener('load',function(){setTimeout(function(){var p=document.createElement('pre');
p.id='js-errors';p.textContent=JSON.stringify(window.__errors);document.body.appendChild(p)},500)});</script>"""


def js_errors(dom: str, log: str) -> list[str]:
    """Errors collected in the page plus uncaught ones Chromium logged from the page's console."""
    m = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S)
    assert m, "the error collector did not run (page not loaded?)"
    import html

    found = json.loads(html.unescape(m.group(1)))
    found += [line for line in log.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    return found


@pytest.mark.integration  # headless Chromium
@pytest.mark.skipif(chromium() is None, reason="needs Chromium (Debian package `chromium`)")
def test_html_report_renders_offline_without_errors(compared, tmp_path):
    page = (compared.out / "report.html").read_text()
    assert not re.search(r'<script[^>]+src=', page), "the report must not load scripts from the network"
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + ERROR_COLLECTOR, 1))
    dom, log = dump_dom(probe.as_uri(), tmp_path / "chromium")
    assert js_errors(dom, log) == []
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    for stage in ("pretrain", "finetune"):
        for fig in ("heatmap", "class-mean", "few-shot"):
            div = re.search(rf'<div id="{fig}-{stage}"[^>]*class="[^"]*js-plotly-plot', dom)
            assert div, f"{fig}-{stage} was not drawn by plotly"
    assert dom.count('class="main-svg"') >= 12  # two SVG layers per drawn figure
    assert "Perfume" in dom and "test-only" in dom  # the not-evaluated list
