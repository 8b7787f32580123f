"""Frozen ImageNet features on the validation split: which trunk, input scale and stem to fine-tune from.

For each setting the trunk (``model.init=imagenet``) embeds a seeded sample of the pretrain stage's
training images and every validation image, unaugmented; a logistic regression on the training
embeddings is scored on validation (class-mean top-1). Nothing reads the test split: this is a
selection tool. ``--random`` adds the same trunk at random initialisation (what the weights buy).

    OMP_NUM_THREADS=1 .venv/bin/python bench/frozen_probe.py --data ../shared/data/fashion-product-images-small.tar.gz \
        --backbones efficientnet_lite0 --scales 1,2,3 --stems imagenet,s1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import default_data, machine_line, table


def probe_rows(
    data: str,
    backbones: list[str],
    scales: list[float],
    stems: list[str],
    n_train: int,
    seed: int,
    random_init: bool,
    val_overrides: dict | None = None,
    log=print,
) -> list[dict]:
    """One row per setting: validation class-mean top-1 of a logistic regression on frozen embeddings."""
    from sklearn.linear_model import LogisticRegression

    from fashion_core.config.schema import ExperimentConfig, ModelConfig
    from fashion_core.data.prepared import prepare_data, without_test
    from fashion_core.data.stage import build_stage_data
    from fashion_core.evaluation.scoring import class_mean_accuracy
    from fashion_core.models.network import build_model
    from fashion_core.runners.network import embed

    cfg = ExperimentConfig().replace(**(val_overrides or {}))
    p = prepare_data(data, cfg.data)
    sd = build_stage_data(without_test(p), "pretrain")  # a choice: no test image in memory
    g = torch.Generator().manual_seed(seed)
    take = torch.randperm(len(sd.train), generator=g)[:n_train]
    train = sd.train.subset(take)
    y_train, y_val = train.labels.numpy(), sd.val.labels.numpy()
    rows = []
    for name in backbones:
        for stem in stems:
            for scale in scales:
                for init in ["imagenet", "scratch"] if random_init else ["imagenet"]:
                    torch.manual_seed(seed)
                    model = build_model(
                        ModelConfig(backbone=name, stem=stem, init=init, input_scale=scale), len(sd.classes)
                    ).eval()
                    t0 = time.perf_counter()
                    ftr = embed(model, train, torch.device("cpu"), 256).numpy()
                    fva = embed(model, sd.val, torch.device("cpu"), 256).numpy()
                    secs = time.perf_counter() - t0
                    mu, sd_ = ftr.mean(0), ftr.std(0) + 1e-6
                    clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
                    clf.fit((ftr - mu) / sd_, y_train)
                    pred = clf.predict_proba((fva - mu) / sd_)
                    top5 = np.argsort(-pred, axis=1)[:, :5]
                    top1_mean, top5_mean = class_mean_accuracy(y_val, clf.classes_[top5])
                    rows.append(
                        {
                            "backbone": name,
                            "stem": stem,
                            "input_scale": scale,
                            "init": init,
                            "val_top1_mean": top1_mean,
                            "val_top5_mean": top5_mean,
                            "embed_img_per_s": (len(ftr) + len(fva)) / secs,
                        }
                    )
                    log(rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--backbones", default="efficientnet_lite0")
    ap.add_argument("--scales", default="1,2")
    ap.add_argument("--stems", default="imagenet")
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random", action="store_true", help="also the same trunks at random initialisation")
    ap.add_argument("-o", "--override", action="append", default=[], help="data.* settings, e.g. data.val_by=year")
    a = ap.parse_args()
    from fashion_core.config.schema import parse_overrides

    rows = probe_rows(
        a.data,
        a.backbones.split(","),
        [float(s) for s in a.scales.split(",")],
        a.stems.split(","),
        a.n_train,
        a.seed,
        a.random,
        parse_overrides(a.override),
    )
    print(machine_line())
    print(table(rows))


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console():  # the library's lines (data, runs, epochs) on stdout
        main()
