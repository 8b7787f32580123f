"""Would a horizontal-flip average at test time help? Validation class-mean of logged image models.

For each model (a run id, ``runs:/`` or ``models:/`` URI) it scores the run's own validation split three
ways — the images as they are, mirrored, and the average of the two logits — and prints class-mean
Top-1 / Top-5 as a Markdown table. It decides whether a flip average is worth adopting, so it reads no
test row (the test split is dropped before an image is gathered); the adopted setting is read on test
once, by a normal run or ``fashion evaluate``.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python bench/tta.py \\
        --data ../shared/data/fashion-product-images-small.tar.gz RUN_ID [RUN_ID ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEWS = ("as is", "mirrored", "average")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "models", nargs="+", help="Run ids, runs:/ or models:/ URIs of image-only pretrain or finetune runs."
    )
    ap.add_argument("--data", required=True, help="The dataset the runs were trained on (folder or archive).")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")
    return ap.parse_args(argv)


def view_scores(model, data, device) -> dict:
    """Logits (N, C) of each view: the images as they are, mirrored left-right, and the mean of both."""
    from fashion_core.data.loader import TensorData
    from fashion_core.engine.train import predict_scores

    plain = predict_scores(model, data, device)
    mirrored = predict_scores(model, TensorData(data.images.flip(2), data.labels, data.extras), device)  # NHWC
    return dict(zip(VIEWS, (plain, mirrored, (plain + mirrored) / 2)))


def run_data_config(run_id: str):
    """The DataConfig the run was trained with (its logged ``data.*`` params), so its split is rebuilt exactly."""
    from mlflow.tracking import MlflowClient

    from fashion_core.config.schema import DataConfig, ExperimentConfig

    params = MlflowClient().get_run(run_id).data.params
    keys = {f"data.{k}" for k in vars(DataConfig())}
    # ExperimentConfig.replace types and validates the logged strings as `-o key=value` overrides are
    return ExperimentConfig().replace(**{k: v for k, v in params.items() if k in keys}).data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from mlflow.tracking import MlflowClient

    from fashion_core.data.prepared import prepare_data, without_test
    from fashion_core.data.stage import build_stage_data
    from fashion_core.evaluation.scoring import class_mean_accuracy, topk_predictions
    from fashion_core.fusion.modules import reads_metadata
    from fashion_core.tracking.references import load_run_model, resolve_model_uri

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = []
    prepared = {}
    for spec in args.models:
        run_id = resolve_model_uri(spec)
        run = MlflowClient().get_run(run_id)
        stage, technique = run.data.tags.get("stage", "?"), run.data.tags.get("technique", "?")
        model, meta = load_run_model(run_id)
        if reads_metadata(model):
            print(
                f"{run_id[:8]}: skipped, it fuses product metadata (this script scores image-only models)",
                file=sys.stderr,
            )
            continue
        dcfg = run_data_config(run_id)
        key = tuple(sorted(vars(dcfg).items()))
        if key not in prepared:
            prepared[key] = prepare_data(args.data, dcfg)
        sd = build_stage_data(without_test(prepared[key]), stage, classes=meta["classes"])
        row = {"run": run_id[:8], "stage": stage, "technique": technique}
        for split, data in (("val", sd.val),):
            labels = data.labels.numpy()
            for view, scores in view_scores(model, data, device).items():
                t1, t5 = class_mean_accuracy(labels, topk_predictions(scores))
                row[f"{split} {view}"] = f"{t1:.4f} / {t5:.4f}"
        print(
            f"{run_id[:8]} {stage}/{technique}: "
            + ", ".join(f"{k} {v}" for k, v in row.items() if k.startswith("val")),
            flush=True,
        )
        rows.append(row)
    if not rows:
        return 1
    cols = list(rows[0])
    print("\nValidation class-mean Top-1 / Top-5 (the test split is not read)\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
