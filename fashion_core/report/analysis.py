"""The report's analyses of one stage beyond its summary: paired comparisons, the peers' protocols, confusions.

Every function takes the stage's run evaluations (``tables.RunEval``) and the stage's shared test
resamples (``stats.StageSample``); docs/report-statistics.md says how each figure is computed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fashion_core.evaluation import metrics as M
from fashion_core.report.stats import ALPHA, Row, StageSample, compare_pair

# The peers' protocol (Elias Vansteenkiste's repository): classes with at least this many training images
# (even years: our train and validation together) and test images (odd years).
PEER_MIN_TRAIN, PEER_MIN_TEST = 3, 2
# Heatmap cells (and per-class rows) from fewer test images than this are marked: one image is 0 or 1.
FEW_TEST = 5
N_CONFUSIONS = 10  # most frequent true -> predicted pairs listed per technique
N_GALLERY_PAIRS = 5  # of those, the pairs shown with example images
N_EXAMPLES = 4  # example images per pair


def stage_sample(evals: Sequence, n_boot: int = 1000, seed: int = 0) -> StageSample:
    """The stage's test images (every id any run scored, in the first run's order) and their shared resamples."""
    frames = [e.preds[["id", "label"]] for e in evals if e.preds is not None]
    both = (
        pd.concat(frames, ignore_index=True).drop_duplicates("id") if frames else pd.DataFrame({"id": [], "label": []})
    )
    classes = list(dict.fromkeys(c for e in evals for c in e.per_class["class"]))
    return StageSample.build(both["id"].to_numpy(), both["label"].astype(str).tolist(), classes, n_boot, seed)


def evaluated_mask(e, classes: Sequence[str]) -> np.ndarray:
    """A run's evaluated classes (training and test images) as a mask over ``classes``."""
    t = e.per_class.set_index("class")
    ok = set(t.index[(t["n_train"] > 0) & (t["n_test"] > 0)])
    return np.array([c in ok for c in classes], dtype=bool)


def stage_rows(evals: Sequence, sample: StageSample) -> tuple[dict[str, Row], dict[str, np.ndarray]]:
    """Per row (technique label): its seeds' top-1 hits, and its top-5 hits (both (N, S), seeds ascending)."""
    by: dict[str, list] = {}
    for e in evals:
        by.setdefault(e.technique, []).append(e)
    rows, top5 = {}, {}
    for name, es in by.items():
        es = sorted(es, key=lambda e: e.seed)
        h = [sample.hits(e.preds) for e in es]
        rows[name] = Row(
            name, [e.seed for e in es], np.stack([x[0] for x in h], axis=1), evaluated_mask(es[0], sample.classes)
        )
        top5[name] = np.stack([x[1] for x in h], axis=1)
    return rows, top5


def split_pair(text: str) -> tuple[str, str]:
    """``A,B`` into two row names; a comma inside a row's ``[key=value, ...]`` does not split."""
    parts = re.split(r",(?![^\[]*\])", text)
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"--pair {text!r}: give two techniques as A,B")
    return parts[0].strip(), parts[1].strip()


def held_out_rows(summ: pd.DataFrame) -> set[str]:
    """Rows of a zero-shot benchmark with held-out classes: their class-mean is over fewer seen classes than the
    stage's, so they are another benchmark, not a contender for the stage's best."""
    if "top1_unseen_heldout_mean" not in summ:
        return set()
    return set(summ.loc[summ["top1_unseen_heldout_mean"].notna(), "technique"])


def best_row(summ: pd.DataFrame) -> str:
    """The stage's reference: the top-ranked row that is neither test-informed nor a held-out benchmark (else the
    top-ranked row)."""
    clean = summ[~summ["test_informed"]] if "test_informed" in summ else summ
    clean = clean[~clean["technique"].isin(held_out_rows(summ))]
    return str((clean if len(clean) else summ)["technique"].iloc[0])


