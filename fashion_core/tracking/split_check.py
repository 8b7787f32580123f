"""A ``--from`` source must share the run's split: otherwise its trunk trained on images the run validates (or
tests) on, and a "year-held-out" choice is not year-held-out.

The split is the dataset digest (the catalogue, the image cache and every split setting) with, for the reader,
``val_by`` and the validation years. ``--allow-split-mismatch`` accepts another split; the run is then tagged
``split_mismatch_allowed=true`` with the source's split (``source_dataset_digest``, ``source_val_by``,
``source_val_years``).
"""

from __future__ import annotations

import json

from fashion_core.tracking.references import SourceError

ALLOW_TAG = "split_mismatch_allowed"


def _years(value) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(int(y)) for y in sorted(value))
    return str(value)


def split_of(digest: str, val_by: str, val_years) -> dict[str, str]:
    """A split as the error line and the tags name it."""
    return {
        "dataset_digest": digest or "?",
        "val_by": val_by or "random",
        "val_years": _years(val_years) if val_by == "year" else "",
    }


def describe(split: dict[str, str]) -> str:
    years = f" val_years={split['val_years']}" if split["val_by"] == "year" else ""
    return f"digest {split['dataset_digest']}, val_by={split['val_by']}{years}"


def source_split(run) -> dict[str, str]:
    """The split a logged run was trained on (its tag ``dataset_digest`` and its logged ``data.*`` params)."""
    params = run.data.params
    return split_of(
        run.data.tags.get("dataset_digest", ""),
        params.get("data.val_by", "random"),
        params.get("data.val_years", "[2016]"),
    )


def check_source_split(source_run_id: str, digest: str, data_cfg, allow: bool = False) -> dict[str, str]:
    """Refuse a source run of another split (one line naming both), unless ``allow``; returns the run's extra tags.

    Returns:
        ``{}`` when the splits match; with ``allow`` and a mismatch, the ``split_mismatch_allowed`` tags.
    """
    from mlflow.tracking import MlflowClient

    theirs = source_split(MlflowClient().get_run(source_run_id))
    mine = split_of(digest, data_cfg.val_by, list(data_cfg.val_years))
    if theirs == mine:
        return {}
    if not allow:
        raise SourceError(
            f"--from {source_run_id}: the source was trained on another split ({describe(theirs)}) "
            f"than this run ({describe(mine)}); its network saw other images as training data. "
            "Train a source on this split, or pass --allow-split-mismatch"
        )
    return {ALLOW_TAG: "true", **{f"source_{k}": v for k, v in theirs.items()}}
