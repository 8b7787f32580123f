"""Which zero-shot variant? Name evidence and calibrations compared on pseudo-unseen VALIDATION only.

The protocol of ``zeroshot.calibrate``, repeated over several fold seeds: each fold holds a third of the seen
classes with validation images out as pseudo-unseen (their training rows leave the metadata model, the
name model and the text map), scores every validation row over all candidate classes and reads the
class-mean Top-1 of the pseudo-seen (S) and pseudo-unseen (U) rows and H = 2SU / (S + U).

Name evidence (``--text``, the ``zeroshot.*`` keys): ``none`` (the name matcher alone),
``cosine:<template>`` (+ the cosine of all-MiniLM-L6-v2 sentence embeddings of the product name and the class
text), ``mapped:<l2>:<template>`` (+ that cosine through a map learned on the fold's seen classes, pulled toward
the identity with strength l2); a template is ``{}`` (the class name) or e.g. ``a_{}_product`` (``_`` for a space).
(The definition-word, photo, other-stage and WordNet class-text (``:wordnet``) variants this bench once compared
were not adopted; they are in git history, see docs/selection-ledger.md.)
Hold-back of the seen classes:

- ``constant``: gamma (calibrated stacking; the first pass of #18);
- ``words``: gamma + beta * share of the name's words that no training name of the fold holds;
- ``doubt``: gamma + beta * doubt(x), doubt = -max log p_meta over the seen classes (the second pass's choice).

Each (evidence, hold-back, mix) row shows its grid point (beta, gamma) of the best mean H over all folds
("all"), and, free of that choice's optimism, the point chosen on the first half of the fold seeds read on the
second ("H_nested"); ``H_choose`` is the first half's best H, on which a variant is chosen. No test row is read.

    python bench/zeroshot_calibration.py --data ../shared/data/fashion-product-images-small.tar.gz -o metadata.logreg_c=10
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
TEXT_VARIANTS = ("none", "cosine:{}", "mapped:30:{}", "mapped:300:{}")
HOLD_BACKS = ("constant", "words", "doubt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="The dataset (folder or archive), as for `fashion prepare`.")
    ap.add_argument("--stage", default="finetune", choices=["pretrain", "finetune"])
    ap.add_argument(
        "--seeds",
        type=int,
        default=4,
        help="Fold seeds (3 folds each): 0 .. seeds-1; the first half chooses, the second half is the nested read.",
    )
    ap.add_argument(
        "--only-seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="Run only these fold seeds (e.g. 2 3 after an interrupted run) and write --rows; "
        "--summarize joins the row files.",
    )
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="CSV",
        help="Print the table of these --rows files (no fitting).",
    )
    ap.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config overrides of the zeroshot technique, e.g. -o metadata.logreg_c=10.",
    )
    ap.add_argument(
        "--text",
        nargs="+",
        default=list(TEXT_VARIANTS),
        metavar="VARIANT",
        help="Name evidence variants: none, cosine:<template>, mapped:<l2>:<template>.",
    )
    ap.add_argument(
        "--hold-back",
        nargs="+",
        default=list(HOLD_BACKS),
        choices=HOLD_BACKS,
        help="Hold-backs of the seen classes to compare.",
    )
    ap.add_argument(
        "--fold-by",
        default="class",
        choices=["class", "subCategory", "masterCategory"],
        help="What a pseudo-unseen fold holds out (zeroshot.fold_by): a random third of the classes, or "
        "whole groups of classes (their subCategory / masterCategory) together.",
    )
    ap.add_argument(
        "--rows",
        default=None,
        help="Also write every (fold, grid point) row to this CSV after each "
        "fold seed (a partial table survives an interrupted run).",
    )
    return ap.parse_args(argv)


def name_words(names) -> list[set[str]]:
    """The singular words of each name (no joined pairs)."""
    from fashion_core.zeroshot.names import name_tokens

    return [set(t[:n]) for t, _, n in map(name_tokens, names)]


def parse_text(variant: str) -> tuple[str, float, str]:
    """(mode, l2, template) of a ``--text`` variant."""
    parts = variant.split(":")
    if parts[0] == "none" and len(parts) == 1:
        return "none", 0.0, "{}"
    if parts[0] == "cosine" and len(parts) == 2:
        return "cosine", 1.0, parts[1].replace("_", " ")
    if parts[0] == "mapped" and len(parts) == 3:
        return "mapped", float(parts[1]), parts[2].replace("_", " ")
    raise SystemExit(f"bad --text variant {variant!r}: none, cosine:<template> or mapped:<l2>:<template>")


def main(argv: list[str] | None = None) -> int:
    from fashion_core.config.schema import load_experiment
    from fashion_core.data.prepared import prepare_data
    from fashion_core.fusion.encoders import TEXT_FIELD, MetaVocab
    from fashion_core.fusion.metadata_only import class_scores, features, fit_logreg
    from fashion_core.fusion.plan import stage_rows
    from fashion_core.zeroshot.calibration import GAMMAS, class_groups, pseudo_unseen_folds, split_means
    from fashion_core.zeroshot.names import NameMatcher, candidate_classes
    from fashion_core.zeroshot.ranker import doubt, fit_ranker, harmonic, ranker_log_proba, stacked_scores
    from fashion_core.zeroshot.semantic import (
        TextInputs,
        class_text_embeddings,
        rows_of,
        stage_name_embeddings,
        with_text,
    )
    from fashion_core.zeroshot.text_encoder import load_encoder

    args = parse_args(argv)
    if args.summarize:
        df = pd.concat([pd.read_csv(f, keep_default_na=False, na_values=["", "nan", "NaN"]) for f in args.summarize])
        print(summary(df, args.seeds).to_string(index=False))
        print_as_the_run(df, args.seeds)
        return 0
    text_variants = {v: parse_text(v) for v in args.text}
    over = dict(o.split("=", 1) for o in args.override)
    cfg = load_experiment(
        ROOT / "experiments" / args.stage / "zeroshot.yaml", overrides=over, profile="quick", stage=args.stage
    )
    p = prepare_data(args.data, cfg.data)
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
    texts = {}
    if any(mode != "none" for mode, _, _ in text_variants.values()):
        enc = load_encoder()
        ids, all_emb = stage_name_embeddings(p, args.stage, enc)
        emb = {s: rows_of(ids, all_emb, r.index) for s, r in rows.items()}
        for v, (mode, l2, template) in text_variants.items():
            if mode != "none":
                class_emb, _ = class_text_embeddings(classes, template, enc)
                texts[v] = TextInputs(mode, l2, template, class_emb, enc.source, emb)
    c = cfg.metadata.logreg_c if cfg.metadata.logreg_c > 0 else 1.0
    groups = class_groups(rows["train"], y["train"], args.fold_by)
    out = []
    for seed in args.only_seeds if args.only_seeds is not None else range(args.seeds):
        for held in pseudo_unseen_folds(np.unique(y["val"]), seed, groups=groups):
            keep = ~np.isin(y["train"], held)
            clf, _ = fit_logreg(x["train"][np.flatnonzero(keep)], y["train"][keep], c, "balanced", cfg.train.seed)
            meta = class_scores(clf, x["val"], len(classes))
            seen = np.zeros(len(classes), dtype=bool)
            seen[np.unique(y["train"][keep])] = True
            known = set().union(*[words["train"][j] for j in np.flatnonzero(keep)])
            signal = {
                "constant": np.zeros(len(y["val"])),
                "doubt": doubt(meta, seen),
                "words": np.array([len(w - known) / len(w) if w else 0.0 for w in words["val"]]),
            }
            pseudo_seen = np.setdiff1d(np.unique(y["val"]), held)
            for v in text_variants:
                phi_train, phi_val = phi["train"][keep], phi["val"]
                if v in texts:  # the map, too, learns from the fold's seen classes only
                    ev = texts[v].evidence(keep, y["train"][keep])
                    phi_train = with_text(phi_train, ev, texts[v].emb["train"][keep])
                    phi_val = with_text(phi_val, ev, texts[v].emb["val"])
                name = ranker_log_proba(phi_val, fit_ranker(phi_train, y["train"][keep]))
                for mix in ("gate", "product"):
                    base = stacked_scores(meta, name, seen, 0.0, mix)
                    for kind, sig in ((k, signal[k]) for k in args.hold_back):
                        for b in BETAS[:1] if kind == "constant" else BETAS[1:]:
                            for g in GAMMAS:
                                s = base.copy()
                                s[:, seen] -= g + b * sig[:, None]
                                s_mean, u_mean = split_means(y["val"], s.argmax(axis=1), [pseudo_seen, held])
                                out.append(
                                    {
                                        "text": v,
                                        "variant": kind,
                                        "mix": mix,
                                        "beta": b,
                                        "gamma": g,
                                        "seed": seed,
                                        "S": s_mean,
                                        "U": u_mean,
                                        "H": harmonic(s_mean, u_mean),
                                    }
                                )
        print(f"fold seed {seed} done", flush=True)
        if args.rows:
            pd.DataFrame(out).to_csv(args.rows, index=False)
    print(summary(pd.DataFrame(out), args.seeds).to_string(index=False))
    print_as_the_run(pd.DataFrame(out), args.seeds)
    return 0


def print_as_the_run(df: pd.DataFrame, seeds: int) -> None:
    """The per-evidence table as a run would choose, when the rows hold the constant and doubt hold-backs."""
    if {"constant", "doubt"} <= set(df["variant"]):
        print("\nas the run chooses (hold-back gamma + beta * doubt with beta 0 = constant, both mixes):")
        print(as_the_run(df, seeds).to_string(index=False))


def as_the_run(df: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """One row per name evidence, its (mix, beta, gamma) chosen as ``zeroshot.calibrate`` does (the doubt hold-back,
    beta 0 being the constant; both mixes) on the first half of the fold seeds: S / U / H there and, nested, on the
    second half. The name evidence is chosen on ``H_choose``."""
    df = df[df["variant"].isin(["constant", "doubt"])]
    keys = ["mix", "beta", "gamma"]
    table = []
    for text, g in df.groupby("text"):
        first = g[g["seed"] < seeds // 2].groupby(keys)[["S", "U", "H"]].mean()
        second = g[g["seed"] >= seeds // 2].groupby(keys)[["S", "U", "H"]].mean()
        chosen = first["H"].idxmax()
        row = {
            "text": text,
            "mix": chosen[0],
            "beta": chosen[1],
            "gamma": chosen[2],
            **{f"{k}_choose": round(float(first.loc[chosen, k]), 4) for k in ("S", "U", "H")},
        }
        if len(second):
            row.update({f"{k}_nested": round(float(second.loc[chosen, k]), 4) for k in ("S", "U", "H")})
        table.append(row)
    return pd.DataFrame(table).sort_values("H_choose", ascending=False)


def summary(df: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """One row per (evidence, hold-back, mix): its best grid point over all folds and the nested read."""
    keys = ["text", "variant", "mix", "beta", "gamma"]
    mean = df.groupby(keys)[["S", "U", "H"]].mean()
    first = df[df["seed"] < seeds // 2].groupby(keys)["H"].mean()
    second = df[df["seed"] >= seeds // 2].groupby(keys)["H"].mean()
    table = []
    for group, g in mean.groupby(level=[0, 1, 2]):
        best = g["H"].idxmax()
        chosen = first.loc[group].idxmax()
        table.append(
            {
                "text": group[0],
                "variant": group[1],
                "mix": group[2],
                "beta": best[3],
                "gamma": best[4],
                **g.loc[best].round(4).to_dict(),
                "H_choose": round(float(first.loc[group].max()), 4),
                "beta_gamma_chosen": f"{chosen[0]:g}/{chosen[1]:g}",
                "H_nested": round(float(second.loc[group + chosen]), 4) if len(second) else float("nan"),
            }
        )
    return pd.DataFrame(table)


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console():  # the library's lines (data, runs, epochs) on stdout
        raise SystemExit(main())
