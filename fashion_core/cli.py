"""The ``fashion`` command: thin wrappers that validate options and call the library.

    fashion prepare --data ../shared/data/fashion-product-images-small.tar.gz
    fashion --help
"""
from __future__ import annotations

import sys

import click

from .config import RANK_ON, ConfigError, DataConfig, apply_overrides, ExperimentConfig

DATA_HELP = "Dataset: a folder with styles.csv and images/, a .zip/.tar.gz of one, or kaggle:<owner>/<dataset> " \
            "(default: $FASHION_DATA)."


class UserError(click.ClickException):
    """A user's mistake: printed as one line, exit code 2, no traceback."""

    exit_code = 2


def _user_errors(fn):
    """Turn the library's expected errors into one-line click errors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .data.catalog import CatalogError
        from .data.sources import DataSourceError
        from .data.splits import SplitError
        from .experiment import SourceError  # noqa: F401  (a ConfigError)

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataSourceError, CatalogError, SplitError) as e:
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; the run was ended as KILLED", err=True)
            sys.exit(130)

    return wrapper


def data_options(fn):
    """Options shared by every stage that reads the dataset."""
    opts = [
        click.option("--data", default=None, help=DATA_HELP),
        click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
                     help="Number of most frequent classes in the pretrain subset."),
        click.option("--rank-on", type=click.Choice(RANK_ON), default="train", show_default=True,
                     help="Rank classes by frequency in the training half (default) or the whole table."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.15, show_default=True,
                     help="Share of each class's training images held out for validation."),
        click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the validation carve-out."),
        click.option("--height", type=click.IntRange(min=8), default=80, show_default=True, help="Cached image height."),
        click.option("--width", type=click.IntRange(min=8), default=60, show_default=True, help="Cached image width."),
        click.option("--experiment", default=None,
                     help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or the dataset's folder name)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def data_config(top_k, rank_on, val_fraction, split_seed, height, width) -> DataConfig:
    return DataConfig(height=height, width=width, top_k=top_k, rank_on=rank_on, val_fraction=val_fraction,
                      split_seed=split_seed)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """fashion-grid: transfer learning on a fashion catalogue, tracked in MLflow, tuned with Optuna."""


@main.command()
@data_options
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Image decoding processes (default: all cores).")
@_user_errors
def prepare(data, top_k, rank_on, val_fraction, split_seed, height, width, experiment, workers):
    """Validate the catalogue, split it, build the image cache; log a `stage=prepare` run."""
    from .prepare import run_prepare

    cfg = data_config(top_k, rank_on, val_fraction, split_seed, height, width)
    run_prepare(data, cfg, workers=workers, experiment=experiment, log=lambda m: click.echo(m, err=False))


def technique_options(fn):
    """Options shared by the training stages."""
    from .config import PROFILES

    opts = [
        click.option("--technique", "-t", default="baseline", show_default=True,
                     help="A file stem in experiments/<stage>/ or a path to a YAML file."),
        click.option("--profile", type=click.Choice(list(PROFILES)), default="default", show_default=True,
                     help="quick: a few minutes on 2 CPU cores; default: the accurate one."),
        click.option("--override", "-o", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key, e.g. -o loss.gamma=1.5 -o train.epochs=10 (repeatable)."),
        click.option("--overrides", default="", metavar="'K=V K=V'",
                     help="Several overrides in one string, separated by spaces (for MLproject parameters)."),
        click.option("--seed", type=int, default=None, help="Training seed (train.seed)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="train.epochs."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="train.device."),
        click.option("--experiments-dir", default="experiments", show_default=True, type=click.Path(file_okay=False),
                     help="Folder of technique YAML files."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def resolve_config(stage, technique, profile, override, seed, epochs, device, experiments_dir, data_cfg,
                   overrides: str = ""):
    """Profile <- technique file <- data options <- --seed/--epochs/--device <- -o overrides."""
    from .config import find_technique, load_experiment, parse_overrides, to_dict

    path = find_technique(technique, stage, experiments_dir)
    cfg = load_experiment(path, profile=profile, stage=stage)
    extra = {f"data.{k}": v for k, v in to_dict(data_cfg).items()
             if v != getattr(DataConfig(), k)}  # explicit data options win over the file only when set
    if seed is not None:
        extra["train.seed"] = seed
    if epochs is not None:
        extra["train.epochs"] = epochs
    if device is not None:
        extra["train.device"] = device
    extra.update(parse_overrides(list(override) + overrides.split()))
    return cfg.replace(**extra) if extra else cfg


@main.command()
@data_options
@technique_options
@click.option("--resume", default=None, metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the model as a version of 'fashion-pretrain' (alias @best follows validation).")
@_user_errors
def pretrain(data, top_k, rank_on, val_fraction, split_seed, height, width, experiment, technique, profile, override,
             overrides, seed, epochs, device, experiments_dir, resume, register):
    """Train on the top-k classes; evaluate per class on the test split; log a `stage=pretrain` run."""
    from .experiment import run_stage

    cfg = resolve_config("pretrain", technique, profile, override, seed, epochs, device, experiments_dir,
                         data_config(top_k, rank_on, val_fraction, split_seed, height, width), overrides)
    run_stage(cfg, data, experiment=experiment, register=register, resume=resume, log=click.echo)


@main.command()
@data_options
@technique_options
@click.option("--from", "source", default="latest", show_default=True,
              help="The pretrained model: a run id, runs:/<id>, models:/<name>/<version>, models:/<name>@<alias>, "
                   "or latest (the newest finished pretrain run).")
@click.option("--resume", default=None, metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@_user_errors
def finetune(data, top_k, rank_on, val_fraction, split_seed, height, width, experiment, technique, profile, override,
             overrides, seed, epochs, device, experiments_dir, source, resume):
    """Transfer the pretrained network to the other classes; log a `stage=finetune` run."""
    from .experiment import run_stage

    if technique == "baseline":
        technique = "finetune"
    cfg = resolve_config("finetune", technique, profile, override, seed, epochs, device, experiments_dir,
                         data_config(top_k, rank_on, val_fraction, split_seed, height, width), overrides)
    run_stage(cfg, data, source=source, experiment=experiment, resume=resume, log=click.echo)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_uri", default="models:/fashion-pretrain@best", show_default=True,
              help="A run id, runs:/<id>, models:/<name>/<version>, models:/<name>@<alias>, or latest.")
@click.option("--top", type=click.IntRange(1, 20), default=5, show_default=True)
@_user_errors
def predict(images, model_uri, top):
    """Top classes with probabilities for each IMAGE, from a logged or registered model."""
    from .serving import predict_images

    for path, preds in zip(images, predict_images(list(images), model_uri, k=top)):
        click.echo(f"{path}: " + ", ".join(f"{c} {p:.3f}" for c, p in preds))


if __name__ == "__main__":
    main()
