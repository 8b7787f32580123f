"""Do sentence embeddings of the product name help the metadata-only model? Measured on VALIDATION only.

``meta_only``'s logistic regression (one-hot fields + hashed name words) against the same with the name's
all-MiniLM-L6-v2 embedding (384 dense columns, times ``scale``) appended; class-mean validation Top-1 of the
stage's classes (its seen classes: every class with training rows). C is fixed (``-o metadata.logreg_c=...``)
so each arm is one fit. No test row is read; nothing here changes a default.

    python bench/meta_text_features.py --data ../shared/data/fashion-product-images-small.tar.gz --stage finetune \
        -o metadata.logreg_c=10 --scales 0 1 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="The dataset (folder or archive), as for `fashion prepare`.")
    ap.add_argument("--stage", default="finetune", choices=["pretrain", "finetune"])
    ap.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[0.0, 1.0, 3.0],
        help="Weights of the embedding columns; 0 = the metadata-only model as it is.",
    )
    ap.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config overrides of meta_only, e.g. -o metadata.logreg_c=10.",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from scipy import sparse

    from fashion_core.config.schema import load_experiment
    from fashion_core.data.prepared import prepare_data, without_test
    from fashion_core.data.stage import build_stage_data
    from fashion_core.evaluation.scoring import class_mean_accuracy
    from fashion_core.evaluation.scoring import topk_predictions as top5_of
    from fashion_core.fusion.encoders import MetaVocab
    from fashion_core.fusion.metadata_only import class_scores, features, fit_logreg
    from fashion_core.runners.metadata_only import _split_rows
    from fashion_core.zeroshot.semantic import rows_of, stage_name_embeddings

    args = parse_args(argv)
    over = dict(o.split("=", 1) for o in args.override)
    cfg = load_experiment(
        ROOT / "experiments" / args.stage / "meta_only.yaml", overrides=over, profile="quick", stage=args.stage
    )
    c = cfg.metadata.logreg_c if cfg.metadata.logreg_c > 0 else 1.0
    p = prepare_data(args.data, cfg.data)
    sd = build_stage_data(without_test(p), cfg.stage)  # a choice: no test row in memory
    rows = {s: _split_rows(p, sd, s) for s in ("train", "val")}
    vocab = MetaVocab.fit(rows["train"], cfg.fusion)
    x = {s: features(vocab, r) for s, r in rows.items()}
    ids, emb = stage_name_embeddings(p, cfg.stage)
    e = {s: rows_of(ids, emb, r.index) for s, r in rows.items()}
    y_train, y_val = sd.train.labels.numpy(), sd.val.labels.numpy()
    class_weight = "balanced" if cfg.loss.weights == "inverse" else None
    out = []
    for scale in args.scales:
        t = time.perf_counter()
        xs = {s: sparse.hstack([x[s], sparse.csr_matrix(scale * e[s])]).tocsr() if scale else x[s] for s in x}
        clf, converged = fit_logreg(xs["train"], y_train, c, class_weight, cfg.train.seed)
        v1, v5 = class_mean_accuracy(y_val, top5_of(class_scores(clf, xs["val"], len(sd.classes))))
        out.append(
            {
                "stage": args.stage,
                "C": c,
                "embedding_scale": scale,
                "val_top1_mean": round(v1, 4),
                "val_top5_mean": round(v5, 4),
                "converged": converged,
                "seconds": round(time.perf_counter() - t),
            }
        )
        print(out[-1], flush=True)
    print(pd.DataFrame(out).to_string(index=False))
    return 0


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console():  # the library's lines (data, runs, epochs) on stdout
        raise SystemExit(main())
