"""Which calibration of seen against unseen scores? Zero-shot variants compared on pseudo-unseen VALIDATION only.

The protocol of ``zeroshot.calibrate``, repeated over several fold seeds: each fold holds a third of the seen
classes with validation images out as pseudo-unseen (their training rows leave the metadata model and the
name model), scores every validation row over all candidate classes and reads the class-mean Top-1 of the
pseudo-seen (S) and pseudo-unseen (U) rows and H = 2SU / (S + U). Variants of the seen classes' hold-back:

- ``constant``: gamma (calibrated stacking; the first pass of #18);
- ``words``: gamma + beta * share of the name's words that no training name of the fold holds;
- ``doubt``: gamma + beta * doubt(x), doubt = -max log p_meta over the seen classes (the chosen one).

Each variant's (mix, beta, gamma) is the best mean H over all folds ("all"), and, free of that choice's
optimism, chosen on the first half of the fold seeds and read on the second ("nested"). No test row is read.

    python bench/zeroshot_calibration.py --data ../shared/data/fashion-product-images-small.tar.gz -o fusion.logreg_c=10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BETAS = (0.0, 2.0, 4.0, 6.0, 8.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="The dataset (folder or archive), as for `fashion prepare`.")
    ap.add_argument("--stage", default="finetune", choices=["pretrain", "finetune"])
    ap.add_argument("--seeds", type=int, default=4, help="Fold seeds (3 folds each).")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                    help="Config overrides of the zeroshot technique, e.g. -o fusion.logreg_c=10.")
    return ap.parse_args(argv)


def name_words(names) -> list[set[str]]:
    """The singular words of each name (no joined pairs)."""
    from fashion_core.zeroshot import name_tokens

    return [set(t[:n]) for t, _, n in map(name_tokens, names)]


def main(argv: list[str] | None = None) -> int:
    from fashion_core.config import load_experiment
    from fashion_core.data import prepare_data
    from fashion_core.fusion import TEXT_FIELD, MetaVocab, stage_rows
    from fashion_core.metadata_model import class_scores, features
    from fashion_core.metadata_baseline import fit_logreg
    from fashion_core.zeroshot import (GAMMAS, NameMatcher, candidate_classes, fit_ranker, harmonic, pseudo_unseen_folds,
                                       ranker_log_proba, split_means, stacked_scores)
    from fashion_core.zeroshot.ranker import doubt

    args = parse_args(argv)
    over = dict(o.split("=", 1) for o in args.override)
    cfg = load_experiment(ROOT / "experiments" / args.stage / "zeroshot.yaml", overrides=over, profile="quick",
                          stage=args.stage)
    p = prepare_data(args.data, cfg.data, log=lambda m: None)
    classes = candidate_classes(p.splits, args.stage)
    index = {c: i for i, c in enumerate(classes)}
    sp = p.splits[(p.splits["subset"] == args.stage) & p.splits["split"].isin(["train", "val"])]
    sp = sp.sort_values("id", kind="stable")
    rows = {s: stage_rows(p, sp.loc[sp["split"] == s, "id"]) for s in ("train", "val")}
    y = {s: sp.loc[sp["split"] == s, "label"].map(index).to_numpy() for s in ("train", "val")}
    vocab = MetaVocab.fit(rows["train"], cfg.fusion)
    x = {s: features(vocab, r) for s, r in rows.items()}
    matcher = NameMatcher.build(classes, rows["train"][TEXT_FIELD])
    phi = {s: matcher.features(r[TEXT_FIELD]) for s, r in rows.items()}
    words = {s: name_words(r[TEXT_FIELD]) for s, r in rows.items()}
    c = cfg.fusion.logreg_c if cfg.fusion.logreg_c > 0 else 1.0
    out = []
    for seed in range(args.seeds):
        for held in pseudo_unseen_folds(np.unique(y["val"]), seed):
            keep = ~np.isin(y["train"], held)
            clf, _ = fit_logreg(x["train"][np.flatnonzero(keep)], y["train"][keep], c, "balanced", cfg.train.seed)
            meta = class_scores(clf, x["val"], len(classes))
            seen = np.zeros(len(classes), dtype=bool)
            seen[np.unique(y["train"][keep])] = True
            name = ranker_log_proba(phi["val"], fit_ranker(phi["train"][keep], y["train"][keep]))
            known = set().union(*[words["train"][j] for j in np.flatnonzero(keep)])
            signal = {"constant": np.zeros(len(y["val"])), "doubt": doubt(meta, seen),
                      "words": np.array([len(w - known) / len(w) if w else 0.0 for w in words["val"]])}
            pseudo_seen = np.setdiff1d(np.unique(y["val"]), held)
            for mix in ("gate", "product"):
                base = stacked_scores(meta, name, seen, 0.0, mix)
                for kind, v in signal.items():
                    for b in (BETAS[:1] if kind == "constant" else BETAS[1:]):
                        for g in GAMMAS:
                            s = base.copy()
                            s[:, seen] -= g + b * v[:, None]
                            s_mean, u_mean = split_means(y["val"], s.argmax(axis=1), [pseudo_seen, held])
                            out.append({"variant": kind, "mix": mix, "beta": b, "gamma": g, "seed": seed, "S": s_mean,
                                        "U": u_mean, "H": harmonic(s_mean, u_mean)})
        print(f"fold seed {seed} done", flush=True)
    df = pd.DataFrame(out)
    keys = ["variant", "mix", "beta", "gamma"]
    mean = df.groupby(keys)[["S", "U", "H"]].mean()
    first = df[df["seed"] < args.seeds // 2].groupby(keys)["H"].mean()
    second = df[df["seed"] >= args.seeds // 2].groupby(keys)["H"].mean()
    table = []
    for (kind, mix), g in mean.groupby(level=[0, 1]):
        best = g["H"].idxmax()
        chosen = first.loc[(kind, mix)].idxmax()
        table.append({"variant": kind, "mix": mix, "beta": best[2], "gamma": best[3], **g.loc[best].round(4).to_dict(),
                      "H_nested": round(float(second.loc[(kind, mix) + chosen]), 4)})
    print(pd.DataFrame(table).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
