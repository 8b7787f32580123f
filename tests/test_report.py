"""The compare report on logged runs with known predictions: numbers, filters, files, and the HTML in Chromium."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from fashion_core.evaluation import metrics as M
from fashion_core.report.analysis import PEER_MIN_TEST, PEER_MIN_TRAIN
from fashion_core.report.compare import run_compare
from fashion_core.report.render import SECTIONS
from fashion_core.report.runs import CompareError, find_runs
from fashion_core.report.tables import display_summary, markdown_table, shot_bin
from fashion_core.tracking import runs as tracking
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


def log_fake_run(
    stage,
    technique,
    seed,
    skill,
    digest="digest-a",
    leaky=False,
    tags=None,
    corrupt=False,
    experiment="fake-data",
    config=None,
    draw=None,
):
    """A FINISHED run with ``eval/per_class.csv`` and ``eval/predictions.csv``, as run_stage logs them.

    ``draw`` seeds the fake predictions (default: ``seed``): equal draws give identical predictions.
    """
    draw = seed if draw is None else draw
    if stage == "pretrain":
        table, preds = fake_eval(PRETRAIN, PRE_TRAIN_N, PRE_TEST_N, skill, draw)
    else:
        table, preds = fake_eval(FINETUNE, FT_TRAIN_N, FT_TEST_N, skill, draw, TEST_ONLY)
    if corrupt:  # a per_class.csv that disagrees with its predictions: the report must trust the predictions
        table.loc[1, "top1"] = 0.123
    tracking.set_experiment(experiment)
    all_tags = {
        "seed": seed,
        "leaky": str(leaky).lower(),
        "transfer": technique if stage == "finetune" else "",
        "fusion": "late" if leaky else "none",
        **(tags or {}),
    }
    with tracking.start_run(
        stage, technique, digest, run_name=f"{stage}/{technique}/seed{seed}", tags=all_tags, config=config
    ) as run:
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
    return run_compare(experiment="fake-data", grid="none", out=store / "out")


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
    long = pd.read_csv(
        out / "per_class_runs.csv", dtype={"class": str}, keep_default_na=False, na_values={"top1": [""], "top5": [""]}
    )
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
        wide = pd.read_csv(out / f"per_class_{stage}.csv", dtype={"class": str}, keep_default_na=False, na_values=[""])
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
        # A class with fewer than 5 test images is starred, and each of its cells says how many it has.
        assert trace["y"] == [
            f"{c} ({a}/{b})" + (" *" if b < 5 else "")
            for c, a, b in zip(evaluated["class"], evaluated["n_train"], evaluated["n_test"])
        ]
        assert trace["text"] == [[f"n={b}" if b < 5 else "" for _ in techniques] for b in evaluated["n_test"]]
        z = array(trace["z"])
        want = np.array([[means.loc[(stage, c, t), "top1"] for t in techniques] for c in evaluated["class"]])
        assert np.allclose(z, want)


def test_summary_tables(fake_runs, compared):
    res = compared
    pre, ft = res.tables.summary["pretrain"], res.tables.summary["finetune"]
    assert list(pre["technique"]) == ["focal", "baseline"]  # ranked by class-mean top-1
    assert list(pre["rank"]) == [1, 2] and list(pre["seeds"]) == ["0,1", "0,1"]
    runs = res.tables.runs.set_index("run_id")
    base = [
        M.summarize(
            res.tables.per_class_runs[res.tables.per_class_runs["run_id"] == fake_runs[("pretrain", "baseline", s)]]
        )
        for s in (0, 1)
    ]
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
    assert {
        "report.html",
        "report.md",
        "summary.md",
        "summary_pretrain.csv",
        "summary_finetune.csv",
        "per_class_pretrain.csv",
        "per_class_finetune.csv",
        "per_class_runs.csv",
        "not_evaluated.csv",
        "runs.csv",
    } <= files


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
    again = run_compare(experiment="fake-data", grid="none", out=tmp_path / "again", log_run=False)
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
    parent = client.create_run(
        exp.experiment_id,
        run_name="grid/x/seeds0",
        tags={"stage": "grid", "technique": "grid", "dataset_digest": "digest-a"},
    ).info.run_id
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
    low, high = (
        log_fake_run("pretrain", "shaky", 0, 0.2, experiment="spread"),
        log_fake_run("pretrain", "shaky", 1, 0.95, experiment="spread"),
    )
    res = run_compare(experiment="spread", grid="none", out=tmp_path / "o", log_run=False)
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
        return log_fake_run(
            "finetune", "fused", seed, 0.5 if epochs == 4 else 0.8, experiment="configs", config=config, **k
        )

    short = [run(0, 4), run(1, 4)]
    long_old = run(0, 20)
    long = [run(0, 20), run(1, 20)]  # the newer seed-0 run of the same config supersedes long_old
    older_code = log_fake_run(
        "finetune", "fused", 2, 0.5, experiment="configs", config={"train": {"epochs": 4, "seed": 2}}
    )  # logged before loss.name existed
    scope = find_runs(experiment="configs", grid="none")
    assert {r.info.run_id for r in scope.runs} == {*short, *long, older_code}
    assert "superseded" in scope.left_out.set_index("run_id").loc[long_old, "reason"]
    res = run_compare(experiment="configs", grid="none", out=tmp_path / "o", log_run=False)
    summ = res.tables.summary["finetune"].set_index("technique")
    assert set(summ.index) == {"fused [train.epochs=4]", "fused [train.epochs=20]"}
    assert summ.loc["fused [train.epochs=4]", "seeds"] == "0,1,2"
    assert summ.loc["fused [train.epochs=20]", "n_seeds"] == 2
    runs = res.tables.runs.set_index("run_id")
    assert runs.loc[long[0], "config"] == "train.epochs=20"
    assert runs.loc[short[0], "technique"] == "fused [train.epochs=4]"


def test_cli_compare(fake_runs, tmp_path):
    from click.testing import CliRunner

    from fashion_core.cli.commands import main

    r = CliRunner().invoke(
        main,
        [
            "compare",
            "--experiment",
            "fake-data",
            "--grid",
            "none",
            "--stage",
            "pretrain",
            "--out",
            str(tmp_path / "o"),
            "--tag",
            "leaky=false",
            "--no-log-run",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "| 1 | focal |" in r.output and (tmp_path / "o" / "report.html").is_file()
    assert not (tmp_path / "o" / "summary_finetune.csv").exists()
    bad = CliRunner().invoke(main, ["compare", "--experiment", "nope", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "no experiment 'nope'" in bad.output


def test_markdown_and_bins():
    df = pd.DataFrame({"a": ["x|y", "z"], "b": [0.12345, float("nan")], "c": [True, False]})
    assert markdown_table(df).splitlines() == [
        "| a | b | c |",
        "| --- | ---: | --- |",
        "| x\\|y | 0.1235 | yes |",
        "| z |  |  |",
    ]
    assert [shot_bin(n) for n in (1, 2, 3, 5, 6, 20, 50, 100, 500, 501, 4000)] == [
        "1-2",
        "1-2",
        "3-5",
        "3-5",
        "6-10",
        "11-20",
        "21-50",
        "51-100",
        "101-500",
        "501+",
        "501+",
    ]


def test_identical_seeds_give_one_seeds_interval_in_compare(store, tmp_path):
    """Three seeds with the same predictions: one row whose interval is the one seed's (paired resampling)."""
    for seed in (0, 1, 2):
        log_fake_run("pretrain", "triple", seed, 0.6, experiment="identical", draw=7)
    single = log_fake_run("pretrain", "single", 0, 0.6, experiment="identical", draw=7)
    res = run_compare(experiment="identical", grid="none", out=tmp_path / "o", log_run=False)
    summ = res.tables.summary["pretrain"].set_index("technique")
    assert summ.loc["triple", "n_seeds"] == 3
    runs = res.tables.runs.set_index("run_id")
    for m in ("top1", "top5"):
        one = (runs.loc[single, f"{m}_lo"], runs.loc[single, f"{m}_hi"])
        assert (summ.loc["triple", f"{m}_lo"], summ.loc["triple", f"{m}_hi"]) == pytest.approx(one, abs=1e-12)
        assert (summ.loc["single", f"{m}_lo"], summ.loc["single", f"{m}_hi"]) == pytest.approx(one, abs=1e-12)
    # The same predictions as another technique: a difference of exactly 0, an interval holding 0.
    pairs = res.tables.paired["pretrain"]
    assert len(pairs) == 1 and {pairs["a"].iloc[0], pairs["b"].iloc[0]} == {"single", "triple"}
    pair = pairs.iloc[0]
    assert pair["diff"] == 0 and pair["diff_lo"] <= 0 <= pair["diff_hi"] and pair["indistinguishable"]
    assert pair["n_better"] == pair["n_worse"] == 0
    assert "Indistinguishable from it" in res.tables.paired_text["pretrain"]


