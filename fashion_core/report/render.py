"""The report as HTML (plotly.js embedded, opens offline), Markdown and CSV files."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from fashion_core.report.analysis import FEW_TEST, N_GALLERY_PAIRS, PEER_MIN_TEST, PEER_MIN_TRAIN
from fashion_core.report.figures import class_mean_figure, few_shot_figure, heatmap_figure
from fashion_core.report.tables import Tables, display_summary, few_shot_table, markdown_table

SECTIONS = (
    "summary",
    "paired",
    "protocols",
    "class-mean",
    "heatmap",
    "few-shot",
    "confusions",
    "class-view",
    "per-class",
    "not-evaluated",
    "runs",
)
UI_URL = "http://127.0.0.1:5000"  # `make ui`'s address
# Shows the selected class's table of the per-class view (the page stays one file: no library, no request).
CLASS_VIEW_JS = """<script>function fgShowClass(sel){var box=document.getElementById(sel.dataset.box);
var ts=box.querySelectorAll('[data-class]');for(var i=0;i<ts.length;i++){ts[i].style.display=
ts[i].dataset.class===sel.value?'':'none'}}</script>"""


def display_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The paired comparisons as people read them."""

    def iv(m, lo, hi, *, signed=True):
        f = "+.3f" if signed else ".2f"
        return "" if m != m else f"{format(m, f)} [{format(lo, f)}, {format(hi, f)}]"

    return pd.DataFrame(
        {
            "a": pairs["a"],
            "b": pairs["b"],
            "kind": pairs["kind"],
            "Top-1 class-mean a - b [95%]": [iv(*v) for v in pairs[["diff", "diff_lo", "diff_hi"]].to_numpy()],
            "P(a > b) [95%]": [iv(*v, signed=False) for v in pairs[["poi", "poi_lo", "poi_hi"]].to_numpy()],
            "classes": pairs["n_classes"],
            "classes a better / worse beyond chance": [
                f"{b} / {w}" for b, w in pairs[["n_better", "n_worse"]].to_numpy()
            ],
            "verdict": pairs["indistinguishable"].map(lambda v: "indistinguishable" if v else "different"),
        }
    )


def _run_link(run_id: str, experiment_id: str, ui_url: str) -> str:
    if not ui_url:
        return html.escape(run_id)
    url = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(run_id)}</a>'


def _gallery(ids, thumbnails: dict) -> str:
    imgs = [f'<img src="{thumbnails[i]}" alt="product {i}" title="product {i}">' for i in ids if i in thumbnails]
    return f'<span class="gallery">{"".join(imgs)}</span>' if imgs else ""


def confusions_html(conf: pd.DataFrame, order, thumbnails: dict) -> str:
    """Per technique: its most frequent mistakes, the first ones with example images."""
    out = []
    for t in order:
        c = conf[conf["technique"] == t]
        if not len(c):
            out.append(f"<h4>{html.escape(t)}</h4><p>no mistake</p>")
            continue
        lines = "".join(
            f"<tr><td>{html.escape(r['true'])} &rarr; {html.escape(r['pred'])}</td><td>{r['count']:g}</td>"
            f"<td>{r['n_test']}</td><td>{r['share']:.1%}</td>"
            f"<td>{_gallery(r['examples'], thumbnails) if r['rank'] <= N_GALLERY_PAIRS else ''}</td></tr>"
            for _, r in c.iterrows()
        )
        out.append(
            f'<h4>{html.escape(t)}</h4><table class="tbl conf"><tr><th>true &rarr; predicted</th>'
            "<th>mistakes per seed</th><th>n_test</th><th>share of the class</th><th>examples</th></tr>"
            f"{lines}</table>"
        )
    return "".join(out)


