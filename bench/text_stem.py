"""Which plural rule for the product-name words? The metadata-only model on the year-held-out VALIDATION only.

The name words every fused network and the metadata model read are made singular by ``s_stem`` (the plural
rules: Harman's S-stemmer plus -es off words ending in s, ch, sh, x). This bench refits the metadata-only model
(``meta_only``: the same hashed words, seconds to fit) with the words left as they are (``none``), with Harman's
three rules alone (``harman``) and with the library's rules (``plural``), on the year-held-out split (the odd test
years write plurals where the even years write the singular, so the choice concerns the year shift), and prints
each rule's validation class-mean Top-1 in both stages with a paired, class-stratified bootstrap interval of its
difference to the library's rule (the same resampled validation images score both). The metadata model has no
seed variance (a convex fit), so the resampling interval is the yardstick a seed spread would be for a network:
the simpler rule stays unless the difference's interval excludes 0. No test row is gathered.

    OMP_NUM_THREADS=1 python bench/text_stem.py --data ../shared/data/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from fashion_core.config.checks import LOGREG_C_GRID  # noqa: E402
from fashion_core.config.schema import load_experiment  # noqa: E402
from fashion_core.data.prepared import prepare_data, without_test  # noqa: E402
from fashion_core.data.stage import build_stage_data  # noqa: E402
from fashion_core.evaluation.scoring import class_mean_accuracy, topk_predictions  # noqa: E402
from fashion_core.fusion import encoders  # noqa: E402
from fashion_core.fusion.encoders import MetaVocab  # noqa: E402
from fashion_core.fusion.metadata_only import class_scores, features, fit_logreg  # noqa: E402
from fashion_core.fusion.plan import stage_rows  # noqa: E402

PLURAL = encoders.s_stem


def harman(word: str) -> str:
    """Harman's (1991) S-stemmer alone: ies -> y, es -> e, s -> '' with its exceptions; short words stay."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


RULES = {"none": lambda w: w, "harman": harman, "plural": PLURAL}  # simplest first


def val_hits(p, stage: str, rule: str, seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(validation labels, top-1 hits, class-mean, chosen C) of the metadata-only model with ``rule``."""
    encoders.s_stem = RULES[rule]
    try:
        cfg = load_experiment(ROOT / "experiments" / stage / "meta_only.yaml", profile="quick", stage=stage)
        sd = build_stage_data(p, stage)
        rows = {s: stage_rows(p, sd.frame.loc[sd.frame["split"] == s, "id"]) for s in ("train", "val")}
        vocab = MetaVocab.fit(rows["train"], cfg.fusion)
        x = {s: features(vocab, r) for s, r in rows.items()}
        y_train, y_val = sd.train.labels.numpy(), sd.val.labels.numpy()
        class_weight = "balanced" if cfg.loss.weights == "inverse" else None
        best = None
        for c in LOGREG_C_GRID:  # the C the run itself would choose on validation
            clf, _ = fit_logreg(x["train"], y_train, c, class_weight, seed)
            top = topk_predictions(class_scores(clf, x["val"], len(sd.classes)))
            v = class_mean_accuracy(y_val, top)[0]
            if best is None or v > best[2]:
                best = (y_val, top[:, 0] == y_val, v, c)
        assert best is not None
        return best
    finally:
        encoders.s_stem = PLURAL


def paired_interval(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% interval of class-mean(a) - class-mean(b) over class-stratified resamples of the same images."""
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n_boot)
    classes = np.unique(y)
    for c in classes:
        idx = np.flatnonzero(y == c)
        draw = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]
        diffs += a[draw].mean(axis=1) - b[draw].mean(axis=1)
    diffs /= len(classes)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return float(lo), float(hi)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="The dataset (folder or archive), as for `fashion prepare`.")
    ap.add_argument("--val-years", default="2016", help="The held-out even years (--val-by year).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Fit seeds (the fit is convex: a check).")
    ap.add_argument("--boot", type=int, default=2000, help="Bootstrap resamples of the validation images.")
    args = ap.parse_args(argv)
    years = [int(y) for y in args.val_years.split(",")]
    cfg = load_experiment(ROOT / "experiments" / "pretrain" / "meta_only.yaml", profile="quick", stage="pretrain")
    data_cfg = cfg.replace(**{"data.val_by": "year", "data.val_years": tuple(years)}).data
    p = without_test(prepare_data(args.data, data_cfg))  # selection: no test row at all
    rows = []
    for stage in ("pretrain", "finetune"):
        for seed in args.seeds:
            got = {rule: val_hits(p, stage, rule, seed) for rule in RULES}
            y, ref = got["plural"][0], got["plural"][1]
            for rule, (_, hits, v, c) in got.items():
                lo, hi = paired_interval(y, hits, ref, args.boot, seed) if rule != "plural" else (0.0, 0.0)
                rows.append(
                    {
                        "stage": stage,
                        "seed": seed,
                        "rule": rule,
                        "C": f"{c:g}",
                        "val_top1_mean": f"{v:.4f}",
                        "minus_plural": f"{v - got['plural'][2]:+.4f}",
                        "95%_paired": f"[{lo:+.4f}, {hi:+.4f}]",
                        "n_val": len(y),
                    }
                )
    print(f"digest {p.digest}, year-held-out validation {years}; no test row read")
    print(table(rows))


if __name__ == "__main__":
    main()
