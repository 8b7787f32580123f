"""The ``fashion`` command's shared options and its one-line user errors.

``cli.py`` holds the click group and one function per command; the options that several commands
share (the data options, the technique options, ``--gpus``), their callbacks, the config they
resolve to and the one-line user errors live here.
"""

from __future__ import annotations

import os
import sys

import click

from fashion_core.cli import checks
from fashion_core.config.checks import RANK_ON, VAL_BY, ConfigError
from fashion_core.config.profiles import PROFILES
from fashion_core.config.schema import DataConfig

DATA_HELP = (
    "Dataset: a folder with styles.csv and images/, a .zip/.tar.gz of one, or kaggle:<owner>/<dataset> "
    "(default: $FASHION_DATA)."
)


class UserError(click.ClickException):
    """A user's mistake: printed as one line, exit code 2, no traceback."""

    exit_code = 2


def _one_line(message: str) -> str:
    """A library message as one plain line (some wrap a third-party error with newlines and ANSI codes)."""
    import re

    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", message).split())


def user_errors(fn):
    """Turn the library's expected errors into one-line click errors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fashion_core.data.catalog import CatalogError
        from fashion_core.data.sources import DataSourceError
        from fashion_core.data.splits import SplitError

        try:  # model_source.SourceError is a ConfigError
            return fn(*args, **kwargs)
        except (ConfigError, DataSourceError, CatalogError, SplitError) as e:
            raise UserError(_one_line(str(e))) from None
        except KeyboardInterrupt:
            click.echo("interrupted; the run was ended as KILLED", err=True)
            sys.exit(130)

    return wrapper


PROFILE_HELP = (
    "auto: default on a CUDA GPU, quick on CPUs (printed with the reason and the expected time); "
    "default (the accurate GPU one) on CPUs needs --device cpu."
)


def dry_run_option(fn):
    """``--dry-run``: resolve and check the config and the data path, print the plan, run nothing."""
    return click.option(
        "--dry-run",
        is_flag=True,
        help="Resolve and check the config, the data path and the references, print the plan and "
        "exit (no run, no store).",
    )(fn)


def data_options(fn):
    """Options shared by every stage that reads the dataset."""
    opts = [
        click.option("--data", default=None, help=DATA_HELP),
        click.option(
            "--top-k",
            type=click.IntRange(min=1),
            default=20,
            show_default=True,
            help="Number of most frequent classes in the pretrain subset.",
        ),
        click.option(
            "--rank-on",
            type=click.Choice(RANK_ON),
            default="train",
            show_default=True,
            help="Rank classes by frequency in the training half (default) or the whole table.",
        ),
        click.option(
            "--val-fraction",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.15,
            show_default=True,
            help="Share of each class's training images held out for validation.",
        ),
        click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the validation carve-out."),
        click.option(
            "--val-by",
            type=click.Choice(VAL_BY),
            default="random",
            show_default=True,
            help="Validation: a random share of each class's even-year images (--val-fraction), or every "
            "even-year image of --val-years (held out whole, as the odd test years are).",
        ),
        click.option(
            "--val-years",
            default="2016",
            show_default=True,
            metavar="YEARS",
            callback=_val_years,
            help="With --val-by year: the held-out even years, comma-separated (2016 holds a quarter "
            "of the training years' products).",
        ),
        click.option(
            "--height", type=click.IntRange(min=8), default=80, show_default=True, help="Cached image height."
        ),
        click.option("--width", type=click.IntRange(min=8), default=60, show_default=True, help="Cached image width."),
        click.option(
            "--short-side",
            type=click.IntRange(min=8),
            default=None,
            is_eager=True,
            expose_value=False,
            callback=_short_side,
            metavar="N",
            help="Size for 3:4 portrait photos N pixels across: --width N --height round(N*4/3), "
            "e.g. 224 -> 299x224 for the full-resolution dataset (explicit --height/--width win).",
        ),
        click.option(
            "--experiment",
            default=None,
            help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or the dataset's folder name).",
        ),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _short_side(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    """--short-side N becomes the defaults of --height and --width (eager, so before they are read)."""
    if value is not None:
        from fashion_core.data.cache import size_for_short_side

        height, width = size_for_short_side(value)
        ctx.default_map = {**(ctx.default_map or {}), "height": height, "width": width}


def _val_years(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """--val-years 2014,2016 -> (2014, 2016): even years only."""
    from fashion_core.config.checks import validate_val_years

    try:
        years = tuple(int(v) for v in value.replace(",", " ").split())
        validate_val_years(years)
    except ValueError as e:  # ConfigError is a ValueError
        msg = str(e) if isinstance(e, ConfigError) else f"{value!r}: expected even years, e.g. 2016 or 2014,2016"
        raise click.BadParameter(msg) from None
    return years


def _store_gpus(ctx: click.Context, param: click.Parameter, value: int) -> None:
    ctx.meta["gpus"] = value


def gpus_option(fn):
    """``--gpus N``: one training run over N processes with PyTorch DDP, launched through torchrun."""
    return click.option(
        "--gpus",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        expose_value=False,
        callback=_store_gpus,
        metavar="N",
        help="Train one run on N GPUs with DDP (re-launches this command under torchrun; "
        "without GPUs: N CPU processes, gloo). Same as torchrun --nproc_per_node N "
        "-m fashion_core.cli.commands ...",
    )(fn)


def torchrun_if_asked() -> None:
    """With --gpus N > 1 outside torchrun: replace this process by torchrun running the same command."""
    n = click.get_current_context().meta.get("gpus", 1)
    if n <= 1 or "WORLD_SIZE" in os.environ:
        return
    if not any(a == "--gpus" or a.startswith("--gpus=") for a in sys.argv):
        raise UserError("--gpus N works from the command line only (it re-launches the command under torchrun)")
    import torch

    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise UserError(f"--gpus {n}: only {torch.cuda.device_count()} GPU(s) here")
    from fashion_core.engine.distributed import launch_with_torchrun

    launch_with_torchrun(n, sys.argv[1:])


def data_config(
    top_k, rank_on, val_fraction, split_seed, height, width, val_by="random", val_years=(2016,)
) -> DataConfig:
    if val_by != "year" and tuple(val_years) != DataConfig().val_years:
        raise ConfigError(
            f"--val-years {','.join(map(str, val_years))} needs --val-by year (validation is {val_by} without it)"
        )
    return DataConfig(
        height=height,
        width=width,
        top_k=top_k,
        rank_on=rank_on,
        val_fraction=val_fraction,
        split_seed=split_seed,
        val_by=val_by,
        val_years=tuple(val_years),
    )


DATA_OPTION_KEYS = ("top_k", "rank_on", "val_fraction", "split_seed", "height", "width", "val_by", "val_years")


def data_config_of(opts: dict) -> DataConfig:
    """The DataConfig of a command's ``data_options`` (its keyword arguments, as click passes them)."""
    return data_config(*(opts[k] for k in DATA_OPTION_KEYS))