def class_view_html(view: pd.DataFrame, stage: str) -> str:
    """A class picker and, per class, its techniques side by side (one table shown at a time)."""
    box = f"class-view-{stage}"
    classes = list(dict.fromkeys(view["class"]))
    if not classes:
        return "<p>no class with test images</p>"
    opts = "".join(
        f'<option value="{html.escape(c, quote=True)}">{html.escape(c)} '
        f"({g['n_train'].iloc[0]}/{g['n_test'].iloc[0]})</option>"
        for c, g in view.groupby("class", sort=False)
    )
    tabs = []
    for i, (c, g) in enumerate(view.groupby("class", sort=False)):
        n_train, n_test = g["n_train"].iloc[0], g["n_test"].iloc[0]
        few = f' <span class="few">only {n_test} test image(s)</span>' if n_test < FEW_TEST else ""
        rows = "".join(
            f"<tr><td>{html.escape(r['technique'])}</td><td>{r['top1']:.3f}</td>"
            f"<td>[{r['top1_lo']:.3f}, {r['top1_hi']:.3f}]</td><td>{r['top5']:.3f}</td>"
            f"<td>{html.escape(r['most_confused_with'])}</td></tr>"
            for _, r in g.iterrows()
        )
        tabs.append(
            f'<div data-class="{html.escape(c, quote=True)}"{"" if i == 0 else " style=display:none"}>'
            f"<p><b>{html.escape(c)}</b>: n_train {n_train}, n_test {n_test}{few}</p>"
            '<table class="tbl"><tr><th>technique</th><th>Top-1</th><th>Wilson 95%</th><th>Top-5</th>'
            f"<th>most often predicted instead (per seed)</th></tr>{rows}</table></div>"
        )
    return (
        f'<p><select data-box="{box}" id="{box}-select" onchange="fgShowClass(this)">{opts}</select></p>'
        f'<div id="{box}">{"".join(tabs)}</div>'
    )


# ---------------------------------------------------------------- HTML


def _html_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return df.to_html(
        index=False, na_rep="", border=0, classes="tbl", escape=True, float_format=lambda v: format(v, floatfmt)
    )


