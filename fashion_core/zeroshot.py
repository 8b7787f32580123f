"""Generalised zero-shot: predict the classes that have no training image from their names, beside the seen ones.

The candidate classes are the catalogue's taxonomy: every articleType of ``styles.csv`` in the stage's
subset, a list known in advance like a shop's category tree. A class is *seen* when it has training
(train or val) images and *unseen* otherwise (the finetune stage's 35 test-only classes; with
``data.rank_on=all`` the pretrain stage's Perfume and Body Mist). Three parts, each fitted on the
training rows of seen classes only, and one constant chosen on validation:

1. **Seen classes**: the metadata-only baseline (``metadata_baseline``: a logistic regression on the one-hot
   categorical fields and the hashed name words; ``C`` picked on validation). It gives log p(c | x, seen).
2. **Every class, from its name** (the "ranker"): a compatibility score between the product name and each
   class name, ``w . phi(x, c)``, softmaxed over ALL candidate classes. ``phi`` holds the kinds of evidence a
   name gives for a class name, not the words themselves, so it transfers to class names never seen in
   training: the share of the class's words in the name (plurals folded; two adjacent name words joined,
   so "Eye Shadow" meets "Eyeshadow" and "T-shirt" "Tshirts"), that share weighted by how rare each word is
   among the class names (idf: "lip" names five classes, "plumper" one), whether all of them are there,
   whether the name's last word (its head noun) is one, the share met only as an abbreviation or a longer
   form (a name word of 3+ letters that starts the class word or that the class word starts: "Deo" for
   Deodorant, "Blusher" for Blush), and the mean best character-trigram similarity of each class word to a
   name word (spelling variants: "Moisturising", "Moisturiser"). The weights ``w`` are a conditional
   logit (one weight per kind of evidence, shared by all classes; McFadden 1974) fitted on the seen
   classes' training products, class-balanced. Nothing per class is learned, so an unseen class gets its
   score the same way a seen one does. The evidence also covers names that share no word with their class
   name (the finetune stage's Deodorant products say "Deo"; Kajal and Eyeliner's say "Eye Liner").
3. **Mixing**: p(c | x) = p_name(seen | x) * p_meta(c | x) for a seen class (the name model says whether the
   product is of a seen class, the metadata model which one) and p_name(c | x) for an unseen one. The
   metadata model is sharper on the seen classes; the name model alone can name the unseen ones.
4. **Calibrated stacking** (Chao et al. 2016): ``log p - gamma`` for the seen classes, one constant ``gamma``
   against the bias of models fitted on seen classes only. It is chosen on VALIDATION: in each of
   ``N_FOLDS`` folds a third of the seen classes with validation images are held out as *pseudo-unseen*
   (their training rows leave both fits), and gamma maximises the harmonic mean of the pseudo-seen and
   pseudo-unseen class-mean validation Top-1, averaged over the folds. (How common a word is in training names,
   which weighs the evidence, is counted once over all training names, the held-out classes' included: word
   counts, no labels.)

Test products enter only to be scored once at the end. Honoured keys: those of the metadata-only baseline
(``fusion.*``, ``loss.weights``, ``train.seed``) and ``fusion.zero_shot``.

    fashion finetune --technique zeroshot --profile quick --data ../shared/data/fashion-product-images-small.tar.gz
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import metrics as M
from . import tracking
from .config import LOGREG_C_GRID, ConfigError, ExperimentConfig, to_dict
from .fusion import _TOKEN, TEXT_FIELD, MetaVocab, _clean, class_words, s_stem
from .train import class_mean_accuracy, top5_of

ZERO_SHOT_TAG = "zero_shot"  # run tag: "true" on a run that predicts classes without training images
STATE_ARTIFACT = "checkpoint/zeroshot.json"
FEATURES = ("share_exact", "share_class_idf", "all_exact", "n_exact", "head_word", "name_cover", "share_abbrev",
            "char_sim")
N_FOLDS = 3  # pseudo-unseen folds for gamma
HOLDOUT = 1 / 3  # share of the seen classes (with validation images) held out per fold
GAMMAS = tuple(np.round(np.arange(-4.0, 12.0001, 0.25), 2))  # calibration constants tried (log-probability units)
RANKER_L2 = 1e-3  # ridge on the ranker's few weights (mean log-loss scale)
MIXES = ("gate", "product")  # how the seen classes' two scores combine (chosen on validation with gamma)
NEG = -1e30  # score of a class a model cannot output


# ---------------------------------------------------------------- classes

def candidate_classes(splits: pd.DataFrame, stage: str) -> list[str]:
    """Every class name of the stage's subset in the catalogue (any split, excluded rows too), sorted."""
    names = splits.loc[splits["subset"] == stage, "label"].astype(str)
    return sorted(n for n in names.unique() if n)