def test_ensemble_seeds_are_one_row(store, tmp_path):
    """Ensemble seeds log other member run ids each: still one configuration, one row of three seeds."""
    for seed in (0, 1, 2):
        members = [f"{seed:032x}", f"{seed + 50:032x}"]
        log_fake_run(
            "finetune",
            "finetune+meta_only",
            seed,
            0.7,
            experiment="ensembles",
            config={"ensemble": {"members": members, "weights": [0.5, 1.0]}, "data": {"top_k": 20}},
        )
    res = run_compare(experiment="ensembles", grid="none", out=tmp_path / "o", log_run=False)
    summ = res.tables.summary["finetune"]
    assert list(summ["technique"]) == ["finetune+meta_only"] and summ["seeds"].iloc[0] == "0,1,2"


def test_reads_on_test_test_informed_and_peer_protocols(store, tmp_path):
    def run(technique, seed, skill, **tags):
        return log_fake_run("pretrain", technique, seed, skill, experiment="marks", tags=tags)

    run("honest", 0, 0.6, configs_read_on_test=1)
    run("honest", 1, 0.6, configs_read_on_test=3)
    run("peeked", 0, 0.95, test_informed="true")
    run("plain", 0, 0.3)
    res = run_compare(experiment="marks", grid="none", out=tmp_path / "o", log_run=False)
    summ = res.tables.summary["pretrain"]
    assert summ["technique"].iloc[0] == "peeked"  # ranked first, but never the reference
    shown = display_summary(summ).set_index("technique")
    assert shown.loc["honest", "configurations read on test"] == "3"  # the max over the row's runs
    assert shown.loc["plain", "configurations read on test"] == "\u2014"
    assert shown.loc["peeked", "test-informed"] == "test-informed" and shown.loc["honest", "test-informed"] == ""
    pairs = res.tables.paired["pretrain"]
    assert set(pairs["b"]) == {"honest"} and set(pairs["a"]) == {"peeked", "plain"}
    words = res.tables.paired_text["pretrain"]
    assert words.startswith("pretrain: the best is honest") and "peeked (test-informed)" in words
    # Peers' protocol: classes with >= 3 training (train + validation) and >= 2 test images, by hand.
    prot = res.tables.protocols["pretrain"].set_index("technique")
    pcr = res.tables.per_class_runs
    one = pcr[pcr["technique"] == "plain"].merge(
        pd.DataFrame({"class": PRETRAIN, "n_val": 1}), on="class", suffixes=("", "_x")
    )
    peer = one[(one["n_train"] + one["n_val"] >= PEER_MIN_TRAIN) & (one["n_test"] >= PEER_MIN_TEST)]
    assert prot.loc["plain", "peers"] == pytest.approx(peer["top1"].mean())
    assert prot.loc["plain", "peers_classes"] == len(peer) == 4
    assert prot.loc["plain", "ours"] == pytest.approx(summ.set_index("technique").loc["plain", "top1_mean"])
    assert bool(prot.loc["peeked", "test_informed"])
    html_text = (res.out / "report.html").read_text()
    assert "test-informed" in html_text and "Elias Vansteenkiste" in html_text


