"""The report as HTML (plotly.js embedded, opens offline), Markdown and CSV files."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .figures import class_mean_figure, few_shot_figure, heatmap_figure
from .tables import Tables, display_summary, few_shot_table, markdown_table


SECTIONS = ("summary", "class-mean", "heatmap", "few-shot", "per-class", "not-evaluated", "runs")


# ---------------------------------------------------------------- HTML

def _html_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return df.to_html(index=False, na_rep="", border=0, classes="tbl", escape=True,
                      float_format=lambda v: format(v, floatfmt))


def report_html(tables: Tables, scope_text: str, title: str = "fashion-grid: technique comparison") -> str:
    """One self-contained HTML page (plotly.js inlined once): every section of the report."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    def fig_html(fig, div_id):
        return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})

    stages = list(tables.summary)
    parts = {k: [] for k in SECTIONS}
    for stage in stages:
        summ, wide = tables.summary[stage], tables.per_class[stage]
        order = list(summ["technique"])
        parts["summary"].append(f"<h3>{stage}</h3>" + _html_table(display_summary(summ)))
        parts["class-mean"].append(fig_html(class_mean_figure(summ, tables.runs, stage), f"class-mean-{stage}"))
        parts["heatmap"].append(fig_html(heatmap_figure(wide, order, stage), f"heatmap-{stage}"))
        parts["few-shot"].append(fig_html(few_shot_figure(wide, order, stage), f"few-shot-{stage}")
                                 + "<details><summary>table</summary>"
                                 + _html_table(few_shot_table(wide, order)) + "</details>")
        parts["per-class"].append(f"<details><summary>{stage}: {len(wide)} classes x {len(order)} techniques"
                                  "</summary>" + _html_table(wide) + "</details>")
        ne = tables.not_evaluated[tables.not_evaluated["stage"] == stage]
        parts["not-evaluated"].append(f"<h3>{stage}: {len(ne)} classes not evaluated</h3>"
                                      + (_html_table(ne.drop(columns=["stage"])) if len(ne) else "<p>none</p>"))
    runs_cols = ["stage", "technique", "seed", "run_name", "run_id", "config", "top1_mean", "top5_mean", "top1_micro",
                 "n_classes_evaluated", "n_mismatch"]
    parts["runs"].append(_html_table(tables.runs[runs_cols]))
    if len(tables.left_out):
        parts["runs"].append(f"<h3>{len(tables.left_out)} runs left out</h3>" + _html_table(tables.left_out))
    headings = {
        "summary": ("Summary", "Class-mean = mean of the per-class accuracies over the evaluated classes (every class "
                               "weighs the same); ± = std across seeds; [lo, hi] = 95% interval of the seed mean "
                               "(a bootstrap over the seeds and, within each, stratified over its test images; one "
                               "seed: its own interval); seeds min-max = the lowest and highest seed; micro = over "
                               "all test images of evaluated "
                               "classes; classes won = classes where the technique has the best Top-1 (ties count "
                               "for each); LEAKY = uses masterCategory/subCategory as inputs. With a generalised "
                               "zero-shot run in the stage: Top-1 unseen (U) = class-mean over the classes without "
                               "training images (0 for a technique that cannot output them), H = harmonic mean of the "
                               "Top-1 class-mean (seen classes) and U, Top-1 all classes = class-mean over every class "
                               "with test images."),
        "class-mean": ("Class-mean accuracy", ""),
        "heatmap": ("Per-class Top-1", "Hover for Top-5 and counts."),
        "few-shot": ("Few-shot curve", "Accuracy against the number of training images of the class."),
        "per-class": ("Per-class table", "Top-1 and Top-5 per class and technique (mean over seeds)."),
        "not-evaluated": ("Classes not evaluated", "Left out of the class-mean and micro numbers, with the reason; "
                                                   "a class without training images that a zero-shot run predicts is "
                                                   "evaluated (in U) and not listed."),
        "runs": ("Runs", "The MLflow runs behind the numbers; n_mismatch = classes whose eval/per_class.csv "
                         "differs from the numbers recomputed from eval/predictions.csv (0 expected)."),
    }
    body = "".join(f'<section id="{k}"><h2>{headings[k][0]}</h2><p class="note">{html.escape(headings[k][1])}</p>'
                   + "".join(parts[k]) + "</section>" for k in SECTIONS)
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222} .tbl{border-collapse:collapse;font-size:13px}"
             " .tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             " .tbl td:first-child,.tbl th:first-child{text-align:left} .note{color:#555;max-width:70em}"
             " section{margin-bottom:2.5em} nav a{margin-right:1em}")
    nav = "".join(f'<a href="#{k}">{headings[k][0]}</a>' for k in SECTIONS)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(scope_text)}</p><nav>{nav}</nav>{body}</body></html>")


def report_markdown(tables: Tables, scope_text: str, full: bool = True) -> str:
    """The report as Markdown: summaries (and, with ``full``, per-class tables, exclusions and runs)."""
    out = [f"# Technique comparison\n\n{scope_text}\n"]
    for stage, summ in tables.summary.items():
        out.append(f"## {stage}\n\n" + markdown_table(display_summary(summ)) + "\n")
    if full:
        for stage, wide in tables.per_class.items():
            out.append(f"## {stage}: per class\n\n" + markdown_table(wide, ".3f") + "\n")
        out.append("## Classes not evaluated\n\n" + (markdown_table(tables.not_evaluated) if len(tables.not_evaluated)
                                                    else "none") + "\n")
        out.append("## Runs\n\n" + markdown_table(tables.runs[["stage", "technique", "seed", "run_id", "top1_mean",
                                                               "top5_mean", "n_mismatch"]]) + "\n")
        if len(tables.left_out):
            out.append("## Runs left out\n\n" + markdown_table(tables.left_out) + "\n")
    return "\n".join(out)


def write_report(tables: Tables, out: str | Path, scope_text: str) -> list[Path]:
    """Write the HTML, CSV and Markdown files into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.html": report_html(tables, scope_text), "report.md": report_markdown(tables, scope_text),
             "summary.md": report_markdown(tables, scope_text, full=False)}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    frames = {"runs.csv": tables.runs, "per_class_runs.csv": tables.per_class_runs,
              "not_evaluated.csv": tables.not_evaluated, "left_out.csv": tables.left_out}
    for stage in tables.summary:
        frames[f"summary_{stage}.csv"] = tables.summary[stage]
        frames[f"per_class_{stage}.csv"] = tables.per_class[stage]
        frames[f"few_shot_{stage}.csv"] = few_shot_table(tables.per_class[stage], list(tables.summary[stage]["technique"]))
    for name, df in frames.items():
        df.to_csv(out / name, index=False)
    return sorted(out / n for n in list(files) + list(frames))