# ---------------------------------------------------------------- name evidence

def name_tokens(name: Any) -> tuple[list[str], list[str], int]:
    """(tokens, head tokens, number of words) of a product name: singular words, then adjacent pairs joined
    ("eye shadow" -> eyeshadow); the head is the last alphabetic word of 3+ letters and its join with the
    word before."""
    words = _TOKEN.findall(_clean([name])[0].lower())
    stems = [s_stem(w, "plural") for w in words]
    joined = [s_stem(a + b, "plural") for a, b in zip(words, words[1:])]
    alpha = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 3]
    head = []
    if alpha:
        i = alpha[-1]
        head = [stems[i]] + ([s_stem(words[i - 1] + words[i], "plural")] if i > 0 else [])
    return stems + joined, head, len(words)


def _trigrams(word: str) -> set[str]:
    padded = f"#{word}#"
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def _dice(a: set[str], b: set[str]) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


def _abbreviates(token: str, word: str) -> bool:
    """A name word that is a shortened or longer form of a class word (not the word itself)."""
    if token == word or not token.isalpha() or len(token) < 3:
        return False
    return word.startswith(token) or (len(word) >= 4 and token.startswith(word))


@dataclass(frozen=True)
class NameMatcher:
    """Turns product names into the evidence ``phi(x, c)`` for every candidate class (see the module doc)."""

    classes: tuple[str, ...]
    words: tuple[str, ...]  # the distinct class words
    member: np.ndarray  # (K, C) 0/1: class word k belongs to class c
    idf: np.ndarray  # (K,) log(1 + C / number of classes whose name holds the word)
    name_idf: np.ndarray  # (K,) log((1 + N) / (1 + number of training names holding the word))
    token_idf: dict  # the same for every token of the training names; tokens never seen there get idf_unseen
    idf_unseen: float  # log(1 + N)

    @classmethod
    def build(cls, classes: Sequence[str], train_names: Iterable[Any] = ()) -> "NameMatcher":
        """The class words of ``classes``; how common each is in ``train_names`` (training products only)
        says how little it tells: "Men" is in a third of the names, whatever their class."""
        per_class = [class_words(c) for c in classes]
        words = tuple(sorted(set().union(*per_class))) if per_class else ()
        index = {w: i for i, w in enumerate(words)}
        member = np.zeros((len(words), len(classes)), dtype=np.float64)
        for j, ws in enumerate(per_class):
            for w in ws:
                member[index[w], j] = 1.0
        df = member.sum(axis=1)
        idf = np.log1p(len(classes) / np.maximum(df, 1.0))
        df_names: dict[str, int] = {}
        n_names = 0
        for name in train_names:
            n_names += 1
            for t in set(name_tokens(name)[0]):
                df_names[t] = df_names.get(t, 0) + 1
        token_idf = {t: float(np.log((1.0 + n_names) / (1.0 + d))) for t, d in df_names.items()}
        unseen = float(np.log(1.0 + n_names))
        name_idf = np.array([token_idf.get(w, unseen) for w in words])
        return cls(tuple(classes), words, member, idf, name_idf, token_idf, unseen)

    def features(self, names: Iterable[Any]) -> np.ndarray:
        """(N, C, len(FEATURES)) float32 evidence of each name for each class."""
        names = list(names)
        k, c = len(self.words), len(self.classes)
        exact = np.zeros((len(names), k), dtype=np.float64)
        head = np.zeros_like(exact)
        abbrev = np.zeros_like(exact)
        sim = np.zeros_like(exact)
        cover = np.zeros_like(exact)  # idf of the name words a matched class word stands for (two for a joined pair)
        name_mass = np.ones(len(names))  # idf of all the name's words
        index = {w: i for i, w in enumerate(self.words)}
        grams = [_trigrams(w) for w in self.words]
        memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # token -> (abbreviation hits, trigram similarity)
        for n, name in enumerate(names):
            tokens, heads, n_words = name_tokens(name)
            idf_w = [self.token_idf.get(t, self.idf_unseen) for t in tokens[:n_words]]
            name_mass[n] = max(sum(idf_w), 1e-6)
            for j, t in enumerate(tokens):
                if t in index:
                    exact[n, index[t]] = 1.0
                    mass = idf_w[j] if j < n_words else idf_w[j - n_words] + idf_w[j - n_words + 1]
                    cover[n, index[t]] = max(cover[n, index[t]], mass)
                if t not in memo:
                    tg = _trigrams(t)
                    memo[t] = (np.array([_abbreviates(t, w) for w in self.words], dtype=np.float64),
                               np.array([_dice(tg, g) for g in grams]) if t.isalpha() else np.zeros(k))
                a, s = memo[t]
                np.maximum(abbrev[n], a, out=abbrev[n])
                np.maximum(sim[n], s, out=sim[n])
            for t in heads:
                if t in index:
                    head[n, index[t]] = 1.0
        abbrev = abbrev * (1 - exact)
        n_words = np.maximum(self.member.sum(axis=0), 1.0)
        # Shares weigh each class word by how rare it is in training names ("men" tells little, "polish" much),
        # and the second one also by how few class names hold it ("lip" names five classes).
        q, q2 = self.name_idf, self.name_idf * self.idf

        def share(hits, weight):
            return (hits * weight) @ self.member / np.maximum(weight @ self.member, 1e-12)

        out = np.stack([
            share(exact, q),
            share(exact, q2),
            ((exact @ self.member) >= n_words).astype(np.float64) * (self.member.sum(axis=0) > 0),
            exact @ self.member,
            (head @ self.member > 0).astype(np.float64),
            np.minimum(cover @ self.member / name_mass[:, None], 1.0),
            share(abbrev, q),
            share(np.maximum(sim, exact), q),
        ], axis=2)
        return out.astype(np.float32)

    def no_shared_word(self, names: Iterable[Any], labels: Iterable[str]) -> np.ndarray:
        """Per product: True when its name holds no word of its class name (plurals folded, pairs joined)."""
        wanted = {c: class_words(c) for c in self.classes}
        return np.array([not (wanted.get(str(lab), set()) & set(name_tokens(nm)[0]))
                         for nm, lab in zip(names, labels)], dtype=bool)