def test_confusions_class_view_links_and_pairs(fake_runs, compared, tmp_path):
    res = compared
    conf = res.tables.confusions["pretrain"]
    # Recount focal's mistakes by hand over its two seeds.
    frames = [
        pd.read_csv(
            tracking.download_artifact(fake_runs[("pretrain", "focal", s)], "eval/predictions.csv", tmp_path / f"f{s}"),
            dtype=str,
            keep_default_na=False,
        )
        for s in (0, 1)
    ]
    both = pd.concat(frames)
    wrong = both[both["label"] != both["pred1"]]
    counts = wrong.groupby(["label", "pred1"]).size().sort_values(ascending=False, kind="stable")
    mine = conf[conf["technique"] == "focal"]
    assert len(mine) == min(10, len(counts))
    top = mine.iloc[0]
    assert top["count"] == counts.iloc[0] / 2 and top["count"] == counts.max() / 2
    n_class = (frames[0]["label"] == top["true"]).sum()
    assert top["share"] == pytest.approx(top["count"] / n_class)
    ex = [str(i) for i in top["examples"]]
    assert ex and set(ex) <= set(wrong.loc[(wrong["label"] == top["true"]) & (wrong["pred1"] == top["pred"]), "id"])
    # A test-only class (no training image) is a mistake no model without zero-shot can avoid: not listed.
    assert "Perfume" not in set(res.tables.confusions["finetune"]["true"])
    assert "Perfume" not in set(res.tables.class_view["finetune"]["class"])
    view = res.tables.class_view["pretrain"].set_index(["class", "technique"])
    v = view.loc[("Shirts", "focal")]
    assert v["n_test"] == 25 and v["top1_lo"] <= v["top1"] <= v["top1_hi"]
    lo, hi = M.wilson_interval(v["top1"] * 25, 25)
    assert (v["top1_lo"], v["top1_hi"]) == pytest.approx((lo, hi))
    page = (res.out / "report.html").read_text()
    run_id = fake_runs[("pretrain", "focal", 0)]
    assert 'href="http://127.0.0.1:5000/#/experiments/' in page and f'/runs/{run_id}">{run_id}</a>' in page
    assert "No example images" in page  # the fake runs name no dataset folder or image cache
    assert 'id="class-view-pretrain-select"' in page