def report_html(
    tables: Tables, scope_text: str, title: str = "fashion-grid: technique comparison", ui_url: str = UI_URL
) -> str:
    """One self-contained HTML page (plotly.js and the thumbnails inlined): every section of the report.

    ``ui_url``: the MLflow UI's address, to link run ids to their pages ('' for plain ids).
    """
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    def fig_html(fig, div_id):
        return pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )

    stages = list(tables.summary)
    parts: dict[str, list[str]] = {k: [] for k in SECTIONS}
    for stage in stages:
        summ, wide = tables.summary[stage], tables.per_class[stage]
        order = list(summ["technique"])
        parts["summary"].append(f"<h3>{stage}</h3>" + _html_table(display_summary(summ)))
        pairs = tables.paired.get(stage, pd.DataFrame())
        per = tables.paired_classes.get(stage, pd.DataFrame())
        detail = (
            "".join(
                f"<details><summary>{html.escape(a)} vs {html.escape(b)}: per class</summary>"
                + _html_table(
                    per[(per["a"] == a) & (per["b"] == b)].drop(columns=["a", "b"]).sort_values("p", kind="stable"),
                    ".4g",
                )
                + "</details>"
                for a, b in pairs[["a", "b"]].itertuples(index=False)
            )
            if len(pairs)
            else ""
        )
        parts["paired"].append(
            f'<h3>{stage}</h3><p class="words">{html.escape(tables.paired_text.get(stage, ""))}</p>'
            + (_html_table(display_pairs(pairs)) if len(pairs) else "")
            + detail
        )
        prot = tables.protocols.get(stage)
        if prot is not None and len(prot):
            shown = prot.rename(
                columns={
                    "ours": "ours: all evaluated classes",
                    "ours_classes": "classes",
                    "peers": f"peers: >= {PEER_MIN_TRAIN} training and >= {PEER_MIN_TEST} test",
                    "peers_classes": "classes ",
                    "micro": "micro (images)",
                }
            )
            shown["test_informed"] = shown["test_informed"].map(lambda v: "test-informed" if v else "")
            parts["protocols"].append(
                f"<h3>{stage}</h3>" + _html_table(shown.rename(columns={"test_informed": "test-informed"}))
            )
        conf = tables.confusions.get(stage, pd.DataFrame())
        parts["confusions"].append(f"<h3>{stage}</h3>" + confusions_html(conf, order, tables.thumbnails))
        parts["class-view"].append(
            f"<h3>{stage}</h3>" + class_view_html(tables.class_view.get(stage, pd.DataFrame(columns=["class"])), stage)
        )
        parts["class-mean"].append(fig_html(class_mean_figure(summ, tables.runs, stage), f"class-mean-{stage}"))
        parts["heatmap"].append(fig_html(heatmap_figure(wide, order, stage), f"heatmap-{stage}"))
        parts["few-shot"].append(
            fig_html(few_shot_figure(wide, order, stage), f"few-shot-{stage}")
            + "<details><summary>table</summary>"
            + _html_table(few_shot_table(wide, order))
            + "</details>"
        )
        parts["per-class"].append(
            f"<details><summary>{stage}: {len(wide)} classes x {len(order)} techniques"
            "</summary>" + _html_table(wide) + "</details>"
        )
        ne = tables.not_evaluated[tables.not_evaluated["stage"] == stage]
        parts["not-evaluated"].append(
            f"<h3>{stage}: {len(ne)} classes not evaluated</h3>"
            + (_html_table(ne.drop(columns=["stage"])) if len(ne) else "<p>none</p>")
        )
    runs_cols = [
        "stage",
        "technique",
        "seed",
        "run_name",
        "run_id",
        "config",
        "top1_mean",
        "top5_mean",
        "top1_micro",
        "n_classes_evaluated",
        "configs_read_on_test",
        "n_mismatch",
    ]
    runs_shown = tables.runs[[c for c in runs_cols if c in tables.runs]].copy()
    links = {
        r: _run_link(r, x, ui_url)
        for r, x in zip(tables.runs["run_id"], tables.runs.get("experiment_id", pd.Series("", index=tables.runs.index)))
    }
    table_html = _html_table(runs_shown)
    for r, a in links.items():  # the escaped table holds each 32-hex id once, as a whole cell
        table_html = table_html.replace(f"<td>{r}</td>", f"<td>{a}</td>")
    parts["runs"].append(table_html)
    if len(tables.left_out):
        parts["runs"].append(f"<h3>{len(tables.left_out)} runs left out</h3>" + _html_table(tables.left_out))
    headings = {
        "summary": (
            "Summary",
            "Class-mean = mean of the per-class accuracies over the evaluated classes (every class "
            "weighs the same); ± = std across seeds; [lo, hi] = 95% interval of the seed mean "
            "(a bootstrap over the seeds and, within each, stratified over its test images; one "
            "seed: its own interval); seeds min-max = the lowest and highest seed; micro = over "
            "all test images of evaluated "
            "classes; classes won = classes where the technique has the best Top-1 (ties count "
            "for each); LEAKY = uses masterCategory/subCategory as inputs. With a generalised "
            "zero-shot run in the stage: Top-1 unseen (U) = class-mean over the classes without "
            "training images (0 for a technique that cannot output them), H = harmonic mean of the "
            "Top-1 class-mean (seen classes) and U, Top-1 all classes = class-mean over every class "
            "with test images.",
        ),
        "paired": (
            "Paired comparisons",
            "Each technique against the stage's best (the top-ranked row that is not "
            "test-informed) and any pair asked for with --pair, on the same test images: "
            "a - b = difference of the Top-1 class-means with a 95% paired bootstrap "
            "interval (one resample of each class's test images scores both, seeds "
            "resampled too); indistinguishable = that interval contains 0. P(a > b) = "
            "probability of improvement: on a class drawn at random, the chance a seed "
            "of a scores higher than a seed of b (ties half). Per class: exact McNemar "
            "test on the images one gets right and the other wrong, Holm-corrected "
            "over the classes; beyond chance = adjusted p < 0.05. "
            "docs/report-statistics.md.",
        ),
        "protocols": (
            "Class-mean under the peers' protocols",
            "Top-1 mean over seeds. Ours: the mean over every evaluated class (training and test images). "
            f"Peers: over the classes with at least {PEER_MIN_TRAIN} training images (even years: train "
            f"and validation) and {PEER_MIN_TEST} test images, as Elias Vansteenkiste's repository "
            "reports. Micro: over all test images of evaluated classes. A test-informed row is shown, "
            "labelled, and never read as meeting a target.",
        ),
        "class-mean": ("Class-mean accuracy", ""),
        "heatmap": (
            "Per-class Top-1",
            f"Hover for Top-5 and counts. Cells of classes with fewer than {FEW_TEST} "
            "test images are marked (n=...) and their label starred: a score from one "
            "or two images.",
        ),
        "confusions": (
            "Confusions",
            "Per technique, its most frequent mistakes: true class -> predicted class, "
            "mistakes per seed (mean over seeds), share of the class's test images, and "
            f"for the first {N_GALLERY_PAIRS} some example images. " + (tables.images_note or ""),
        ),
        "class-view": (
            "Per-class view",
            "One class at a time: every technique's Top-1 (mean over seeds) with a "
            "95% Wilson interval on the class's test images, Top-5, and the class it is "
            "most often taken for.",
        ),
        "few-shot": ("Few-shot curve", "Accuracy against the number of training images of the class."),
        "per-class": ("Per-class table", "Top-1 and Top-5 per class and technique (mean over seeds)."),
        "not-evaluated": (
            "Classes not evaluated",
            "Left out of the class-mean and micro numbers, with the reason; "
            "a class without training images that a zero-shot run predicts is "
            "evaluated (in U) and not listed.",
        ),
        "runs": (
            "Runs",
            "The MLflow runs behind the numbers; n_mismatch = classes whose eval/per_class.csv "
            "differs from the numbers recomputed from eval/predictions.csv (0 expected).",
        ),
    }
    body = "".join(
        f'<section id="{k}"><h2>{headings[k][0]}</h2><p class="note">{html.escape(headings[k][1])}</p>'
        + "".join(parts[k])
        + "</section>"
        for k in SECTIONS
    )
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222} .tbl{border-collapse:collapse;font-size:13px}"
        " .tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
        " .tbl td:first-child,.tbl th:first-child{text-align:left} .note{color:#555;max-width:70em}"
        " section{margin-bottom:2.5em} nav a{margin-right:1em} .words{max-width:70em;font-size:15px}"
        " .gallery img{height:48px;margin-right:3px;border:1px solid #ccc} .few{color:#b00;font-weight:bold}"
        " .conf td{vertical-align:middle}"
    )
    nav = "".join(f'<a href="#{k}">{headings[k][0]}</a>' for k in SECTIONS)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{style}</style><script type="text/javascript">{get_plotlyjs()}</script>{CLASS_VIEW_JS}</head>'
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(scope_text)}</p><nav>{nav}</nav>{body}</body></html>"
    )