def data_overrides(data_cfg: DataConfig) -> dict:
    """The data options that differ from the defaults, as dotted overrides (the others leave the file's)."""
    from fashion_core.config.schema import to_dict

    default = DataConfig()
    return {f"data.{k}": v for k, v in to_dict(data_cfg).items() if getattr(data_cfg, k) != getattr(default, k)}


def technique_options(fn):
    """Options shared by the training stages."""
    opts = [
        click.option(
            "--technique",
            "-t",
            default="baseline",
            show_default=True,
            help="A file stem in experiments/<stage>/ or a path to a YAML file.",
        ),
        click.option(
            "--profile", type=click.Choice(["auto", *PROFILES]), default="auto", show_default=True, help=PROFILE_HELP
        ),
        click.option(
            "--override",
            "-o",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a config key, e.g. -o loss.gamma=1.5 -o train.epochs=10 (repeatable).",
        ),
        click.option(
            "--overrides",
            default="",
            metavar="'K=V K=V'",
            help="Several overrides in one string, separated by spaces (for MLproject parameters).",
        ),
        click.option("--seed", type=int, default=None, help="Training seed (train.seed)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="train.epochs."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="train.device."),
        click.option(
            "--experiments-dir",
            default="experiments",
            show_default=True,
            type=click.Path(file_okay=False),
            help="Folder of technique YAML files.",
        ),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def resolve_config(
    stage, technique, profile, override, seed, epochs, device, experiments_dir, data_cfg, overrides: str = ""
):
    """Profile <- technique file <- data options <- --seed/--epochs/--device <- -o overrides."""
    from fashion_core.config.schema import find_technique, load_experiment, parse_overrides

    path = find_technique(technique, stage, experiments_dir)
    cfg = load_experiment(path, profile=profile, stage=stage)
    extra = data_overrides(data_cfg)  # explicit data options win over the file only when set
    if seed is not None:
        extra["train.seed"] = seed
    if epochs is not None:
        extra["train.epochs"] = epochs
    if device is not None:
        extra["train.device"] = device
    extra.update(parse_overrides(list(override) + overrides.split()))
    return cfg.replace(**extra) if extra else cfg


def stage_config(stage: str, opts: dict):
    """(profile, on a GPU, config) of a one-stage command from its ``data_options`` and ``technique_options``
    keyword arguments: the profile picked (``auto`` says why), then ``resolve_config``."""
    device = checks.explicit_device(opts["device"], opts["override"], opts["overrides"])
    from fashion_core.grid.main_job import pick_profile

    chosen, gpu = pick_profile(opts["profile"], device)
    cfg = resolve_config(
        stage,
        opts["technique"],
        chosen,
        opts["override"],
        opts["seed"],
        opts["epochs"],
        opts["device"],
        opts["experiments_dir"],
        data_config_of(opts),
        opts["overrides"],
    )
    return chosen, gpu, cfg


def split_words(values, sep=None) -> list[str]:
    """Repeated and/or separator-joined option values as one flat list (MLproject passes one string)."""
    return [w for v in values for w in (v.replace(",", " ").split() if sep == "," else v.split()) if w]


def storage_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--storage must be an Optuna storage URL this project can open."""
    from fashion_core.tuning.storage import check_storage_url

    try:
        check_storage_url(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    return value