def paired_comparisons(
    sample: StageSample,
    rows: dict[str, Row],
    summ: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] = (),
    stage: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each row against the stage's best, and the requested pairs present in this stage.

    Returns:
        (pairs table, per-class table): one line per pair (``stats.compare_pair`` summary plus ``kind``),
        and the per-class McNemar lines of every pair (columns ``a``, ``b`` first).
    """
    best = best_row(summ)
    other_benchmark = held_out_rows(summ)
    todo = [(t, best, "against the best") for t in summ["technique"] if t != best and t not in other_benchmark]
    for a, b in pairs:
        if a in rows and b in rows and (a, b) not in [(x, y) for x, y, _ in todo]:
            todo.append((a, b, "requested"))
    lines, per = [], []
    for a, b, kind in todo:
        s, pc = compare_pair(sample, rows[a], rows[b])
        lines.append({"kind": kind, **s})
        per.append(pc.assign(a=a, b=b))
    cols = [
        "kind",
        "a",
        "b",
        "diff",
        "diff_lo",
        "diff_hi",
        "poi",
        "poi_lo",
        "poi_hi",
        "n_classes",
        "n_better",
        "n_worse",
        "indistinguishable",
    ]
    table = pd.DataFrame(lines, columns=cols)
    classes = pd.concat(per, ignore_index=True) if per else pd.DataFrame(columns=["a", "b", "class"])
    front = ["a", "b"]
    classes = classes[front + [c for c in classes.columns if c not in front]]
    return table, classes


def unknown_pairs(pairs: Sequence[tuple[str, str]], names: dict[str, set]) -> list[str]:
    """Requested pairs whose two rows are not both in one stage (names: stage -> row names)."""
    return [f"{a},{b}" for a, b in pairs if not any(a in n and b in n for n in names.values())]


def paired_words(stage: str, table: pd.DataFrame, summ: pd.DataFrame) -> str:
    """The comparison in words: which rows are indistinguishable from the stage's best."""
    best = best_row(summ)
    marked = set(summ.loc[summ["test_informed"], "technique"]) if "test_informed" in summ else set()
    ref = table[table["kind"] == "against the best"]

    def name(t):
        return f"{t} (test-informed)" if t in marked else t

    def fig(r):
        return f"{r['a']} {r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]"

    top = summ.set_index("technique").loc[best]
    text = f"{stage}: the best is {name(best)} (Top-1 class-mean {top['top1_mean']:.3f})"
    if not len(ref):
        return text + "; no other technique to compare."
    same = ref[ref["indistinguishable"]]
    diff = ref[~ref["indistinguishable"]]
    text += ". " + (
        (
            "Indistinguishable from it (the 95% paired interval of the difference contains 0): "
            + "; ".join(name(r["a"]) + f" ({fig(r)[len(r['a']) + 1 :]})" for _, r in same.iterrows())
            + "."
        )
        if len(same)
        else "No technique is indistinguishable from it."
    )
    if len(diff):
        text += (
            " Different from it: "
            + "; ".join(
                name(r["a"]) + f" ({fig(r)[len(r['a']) + 1 :]}, {'better' if r['diff'] > 0 else 'worse'})"
                for _, r in diff.iterrows()
            )
            + "."
        )
    flagged = ref[(ref["n_better"] + ref["n_worse"]) > 0]
    if len(flagged):
        text += (
            " Classes that differ beyond chance (exact McNemar, Holm over classes): "
            + "; ".join(
                f"{name(r['a'])} better on {r['n_better']}, worse on {r['n_worse']}" for _, r in flagged.iterrows()
            )
            + "."
        )
    else:
        text += " No single class differs beyond chance (exact McNemar, Holm over classes)."
    return text


def protocol_table(evals: Sequence, order: Sequence[str]) -> pd.DataFrame:
    """Each row's class-mean Top-1 under the peers' protocols (mean over seeds), with the classes counted."""
    out = []
    for t in order:
        es = [e for e in evals if e.technique == t]
        ours, peer, micro = [], [], []
        for e in es:
            pc = e.per_class
            ev = (pc["n_train"] > 0) & (pc["n_test"] > 0)
            pr = ((pc["n_train"] + pc["n_val"]) >= PEER_MIN_TRAIN) & (pc["n_test"] >= PEER_MIN_TEST)
            ours.append((pc.loc[ev, "top1"].mean(), int(ev.sum())))
            peer.append((pc.loc[pr, "top1"].mean(), int(pr.sum())))
            micro.append(e.summary.get("top1_micro", np.nan))
        out.append(
            {
                "technique": t,
                "ours": float(np.mean([x[0] for x in ours])),
                "ours_classes": ours[0][1],
                "peers": float(np.mean([x[0] for x in peer])),
                "peers_classes": peer[0][1],
                "micro": float(np.mean(micro)),
                "seeds": len(es),
                "test_informed": any(e.test_informed for e in es),
            }
        )
    return pd.DataFrame(
        out, columns=["technique", "ours", "ours_classes", "peers", "peers_classes", "micro", "seeds", "test_informed"]
    )


def scored_classes(e) -> set:
    """The classes a run is scored on: those with training and test images, and for a zero-shot run every
    class with test images (a test-only class is a mistake no other model can avoid, so it is left out)."""
    t = e.per_class
    keep = (t["n_test"] > 0) & ((t["n_train"] > 0) | bool(e.zero_shot))
    return set(t.loc[keep, "class"].astype(str))