def test_cli_pair_and_ui_url(fake_runs, tmp_path):
    from click.testing import CliRunner

    from fashion_core.cli.commands import main

    r = CliRunner().invoke(
        main,
        [
            "compare",
            "--experiment",
            "fake-data",
            "--grid",
            "none",
            "--out",
            str(tmp_path / "o"),
            "--no-log-run",
            "--pair",
            "ncm,fusion",
            "--ui-url",
            "",
        ],
    )
    assert r.exit_code == 0, r.output
    pairs = pd.read_csv(tmp_path / "o" / "paired_finetune.csv")
    assert ((pairs["a"] == "ncm") & (pairs["b"] == "fusion") & (pairs["kind"] == "requested")).any() or (
        (pairs["a"] == "ncm") & (pairs["b"] == "fusion")
    ).any()
    assert "finetune: the best is fusion" in r.output
    assert "<a href=" not in (tmp_path / "o" / "report.html").read_text().split('id="runs"')[1]
    bad = CliRunner().invoke(
        main,
        [
            "compare",
            "--experiment",
            "fake-data",
            "--grid",
            "none",
            "--no-log-run",
            "--out",
            str(tmp_path / "p"),
            "--pair",
            "ncm,focal",
        ],
    )
    assert bad.exit_code == 2 and "--pair ncm,focal: not two techniques of one stage" in bad.output
    assert "pretrain: baseline, focal" in bad.output


