"""How much harder are the test years, and how much of that is the year shift? A ceiling check on the metadata.

The stage's metadata-only model (the ``meta_only`` technique: a logistic regression on the categorical fields
and the hashed product name, C picked on validation) scored three ways, per class and as the Top-1 class mean:

- training years -> validation (the even years' own held-out products),
- training years -> test (the odd years: what every run reports),
- test years -> test, by k-fold cross-validation WITHIN the odd years, with the same C: what the same model
  reaches when it learns the test years' own naming and labelling. This one learns from test labels, so it is
  a diagnosis only: nothing here selects anything or feeds back into a run.

If the third column is low too, the test years are harder in themselves (their names say less); the gap
between the second and third is what the year shift costs.

    python bench/year_shift.py --data ../shared/data/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="The dataset (folder or archive), as for `fashion prepare`.")
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    ap.add_argument("--folds", type=int, default=5, help="Folds of the cross-validation within the test years.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config overrides of the meta_only technique, e.g. -o metadata.logreg_c=10.",
    )
    return ap.parse_args(argv)


def per_class_top1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Top-1 of each class index (NaN for a class without rows)."""
    out = np.full(n_classes, np.nan)
    for k in np.unique(y):
        out[k] = float(np.mean(pred[y == k] == k))
    return out


def cross_val_predict(
    rows: pd.DataFrame, y: np.ndarray, fusion_cfg, c: float, class_weight, folds: int, seed: int, n_classes: int
) -> np.ndarray:
    """Out-of-fold top-1 predictions (class indices) of the metadata model within one set of rows.

    Classes with fewer rows than ``folds`` are left out (prediction -1): stratified folds need one per fold.
    The vocabularies are fitted on each fold's training part, as the baseline fits them on its training split.
    """
    from sklearn.model_selection import StratifiedKFold

    from fashion_core.fusion.encoders import MetaVocab
    from fashion_core.fusion.metadata_only import class_scores, features, fit_logreg

    counts = pd.Series(y).value_counts()
    keep = np.isin(y, counts[counts >= folds].index.to_numpy())
    pred = np.full(len(y), -1, dtype=np.int64)
    idx = np.flatnonzero(keep)
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(idx, y[idx]):
        tr, te = idx[train], idx[held]
        vocab = MetaVocab.fit(rows.iloc[tr], fusion_cfg)
        clf, _ = fit_logreg(features(vocab, rows.iloc[tr]), y[tr], c, class_weight, seed)
        pred[te] = class_scores(clf, features(vocab, rows.iloc[te]), n_classes).argmax(1)
    return pred


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fashion_core.config.checks import LOGREG_C_GRID
    from fashion_core.config.schema import find_technique, load_experiment, parse_overrides
    from fashion_core.data.prepared import prepare_data
    from fashion_core.data.stage import build_stage_data
    from fashion_core.fusion.encoders import MetaVocab
    from fashion_core.fusion.metadata_only import class_scores, features, fit_logreg
    from fashion_core.fusion.plan import stage_rows

    cfg = load_experiment(
        find_technique("meta_only", args.stage, ROOT / "experiments"), parse_overrides(args.override), stage=args.stage
    )
    p = prepare_data(args.data, cfg.data)
    sd = build_stage_data(p, cfg.stage)
    rows = {s: stage_rows(p, sd.frame.loc[sd.frame["split"] == s, "id"]) for s in ("train", "val", "test")}
    y = {"train": sd.train.labels.numpy(), "val": sd.val.labels.numpy(), "test": sd.test.labels.numpy()}
    learnable = y["test"] >= 0  # test rows of test-only classes (-1) are in no class mean
    rows["test"], y["test"] = rows["test"][learnable], y["test"][learnable]
    n = len(sd.classes)
    class_weight = "balanced" if cfg.loss.weights == "inverse" else None
    vocab = MetaVocab.fit(rows["train"], cfg.fusion)
    x = {s: features(vocab, rows[s]) for s in rows}
    best = None
    for c in [cfg.metadata.logreg_c] if cfg.metadata.logreg_c > 0 else LOGREG_C_GRID:
        clf, _ = fit_logreg(x["train"], y["train"], c, class_weight, args.seed)
        v = np.nanmean(per_class_top1(y["val"], class_scores(clf, x["val"], n).argmax(1), n))
        print(f"C={c:g}: validation class mean {v:.4f}", flush=True)
        if best is None or v > best[1]:
            best = (clf, v, c)
    clf, _, c = best
    val = per_class_top1(y["val"], class_scores(clf, x["val"], n).argmax(1), n)
    test = per_class_top1(y["test"], class_scores(clf, x["test"], n).argmax(1), n)
    oof = cross_val_predict(rows["test"], y["test"], cfg.fusion, c, class_weight, args.folds, args.seed, n)
    within = per_class_top1(y["test"][oof >= 0], oof[oof >= 0], n)
    n_train, n_test = np.bincount(y["train"], minlength=n), np.bincount(y["test"], minlength=n)
    table = pd.DataFrame(
        {
            "class": sd.classes,
            "train": n_train,
            "test": n_test,
            "train years -> val": val,
            "train years -> test": test,
            "test years, cross-validated": within,
        }
    )
    # the same classes in every column: training rows, and enough test rows for the folds
    table = table[(table["train"] > 0) & table["test years, cross-validated"].notna()]
    print(
        f"\n{cfg.stage}: metadata-only logistic regression (C={c:g}, {cfg.loss.weights} class weights), "
        f"Top-1 per class; {args.folds}-fold cross-validation within the test years\n"
    )
    cols = list(table.columns)
    print("| " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * (len(cols) - 1))
    for _, r in table.iterrows():
        print(f"| {r['class']} | {r['train']} | {r['test']} | " + " | ".join(f"{r[k]:.3f}" for k in cols[3:]) + " |")
    means = {k: table[k].mean() for k in cols[3:]}
    print(f"| **class mean** ({len(table)} classes) | | | " + " | ".join(f"**{v:.4f}**" for v in means.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
