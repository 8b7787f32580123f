"""The metadata-only baseline's model: its features, its scores and its saved files (JSON + ``.npz``, no pickle).

Below both the runner (``metadata_baseline``, which fits and logs it) and ``serving`` (which loads and
predicts with it), so that neither imports the other's module to reach the format.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_core.fusion.encoders import MetaVocab

STATE_ARTIFACT = "checkpoint/metadata_baseline.json"
WEIGHTS_ARTIFACT = "checkpoint/metadata_baseline.npz"


def features(vocab: MetaVocab, rows: pd.DataFrame):
    """Sparse (N, D) float32 features: one-hot codes of each categorical field, then hashed name n-grams (0/1).

    Args:
        vocab: the fitted vocabularies (``MetaVocab.fit`` on training rows).
        rows: catalogue rows with the vocabulary's fields (and ``productDisplayName`` when it hashes text).

    Returns:
        A ``scipy.sparse.csr_matrix``; its columns are the same for every call with the same ``vocab``.
    """
    from scipy import sparse

    enc = vocab.encode(rows)
    n = len(rows)
    cat = enc["meta_cat"].numpy()
    row_ids, col_ids, offset = [], [], 0
    for j, v in enumerate(vocab.categorical):
        row_ids.append(np.arange(n))
        col_ids.append(offset + cat[:, j])
        offset += v.size
    if vocab.text is not None:
        text = enc["meta_text"].numpy()
        r, c = np.nonzero(text != vocab.text.buckets)  # padding is no feature
        row_ids.append(r)
        col_ids.append(offset + text[r, c])
        offset += vocab.text.buckets
    rows_, cols_ = np.concatenate(row_ids), np.concatenate(col_ids)
    x = sparse.csr_matrix((np.ones(len(rows_), dtype=np.float32), (rows_, cols_)), shape=(n, offset))
    x.sum_duplicates()
    x.data[:] = 1.0  # a word twice in a name counts once
    return x


def class_scores(clf, x, n_classes: int) -> np.ndarray:
    """Log-probabilities over all ``n_classes`` stage classes; a class the model never saw scores -1e30."""
    out = np.full((x.shape[0], n_classes), -1e30, dtype=np.float64)
    if x.shape[0]:
        out[:, clf.classes_] = clf.predict_log_proba(x)
    return out


def baseline_from_folder(folder: str | Path):
    """(model, vocabularies, class names) from a folder holding the two files of ``runners.metadata_only.log_metadata_model``."""
    from sklearn.linear_model import LogisticRegression

    state = json.loads(Path(folder, Path(STATE_ARTIFACT).name).read_text())
    with np.load(Path(folder, Path(WEIGHTS_ARTIFACT).name), allow_pickle=False) as weights:
        coef, intercept = weights["coef"], weights["intercept"]
    clf = LogisticRegression(C=state["C"])
    clf.classes_, clf.coef_, clf.intercept_ = np.asarray(state["model_classes"]), coef, intercept
    clf.n_features_in_ = coef.shape[1]
    return clf, MetaVocab.from_dict(state["vocab"]), state["classes"]


def fit_logreg(x, y: np.ndarray, c: float, class_weight: str | None, seed: int):
    """A multinomial logistic regression (lbfgs); returns (model, converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=1000, class_weight=class_weight, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    return clf, not any(issubclass(w.category, ConvergenceWarning) for w in caught)