def confusions(
    evals: Sequence, order: Sequence[str], n_top: int = N_CONFUSIONS, n_examples: int = N_EXAMPLES
) -> pd.DataFrame:
    """Each row's most frequent top-1 mistakes: true -> predicted, mistakes per seed, share of the class.

    ``count`` is the mean over the row's seeds; ``share`` divides it by the class's test images;
    ``examples`` holds up to ``n_examples`` product ids of the mistake (the lowest seed's first).
    """
    out = []
    for t in order:
        es = sorted((e for e in evals if e.technique == t), key=lambda e: e.seed)
        wrong = []
        for e in es:
            p = e.preds
            w = p[(p["label"].astype(str) != p["pred1"].astype(str)) & p["label"].astype(str).isin(scored_classes(e))]
            wrong.append(w.assign(seed=e.seed))
        if not wrong:
            continue
        w = pd.concat(wrong, ignore_index=True)
        n_test = es[0].preds.groupby(es[0].preds["label"].astype(str)).size()
        counts = (
            w.groupby([w["label"].astype(str), w["pred1"].astype(str)])
            .size()
            .sort_values(ascending=False, kind="stable")
        )
        for rank, ((true, pred), k) in enumerate(counts.head(n_top).items(), 1):
            ids = w.loc[(w["label"].astype(str) == true) & (w["pred1"].astype(str) == pred), "id"]
            n = int(n_test.get(true, 0))
            out.append(
                {
                    "technique": t,
                    "rank": rank,
                    "true": true,
                    "pred": pred,
                    "count": k / len(es),
                    "n_test": n,
                    "share": (k / len(es)) / n if n else np.nan,
                    "examples": [int(i) if str(i).lstrip("-").isdigit() else i for i in dict.fromkeys(ids.tolist())][
                        :n_examples
                    ],
                }
            )
    return pd.DataFrame(out, columns=["technique", "rank", "true", "pred", "count", "n_test", "share", "examples"])


def class_view(wide: pd.DataFrame, order: Sequence[str], evals: Sequence) -> pd.DataFrame:
    """Long table for the per-class view: class x technique with Top-1, its Wilson interval, Top-5, the most
    frequent confusion of that class for that technique, n_train / n_test."""
    rows = wide[wide["n_test"] > 0]
    scored: dict[str, set] = {}
    # (technique, class) -> "pred (count)" of the most frequent mistake, over all the row's seeds
    first: dict[tuple[str, str], str] = {}
    for t in order:
        es = [e for e in evals if e.technique == t]
        frames = [e.preds[e.preds["label"].astype(str).isin(scored_classes(e))] for e in es]
        if not frames:
            continue
        scored[t] = set.union(*(scored_classes(e) for e in es))
        p = pd.concat(frames, ignore_index=True)
        w = p[p["label"].astype(str) != p["pred1"].astype(str)]
        top = w.groupby([w["label"].astype(str), w["pred1"].astype(str)]).size()
        for (true, pred), k in top.sort_values(ascending=False, kind="stable").items():
            first.setdefault((t, true), f"{pred} ({k / len(es):g})")
    out = []
    for _, r in rows.iterrows():
        n = int(r["n_test"])
        for t in order:
            acc = r.get(f"{t} top1")
            if acc is None or acc != acc or r["class"] not in scored.get(t, set()):
                continue
            lo, hi = M.wilson_interval(acc * n, n)
            out.append(
                {
                    "class": r["class"],
                    "n_train": int(r["n_train"]),
                    "n_test": n,
                    "technique": t,
                    "top1": float(acc),
                    "top1_lo": float(lo),
                    "top1_hi": float(hi),
                    "top5": float(r.get(f"{t} top5", np.nan)),
                    "most_confused_with": first.get((t, r["class"]), ""),
                    "few_test": n < FEW_TEST,
                }
            )
    return pd.DataFrame(
        out,
        columns=[
            "class",
            "n_train",
            "n_test",
            "technique",
            "top1",
            "top1_lo",
            "top1_hi",
            "top5",
            "most_confused_with",
            "few_test",
        ],
    )


__all__ = [
    "ALPHA",
    "FEW_TEST",
    "PEER_MIN_TEST",
    "PEER_MIN_TRAIN",
    "class_view",
    "confusions",
    "evaluated_mask",
    "paired_comparisons",
    "paired_words",
    "protocol_table",
    "split_pair",
    "stage_rows",
    "stage_sample",
    "unknown_pairs",
]
