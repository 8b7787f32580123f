"""Where does a logged run lose its class mean? Its test errors, by slice of the catalogue.

For each run it reads ``eval/predictions.csv`` and ``eval/per_class.csv`` and the catalogue rows of those
products and, for each slicing — brand (the first word of the name), gender, year, and whether the name
holds a word of the product's own class ("Casual Shoe", "T-shirt"; the odd years name many kids' garments
"... Kidswear") — prints the slices whose errors cost the Top-1 class mean most: test products, errors,
error rate, and the class mean the run would have if that slice's errors were right. A diagnosis of the
test split's errors, never a selection: nothing here feeds back into training or into a choice.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python bench/error_budget.py \\
        --data ../shared/data/fashion-product-images-small.tar.gz RUN_ID [RUN_ID ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLICINGS = ("brand", "gender", "year", "name holds its class word")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="Run ids (or runs:/ / models:/ URIs) of pretrain or finetune runs.")
    ap.add_argument("--data", required=True, help="The dataset the runs were evaluated on (folder or archive).")
    ap.add_argument("--top", type=int, default=6, help="Slices shown per slicing (the costliest).")
    return ap.parse_args(argv)


def class_mean(label: pd.Series, right: pd.Series) -> float:
    """Top-1 class mean: the mean over classes of each class's share of right predictions."""
    return float(right.groupby(label.to_numpy()).mean().mean())


def slice_costs(pred: pd.DataFrame, key: pd.Series) -> pd.DataFrame:
    """Per value of ``key``: test rows, errors, error rate, class mean if its errors were right, and the cost.

    Args:
        pred: rows of evaluated classes with ``label`` and ``pred1``.
        key: the slice of each row (aligned with ``pred``).

    Returns:
        DataFrame indexed by slice, sorted by ``cost`` (class-mean points, 0-1 scale) descending.
    """
    right = pred["label"] == pred["pred1"]
    base = class_mean(pred["label"], right)
    key = key.fillna("(missing)").astype(str).to_numpy()
    rows = []
    for value in pd.unique(key):
        inside = key == value
        fixed = class_mean(pred["label"], right | inside)
        errors = int((~right & inside).sum())
        rows.append(
            {
                "slice": value,
                "test": int(inside.sum()),
                "errors": errors,
                "error rate": errors / int(inside.sum()),
                "class mean if right": fixed,
                "cost": fixed - base,
            }
        )
    return pd.DataFrame(rows).set_index("slice").sort_values(["cost", "test"], ascending=False)


def slice_keys(pred: pd.DataFrame, meta: pd.DataFrame) -> dict[str, pd.Series]:
    """The slicings of ``SLICINGS`` for each prediction row, from its catalogue row (``meta``, aligned with ``pred``)."""
    from fashion_core.fusion.encoders import holds_class_word

    names = meta["productDisplayName"].fillna("").astype(str)
    brand = names.str.split().str[0].fillna("(no name)")
    holds = [holds_class_word(label, name) for label, name in zip(pred["label"], names)]
    out = {
        "brand": brand,
        "gender": meta["gender"],
        "year": meta["year"].astype("Int64").astype(str),
        "name holds its class word": pd.Series(np.where(holds, "yes", "no")),
    }
    return {k: pd.Series(np.asarray(v), index=pred.index) for k, v in out.items()}


def evaluated_predictions(pred: pd.DataFrame, per_class: pd.DataFrame) -> pd.DataFrame:
    """The prediction rows of the classes in the run's class mean (training and test images both)."""
    ok = per_class[(per_class["n_train"] > 0) & (per_class["n_test"] > 0)]["class"]
    return pred[pred["label"].isin(set(ok))].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mlflow.tracking import MlflowClient

    from bench.tta import run_data_config
    from fashion_core.data.prepared import prepare_data
    from fashion_core.evaluation import metrics as M
    from fashion_core.fusion.plan import stage_rows
    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking.references import resolve_model_uri

    prepared = {}
    for spec in args.runs:
        run_id = resolve_model_uri(spec)
        tags = MlflowClient().get_run(run_id).data.tags
        with tempfile.TemporaryDirectory() as d:
            pred = M.read_predictions(tracking.download_artifact(run_id, "eval/predictions.csv", d))
            per_class = M.read_per_class(tracking.download_artifact(run_id, "eval/per_class.csv", d))
        dcfg = run_data_config(run_id)
        key = tuple(sorted(vars(dcfg).items()))
        if key not in prepared:
            prepared[key] = prepare_data(args.data, dcfg)
        pred = evaluated_predictions(pred, per_class)
        right = pred["label"] == pred["pred1"]
        print(
            f"\n## {run_id[:8]} {tags.get('stage', '?')}/{tags.get('technique', '?')}: Top-1 class mean "
            f"{class_mean(pred['label'], right):.4f}, {int((~right).sum())} errors in {len(pred)} test products "
            f"of {pred['label'].nunique()} classes"
        )
        for name, key_series in slice_keys(pred, stage_rows(prepared[key], pred["id"])).items():
            table = slice_costs(pred, key_series).head(args.top)
            print(f"\n{name} (the {len(table)} costliest)\n")
            print(f"| {name} | test | errors | error rate | class mean if right | cost (points) |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for value, r in table.iterrows():
                print(
                    f"| {value} | {int(r['test'])} | {int(r['errors'])} | {r['error rate']:.3f} | "
                    f"{r['class mean if right']:.4f} | {100 * r['cost']:.2f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
