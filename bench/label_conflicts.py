"""How consistent is the catalogue's labelling across the year split? A ceiling check for any classifier.

For each class of a stage, the share of its test (odd-year) products whose exact product name
(lower-cased, whitespace-normalised) also occurs among the stage's training-year products, and the share
whose name the training years give mostly to a DIFFERENT class ("conflict"). A model that labels a name as
the training years do gets every conflicting product wrong: the image must overrule
the name there. Also prints the brands behind the conflicts of the worst class.

    python bench/label_conflicts.py --data ../shared/data/fashion-product-images-small.tar.gz --stage pretrain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="The dataset (folder or archive), as for `fashion prepare`.")
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    return ap.parse_args(argv)


def name_conflicts(rows, names):
    """Per-class table from split rows (id, label, split) and a Series id -> product name.

    Training years = the ``train`` and ``val`` rows (the even years); test = the ``test`` rows.
    """
    rows = rows.assign(name=rows["id"].map(names).fillna("").str.lower().str.split().str.join(" "))
    train = rows[rows["split"].isin(["train", "val"]) & (rows["name"] != "")]
    test = rows[rows["split"] == "test"]
    majority = train.groupby("name")["label"].agg(lambda s: s.value_counts().index[0])
    test = test.assign(seen=test["name"].isin(majority.index), train_label=test["name"].map(majority))
    test = test.assign(conflict=test["seen"] & (test["train_label"] != test["label"]))
    learnable = set(train["label"])
    test = test[test["label"].isin(learnable)]  # the evaluated classes: test-only classes cannot be learned
    table = test.groupby("label").agg(
        n_test=("id", "size"), name_seen=("seen", "mean"), conflict=("conflict", "mean"), n_conflict=("conflict", "sum")
    )
    return table.sort_values(["conflict", "n_test"], ascending=False), test[test["conflict"]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fashion_core.config.schema import DataConfig
    from fashion_core.data.prepared import prepare_data

    p = prepare_data(args.data, DataConfig())
    rows = p.splits[p.splits["subset"] == args.stage]
    names = p.catalog.set_index("id")["productDisplayName"]
    table, conflicts = name_conflicts(rows, names)
    print(f"{args.stage}: test products whose exact name the training years give to another class\n")
    print("| class | test products | name seen in training years | conflicting | share |")
    print("| --- | --- | --- | --- | --- |")
    for label, r in table.iterrows():
        print(f"| {label} | {int(r.n_test)} | {r.name_seen:.3f} | {int(r.n_conflict)} | {r.conflict:.3f} |")
    print(
        f"\nclass-mean share of conflicting test products over {len(table)} evaluated classes: "
        f"{table['conflict'].mean():.4f} "
        f"(what a model loses that labels these names as the training years do, "
        f"unless the image overrules the name)"
    )
    if len(conflicts):
        worst = table.index[0]
        c = conflicts[conflicts["label"] == worst]
        brands = c["name"].str.split().str[0].value_counts()
        print(
            f"\n{worst}: {len(c)} conflicting test products, labelled in training years as "
            + ", ".join(f"{k} ({v})" for k, v in c["train_label"].value_counts().items())
            + "; brands "
            + ", ".join(f"{k} ({v})" for k, v in brands.head(5).items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