def report_markdown(tables: Tables, scope_text: str, full: bool = True) -> str:
    """The report as Markdown: summaries (and, with ``full``, per-class tables, exclusions and runs)."""
    out = [f"# Technique comparison\n\n{scope_text}\n"]
    for stage, summ in tables.summary.items():
        out.append(f"## {stage}\n\n" + markdown_table(display_summary(summ)) + "\n")
        if tables.paired_text.get(stage):
            out.append(tables.paired_text[stage] + "\n")
        if len(tables.paired.get(stage, ())):
            out.append(markdown_table(display_pairs(tables.paired[stage])) + "\n")
    if full:
        for stage, wide in tables.per_class.items():
            out.append(f"## {stage}: per class\n\n" + markdown_table(wide, ".3f") + "\n")
        out.append(
            "## Classes not evaluated\n\n"
            + (markdown_table(tables.not_evaluated) if len(tables.not_evaluated) else "none")
            + "\n"
        )
        out.append(
            "## Runs\n\n"
            + markdown_table(
                tables.runs[["stage", "technique", "seed", "run_id", "top1_mean", "top5_mean", "n_mismatch"]]
            )
            + "\n"
        )
        if len(tables.left_out):
            out.append("## Runs left out\n\n" + markdown_table(tables.left_out) + "\n")
    return "\n".join(out)


def write_report(tables: Tables, out: str | Path, scope_text: str, ui_url: str = UI_URL) -> list[Path]:
    """Write the HTML, CSV and Markdown files into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report.html": report_html(tables, scope_text, ui_url=ui_url),
        "report.md": report_markdown(tables, scope_text),
        "summary.md": report_markdown(tables, scope_text, full=False),
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    frames = {
        "runs.csv": tables.runs,
        "per_class_runs.csv": tables.per_class_runs,
        "not_evaluated.csv": tables.not_evaluated,
        "left_out.csv": tables.left_out,
    }
    for stage in tables.summary:
        frames[f"summary_{stage}.csv"] = tables.summary[stage]
        frames[f"per_class_{stage}.csv"] = tables.per_class[stage]
        frames[f"few_shot_{stage}.csv"] = few_shot_table(
            tables.per_class[stage], list(tables.summary[stage]["technique"])
        )
        for name in ("paired", "paired_classes", "protocols", "confusions", "class_view"):
            if stage in getattr(tables, name):
                frames[f"{name}_{stage}.csv"] = getattr(tables, name)[stage]
    for name, df in frames.items():
        df.to_csv(out / name, index=False)
    return sorted(out / n for n in list(files) + list(frames))