# ---------------------------------------------------------------- the name model (conditional logit)

def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_ranker(phi: np.ndarray, y: np.ndarray, balanced: bool = True, l2: float = RANKER_L2) -> np.ndarray:
    """Weights ``w`` (F,) of the conditional logit ``softmax_c(phi[n, c] . w)`` fitted to labels ``y``.

    Args:
        phi: (N, C, F) evidence of each product for each candidate class.
        y: (N,) the product's class index among the C candidates.
        balanced: weigh each class's products by 1 / their count (the target metric is the class mean).
        l2: ridge strength on ``w``.
    """
    from scipy.optimize import minimize

    n, _, f = phi.shape
    if n == 0:
        raise ConfigError("the name model needs training products of at least one seen class")
    counts = np.bincount(y)
    weight = 1.0 / counts[y] if balanced else np.ones(n)
    weight = weight / weight.sum()
    phi64 = phi.astype(np.float64)
    onehot_phi = phi64[np.arange(n), y]  # (N, F)

    def loss(w):
        logp = _log_softmax(phi64 @ w)
        p = np.exp(logp)
        value = -(weight * logp[np.arange(n), y]).sum() + 0.5 * l2 * w @ w
        expected = np.einsum("nc,ncf->nf", p, phi64)
        grad = (weight[:, None] * (expected - onehot_phi)).sum(axis=0) + l2 * w
        return value, grad

    res = minimize(loss, np.zeros(f), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x


def ranker_log_proba(phi: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log p_name(c | x) over the candidate classes, (N, C)."""
    return _log_softmax(phi.astype(np.float64) @ w) if len(phi) else np.zeros((0, phi.shape[1]))


def stacked_scores(meta_logp: np.ndarray, name_logp: np.ndarray, seen: np.ndarray, gamma: float,
                   mix: str = "gate") -> np.ndarray:
    """GZSL scores: an unseen c scores log p_name(c); a seen c scores ``mix``'s combination minus gamma.

    Args:
        meta_logp: (N, C) log p_meta over the candidates (NEG where the metadata model cannot output c).
        name_logp: (N, C) log p_name over the candidates.
        seen: (C,) bool, the classes the metadata model was fitted on.
        gamma: the calibration constant subtracted from seen classes.
        mix: "gate": log p_name(any seen class) + log p_meta(c) (the name model says whether the product is of
            a seen class, the metadata model which); "product": log p_name(c) + log p_meta(c) (both must agree
            on the class: a "Night Suit" is more Night suits than the unseen Suits).
    """
    if mix not in MIXES:
        raise ConfigError(f"unknown zero-shot mix {mix!r}; choose one of: {', '.join(MIXES)}")
    if len(name_logp) == 0:
        return np.zeros_like(name_logp)
    out = name_logp.copy()
    if mix == "product":
        out[:, seen] = name_logp[:, seen] + meta_logp[:, seen] - gamma
        return out
    m = name_logp[:, seen].max(axis=1, keepdims=True)
    log_seen = m[:, 0] + np.log(np.exp(name_logp[:, seen] - m).sum(axis=1)) if seen.any() else \
        np.full(len(name_logp), NEG)
    out[:, seen] = log_seen[:, None] + meta_logp[:, seen] - gamma
    return out


def harmonic(s: float, u: float) -> float:
    """2SU / (S + U); 0 when both are 0, NaN when either is NaN."""
    if s != s or u != u:
        return float("nan")
    return 2 * s * u / (s + u) if s + u > 0 else 0.0


# ---------------------------------------------------------------- fitting, calibration

@dataclass
class SeenModels:
    """The two models fitted on some seen classes: the metadata logistic regression and the name ranker."""

    clf: Any
    w: np.ndarray
    seen: np.ndarray  # (C,) bool: classes with training rows in this fit


def fit_models(x_train, phi_train: np.ndarray, y_train: np.ndarray, n_classes: int, c: float,
               class_weight: str | None, seed: int) -> SeenModels:
    """Fit both models on the given training rows (labels index the C candidates)."""
    from .metadata_baseline import fit_logreg

    clf, _ = fit_logreg(x_train, y_train, c, class_weight, seed)
    w = fit_ranker(phi_train, y_train, balanced=class_weight == "balanced")
    seen = np.zeros(n_classes, dtype=bool)
    seen[np.unique(y_train)] = True
    return SeenModels(clf, w, seen)


def model_scores(models: SeenModels, x, phi: np.ndarray, gamma: float, mix: str) -> np.ndarray:
    """Stacked GZSL scores (N, C) of some rows."""
    from .metadata_baseline import class_scores

    meta = class_scores(models.clf, x, len(models.seen))
    return stacked_scores(meta, ranker_log_proba(phi, models.w), models.seen, gamma, mix)


def split_means(labels: np.ndarray, pred1: np.ndarray, groups: Sequence[np.ndarray]) -> list[float]:
    """Class-mean Top-1 over the rows whose label is in each group of class indices (NaN for an empty group)."""
    out = []
    for g in groups:
        rows = np.isin(labels, g)
        out.append(class_mean_accuracy(labels[rows], pred1[rows, None])[0] if rows.any() else float("nan"))
    return out


def pseudo_unseen_folds(seen_with_val: np.ndarray, seed: int, n_folds: int = N_FOLDS,
                        share: float = HOLDOUT) -> list[np.ndarray]:
    """Class indices held out as pseudo-unseen in each fold: disjoint seeded slices of a permutation."""
    classes = np.sort(np.asarray(seen_with_val))
    k = int(round(share * len(classes)))
    if len(classes) < 2 or k < 1:
        return []
    order = np.random.default_rng(seed).permutation(classes)
    folds = np.array_split(order, max(1, min(n_folds, len(classes) // k)))
    return [np.sort(f) for f in folds[:n_folds] if 0 < len(f) < len(classes)]


def calibrate(x_train, phi_train, y_train, x_val, phi_val, y_val, n_classes: int, c: float,
              class_weight: str | None, seed: int, log=print) -> tuple[float, str, pd.DataFrame]:
    """The calibration: (gamma, mix) of the best mean validation H over pseudo-unseen folds, and the curve per fold.

    In each fold the held-out classes' training rows leave both fits; every validation row is scored over
    all candidates, and S / U are the class-mean Top-1 of the pseudo-seen / pseudo-unseen validation rows.
    """
    folds = pseudo_unseen_folds(np.unique(y_val), seed)
    rows = []
    for i, held in enumerate(folds):
        keep = ~np.isin(y_train, held)
        if len(np.unique(y_train[keep])) < 2:
            continue
        models = fit_models(x_train[np.flatnonzero(keep)], phi_train[keep], y_train[keep], n_classes, c,
                            class_weight, seed)
        pseudo_seen = np.setdiff1d(np.unique(y_val), held)
        for mix in MIXES:
            base = model_scores(models, x_val, phi_val, 0.0, mix)
            for g in GAMMAS:
                s = base.copy()
                s[:, models.seen] -= g
                s_mean, u_mean = split_means(y_val, s.argmax(axis=1), [pseudo_seen, held])
                rows.append({"fold": i, "mix": mix, "gamma": float(g), "n_held_out": len(held), "val_seen": s_mean,
                             "val_unseen": u_mean, "val_harmonic": harmonic(s_mean, u_mean)})
    curve = pd.DataFrame(rows, columns=["fold", "mix", "gamma", "n_held_out", "val_seen", "val_unseen",
                                        "val_harmonic"])
    if curve.empty:
        log(f"zero-shot: too few seen classes with validation images to hold some out: gamma = 0, mix {MIXES[0]}")
        return 0.0, MIXES[0], curve
    mean = curve.groupby(["mix", "gamma"], sort=False)[["val_seen", "val_unseen", "val_harmonic"]].mean()
    mix, gamma = mean["val_harmonic"].idxmax()  # the first among equals: gate before product, smaller gamma first
    best = mean.loc[(mix, gamma)]
    log(f"zero-shot calibration on validation ({curve['fold'].nunique()} folds of pseudo-unseen classes): "
        f"mix {mix}, gamma={gamma:g}  pseudo-seen {best['val_seen']:.4f}  pseudo-unseen {best['val_unseen']:.4f}  "
        f"H {best['val_harmonic']:.4f}")
    return float(gamma), str(mix), curve


# ---------------------------------------------------------------- the run

def _split_rows(p, sd, name: str) -> pd.DataFrame:
    from .fusion import stage_rows

    return stage_rows(p, sd.frame.loc[sd.frame["split"] == name, "id"])


def run_zeroshot(cfg: ExperimentConfig, p, *, parent_run_id: str | None = None, tags: dict | None = None,
                 log=print) -> str:
    """Fit (on seen classes' training rows), calibrate (on validation), evaluate (on test) and log one GZSL run.

    Args:
        cfg: a metadata-only config with ``fusion.zero_shot`` (validated by ``config.validate``).
        p: the prepared data; the MLflow experiment is already selected.
        parent_run_id: makes this a child run (grid).
        tags: extra run tags.

    Returns:
        The run id.
    """
    import mlflow

    from .stage import build_stage_data, log_evaluation, run_name, score_test_split
    from .metadata_baseline import BASELINE_TAG, _log_model, class_scores, features, fit_logreg

    if cfg.fusion.mode != "metadata_only" or not cfg.fusion.zero_shot:
        raise ConfigError("run_zeroshot needs fusion.mode=metadata_only and fusion.zero_shot=true")
    t_start = time.perf_counter()
    classes = candidate_classes(p.splits, cfg.stage)
    sd = build_stage_data(p, cfg.stage, classes=classes)  # unseen classes are labels too, with no training row
    if len(np.unique(sd.train.labels.numpy())) < 2:
        raise ConfigError(f"the {cfg.stage} stage has fewer than two classes with training images")
    rows = {s: _split_rows(p, sd, s) for s in ("train", "val", "test")}
    vocab = MetaVocab.fit(rows["train"], cfg.fusion)
    x = {s: features(vocab, r) for s, r in rows.items()}
    matcher = NameMatcher.build(classes, rows["train"][TEXT_FIELD] if TEXT_FIELD in rows["train"].columns else ())
    phi = {s: matcher.features(r[TEXT_FIELD]) if TEXT_FIELD in r.columns else
           np.zeros((len(r), len(classes), len(FEATURES)), dtype=np.float32) for s, r in rows.items()}
    y_train, y_val = sd.train.labels.numpy(), sd.val.labels.numpy()
    n = len(classes)
    class_weight = "balanced" if cfg.loss.weights == "inverse" else None
    # The metadata model's C as the metadata-only baseline picks it: validation class-mean over seen classes.
    grid = [cfg.fusion.logreg_c] if cfg.fusion.logreg_c > 0 else list(LOGREG_C_GRID)
    if len(y_val) == 0:
        grid = grid[:1] if cfg.fusion.logreg_c > 0 else [1.0]
    best = None
    for c in grid:
        clf, _ = fit_logreg(x["train"], y_train, c, class_weight, cfg.train.seed)
        v1 = class_mean_accuracy(y_val, top5_of(class_scores(clf, x["val"], n)))[0] if len(y_val) else float("nan")
        log(f"metadata model C={c:g}: val class-mean top-1 (seen classes only) {v1:.4f}")
        if best is None or v1 > best[1]:
            best = (c, v1)
    c_best = best[0]
    gamma, mix, curve = calibrate(x["train"], phi["train"], y_train, x["val"], phi["val"], y_val, n, c_best,
                                  class_weight, cfg.train.seed, log) if len(y_val) else (0.0, MIXES[0], pd.DataFrame())
    models = fit_models(x["train"], phi["train"], y_train, n, c_best, class_weight, cfg.train.seed)
    val_scores = model_scores(models, x["val"], phi["val"], gamma, mix)
    val1, val5 = class_mean_accuracy(y_val, top5_of(val_scores)) if len(y_val) else (np.nan, np.nan)
    test_scores = model_scores(models, x["test"], phi["test"], gamma, mix)
    unseen = [classes[i] for i in np.flatnonzero(~models.seen)]
    inputs = vocab.fields + ([TEXT_FIELD] if vocab.text else []) + ["class names"]
    all_tags = {"leaky": str(cfg.fusion.leaky).lower(), "seed": cfg.train.seed, "device": "cpu",
                "transfer": cfg.transfer.method if cfg.stage == "finetune" else "", "baseline": BASELINE_TAG,
                "fusion": cfg.fusion.mode, "fusion_inputs": ",".join(inputs), ZERO_SHOT_TAG: "true", **(tags or {})}
    with tracking.start_run(cfg.stage, cfg.technique, p.digest, run_name=run_name(cfg), config=to_dict(cfg),
                            tags=all_tags, description=cfg.description or None, parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        log(f"{cfg.stage} run {run_id} ({run_name(cfg)}): generalised zero-shot over {n} candidate classes "
            f"({int(models.seen.sum())} seen, {len(unseen)} without training images); C={c_best:g}, mix {mix}, "
            f"gamma={gamma:g}")
        tracking.log_metrics({"n_classes": n, "n_classes_seen": int(models.seen.sum()), "n_train_images": len(sd.train),
                              "n_val_images": len(sd.val), "n_test_images": len(sd.test), "logreg_c": c_best,
                              "zs_gamma": gamma, "zs_mix_product": float(mix == "product"), **{f"zs_w_{f}": float(v) for f, v in zip(FEATURES, models.w)}})
        tracking.log_metrics({"val_top1_mean": val1, "val_top5_mean": val5}, step=0)
        if len(curve):
            at = curve[(curve["gamma"] == gamma) & (curve["mix"] == mix)][["val_seen", "val_unseen", "val_harmonic"]].mean()
            tracking.log_metrics({"val_pseudo_seen_mean": at["val_seen"], "val_pseudo_unseen_mean": at["val_unseen"],
                                  "val_pseudo_harmonic": at["val_harmonic"]})
            tracking.log_frame(curve, "zeroshot/calibration.csv")
        mlflow.log_dict({"classes": classes, "unseen": unseen, "test_only": {}}, "classes.json")
        table, preds, test_metrics, (labels, top5) = score_test_split(sd, test_scores, cfg.train.seed)
        test_metrics.update({f"test_{k}": v for k, v in M.gzsl_summary(table).items()})
        no_word = matcher.no_shared_word(rows["test"][TEXT_FIELD], sd.test_label_names) \
            if TEXT_FIELD in rows["test"].columns else np.ones(len(labels), dtype=bool)
        is_unseen = ~models.seen[labels] if len(labels) else np.zeros(0, dtype=bool)
        if is_unseen.any():
            slice_ = is_unseen & no_word
            test_metrics["test_unseen_share_no_class_word"] = float(slice_.sum() / is_unseen.sum())
            if slice_.any():
                test_metrics["test_top1_unseen_no_class_word_micro"] = float((top5[slice_, 0] == labels[slice_]).mean())
        log_evaluation(sd, table, preds, test_metrics, labels, top5)
        _log_model(models.clf, vocab, c_best, classes)
        mlflow.log_dict({"features": list(FEATURES), "weights": [float(v) for v in models.w], "gamma": gamma, "mix": mix,
                         "seen": [bool(s) for s in models.seen], "classes": classes}, STATE_ARTIFACT)
        tracking.log_metrics({"run_seconds": time.perf_counter() - t_start})
        log(f"{cfg.stage} {cfg.technique}: test Top-1 seen S {test_metrics['test_top1_seen_mean']:.4f}  "
            f"unseen U {test_metrics['test_top1_unseen_mean']:.4f}  H {test_metrics['test_top1_harmonic']:.4f}  "
            f"all {test_metrics['test_n_classes_all']} classes {test_metrics['test_top1_mean_all']:.4f}  "
            f"(seen class-mean [{test_metrics['test_top1_mean_lo']:.4f}, {test_metrics['test_top1_mean_hi']:.4f}], "
            f"{test_metrics['test_n_classes_evaluated']} seen classes, {test_metrics['test_n_classes_unseen']} unseen)")
    return run_id