@pytest.fixture(scope="module")
def gallery(store, tmp_path_factory):
    """A report whose runs' digest has a prepare run naming a (hand-made) image cache."""
    root = tmp_path_factory.mktemp("gallery")
    n = sum(PRE_TEST_N)
    folder = root / "images" / "k_8x6"
    folder.mkdir(parents=True)
    imgs = np.zeros((n, 8, 6, 3), np.uint8)
    imgs[..., 0] = np.arange(n)[:, None, None] * 3  # a different red per product
    imgs.tofile(folder / "images.u8")  # the ImageCache layout: N x H x W x 3 uint8, index, errors, meta
    pd.DataFrame({"id": np.arange(n), "row": np.arange(n)}).to_parquet(folder / "index.parquet")
    (folder / "errors.json").write_text("{}")
    (folder / "meta.json").write_text(json.dumps({"height": 8, "width": 6, "n": n, "complete": True}))
    log_fake_run("pretrain", "seen", 0, 0.5, experiment="gallery", digest="digest-g")
    log_fake_run("pretrain", "other", 0, 0.6, experiment="gallery", digest="digest-g")
    tracking.set_experiment("gallery")
    with tracking.start_run("prepare", "prepare", "digest-g", tags={"cache_folder": str(folder)}):
        pass
    res = run_compare(experiment="gallery", grid="none", out=root / "o", log_run=False)
    return res, folder


def test_gallery_from_the_image_cache(gallery):
    """A prepare run of the digest names an image cache: the confusions embed JPEG thumbnails from it."""
    import io

    from PIL import Image

    res, folder = gallery
    conf = res.tables.confusions["pretrain"]
    shown = [i for i in conf.loc[conf["rank"] <= 5, "examples"].explode()]
    assert shown and set(shown) == set(res.tables.thumbnails)
    uri = res.tables.thumbnails[shown[0]]
    assert uri.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.size == (36, 48)  # 48 px high, the 6:8 aspect kept
    page = (res.out / "report.html").read_text()
    assert page.count('<img src="data:image/jpeg;base64,') == sum(
        len(e) for e in conf.loc[conf["rank"] <= 5, "examples"]
    )
    assert f"image cache {folder}" in page


# ---------------------------------------------------------------- headless Chromium


# Injected first into <head>: every uncaught error, rejected promise and console.error lands in #js-errors.
ERROR_COLLECTOR = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push('error: '+(e.message||e.type))},true);
window.addEventListener('unhandledrejection',function(e){window.__errors.push('rejection: '+e.reason)});
(function(){var ce=console.error;console.error=function(){window.__errors.push('console: '+
Array.prototype.join.call(arguments,' '));ce.apply(console,arguments)}})();
window.addEventListener('load',function(){setTimeout(function(){var p=document.createElement('pre');
p.id='js-errors';p.textContent=JSON.stringify(window.__errors);document.body.appendChild(p);
var f=document.createElement('pre');f.id='page-facts';var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++}
f.textContent=JSON.stringify({resources:performance.getEntriesByType('resource').map(function(r){return r.name}),
images:im.length,images_ok:ok});document.body.appendChild(f)},500)});</script>"""


def page_facts(dom: str) -> dict:
    """What the page loaded after it ran: every resource it requested, its images and how many decoded."""
    import html

    m = re.search(r'<pre id="page-facts">(.*?)</pre>', dom, re.S)
    assert m, "the page-facts probe did not run"
    return json.loads(html.unescape(m.group(1)))


def no_request_leaves(page: str) -> None:
    """Nothing in the file asks for a network resource (links a reader may click are not requests)."""
    assert not re.search(r"<script[^>]+src=", page), "the report must not load scripts from the network"
    assert not re.search(r'<(img|link|iframe|source|video|audio)[^>]+(src|href)="(?!data:)', page)
    assert not re.search(r"url\((?!data:)[^)]*\)|@import", page.split("<body>", 1)[0].split("<script")[0])


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
    no_request_leaves(page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + ERROR_COLLECTOR, 1))
    dom, log = dump_dom(probe.as_uri(), tmp_path / "chromium")
    assert js_errors(dom, log) == []
    assert page_facts(dom)["resources"] == []  # the page requested nothing: no file, no network
    # The new sections: the comparison in words and its table, the peers' protocols, confusions, per-class view.
    assert "the best is focal" in dom and "the best is fusion" in dom and "indistinguishable" in dom
    assert "peers: &gt;= 3 training" in dom or "peers: >= 3 training" in dom
    confusions = dom.split('<section id="confusions">')[1].split("</section>")[0]
    assert confusions.count("<h4>") == 4 and 'class="tbl conf"' in confusions  # a block per technique
    assert 'id="class-view-finetune-select"' in dom
    assert re.search(r'<div data-class="[^"]+"( style="display: none;")?>', dom)
    assert 'href="http://127.0.0.1:5000/#/experiments/' in dom
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    for stage in ("pretrain", "finetune"):
        for fig in ("heatmap", "class-mean", "few-shot"):
            div = re.search(rf'<div id="{fig}-{stage}"[^>]*class="[^"]*js-plotly-plot', dom)
            assert div, f"{fig}-{stage} was not drawn by plotly"
    assert dom.count('class="main-svg"') >= 12  # two SVG layers per drawn figure
    assert "Perfume" in dom and "test-only" in dom  # the not-evaluated list
    # The few-shot curve's log axis is labelled 1, 2, 5, 10, 20, ... (not plotly's "8 9 1 2 3").
    ticks = re.findall(r'<text[^>]*class="xtick"[^>]*>.*?>([^<]+)</text>', dom)
    assert ticks or "xtick" in dom
    layout = json.loads(
        re.search(r'"few-shot-pretrain",\s*\[.*?\],\s*(\{.*?"xaxis".*?\})\s*,\s*\{"displaylogo"', page, re.S).group(1)
    )
    assert layout["xaxis"]["tickvals"][:4] == [1, 2, 5, 10] and layout["xaxis"]["ticktext"][:4] == ["1", "2", "5", "10"]


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (Debian package `chromium`)")
def test_gallery_renders_offline(gallery, tmp_path):
    """The thumbnails are inside the file: Chromium decodes every one and requests nothing."""
    res, _ = gallery
    page = (res.out / "report.html").read_text()
    no_request_leaves(page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + ERROR_COLLECTOR, 1))
    dom, log = dump_dom(probe.as_uri(), tmp_path / "chromium")
    assert js_errors(dom, log) == []
    facts = page_facts(dom)
    assert facts["resources"] == [] and facts["images"] == page.count("<img ") >= len(res.tables.thumbnails) > 0
    assert facts["images_ok"] == facts["images"]


def test_selection_runs_are_left_out_not_compared(store, tmp_path):
    """Runs that scored no test (a selection run: tag test_scored=false), even when they outnumber the runs that
    did and sit on another split's digest, are left out with the reason; compare reports the scored runs."""
    scored = log_fake_run("pretrain", "baseline", 0, 0.6, experiment="with-selection", digest="standard")
    selection = [
        log_fake_run(
            "pretrain",
            "baseline",
            s,
            0.6,
            experiment="with-selection",
            digest="year-held-out",
            tags={"selection_run": "true", "test_scored": "false"},
        )
        for s in (1, 2, 3)
    ]
    res = run_compare(experiment="with-selection", grid="none", out=tmp_path / "o", log_run=False)
    assert set(res.tables.runs["run_id"]) == {scored}
    left = res.scope.left_out.set_index("run_id")
    assert set(selection) <= set(left.index)
    assert all(left.loc[r, "reason"].startswith("not read on test (a selection run") for r in selection)
