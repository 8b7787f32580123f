"""The ``fashion`` command: thin wrappers that validate options and call the library.

fashion prepare --data /path/to/fashion-product-images-small.tar.gz
fashion --help
"""

from __future__ import annotations

import click

from fashion_core.cli.options import (
    DATA_HELP,
    PROFILE_HELP,
    UserError,
    data_config_of,
    data_options,
    data_overrides,
    dry_run_option,
    gpus_option,
    split_words,
    stage_config,
    storage_url,
    technique_options,
    torchrun_if_asked,
    user_errors,
)
from fashion_core.config.profiles import PROFILES as _PROFILES
from fashion_core.config.schema import DataConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-q", "--quiet", is_flag=True, help="Show only warnings and errors (no progress lines).")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """fashion-grid: transfer learning on a fashion catalogue, tracked in MLflow, tuned with Optuna."""
    import logging

    from fashion_core.engine.console import console

    # The library's messages (module loggers) are shown by the command, until it ends: the bare text on stdout.
    ctx.with_resource(console(logging.WARNING if quiet else logging.INFO))


@main.command()
@data_options
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Image decoding processes (default: all cores)."
)
@user_errors
def prepare(data, experiment, workers, **opts):
    """Validate the catalogue, split it, build the image cache; log a `stage=prepare` run."""
    from fashion_core.runners.prepare import run_prepare

    run_prepare(data, data_config_of(opts), workers=workers, experiment=experiment)


@main.command()
@data_options
@technique_options
@click.option("--resume", default=None, metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register the model as a version of 'fashion-pretrain' (alias @best follows validation).",
)
@gpus_option
@dry_run_option
@user_errors
def pretrain(data, experiment, resume, register, dry_run, **opts):
    """Train on the top-k classes; evaluate per class on the test split; log a `stage=pretrain` run."""
    from fashion_core.cli import checks
    from fashion_core.grid.main_job import log_expected

    if resume:
        checks.check_reference_form(resume, "--resume")
    chosen, gpu, cfg = stage_config("pretrain", opts)
    if dry_run:
        return checks.dry_run([cfg], data, chosen, gpu)
    log_expected(_one_run_minutes(cfg, chosen, gpu), "1 run", gpu)
    from fashion_core.runners.stage import run_stage

    torchrun_if_asked()
    run_stage(cfg, data, experiment=experiment, register=register, resume=resume, tags={"profile": chosen})


@main.command()
@data_options
@technique_options
@click.option(
    "--from",
    "source",
    default="latest",
    show_default=True,
    help="The pretrained model: a run id, runs:/<id>, models:/<name>/<version>, models:/<name>@<alias>, "
    "or latest (the newest finished pretrain run).",
)
@click.option("--resume", default=None, metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@click.option(
    "--allow-split-mismatch",
    is_flag=True,
    help="Accept a --from run trained on another split (digest, --val-by, --val-years); the run is tagged "
    "split_mismatch_allowed=true with the source's split.",
)
@gpus_option
@dry_run_option
@user_errors
def finetune(data, experiment, source, resume, dry_run, allow_split_mismatch, **opts):
    """Transfer the pretrained network to the other classes; log a `stage=finetune` run."""
    from fashion_core.cli import checks
    from fashion_core.grid.main_job import log_expected

    checks.check_reference_form(source, "--from")  # a typo is refused at once, before torch or MLflow load
    if resume:
        checks.check_reference_form(resume, "--resume")
    if opts["technique"] == "baseline":
        opts["technique"] = "finetune"
    chosen, gpu, cfg = stage_config("finetune", opts)
    if dry_run:
        return checks.dry_run([cfg], data, chosen, gpu, extra=[_source_line(source, cfg)])
    if _needs_source(cfg):  # the reference is checked before any data is read
        source = checks.check_source(source, experiment)
    log_expected(_one_run_minutes(cfg, chosen, gpu), "1 run", gpu)
    from fashion_core.runners.stage import run_stage

    torchrun_if_asked()
    run_stage(
        cfg,
        data,
        source=source,
        experiment=experiment,
        resume=resume,
        tags={"profile": chosen},
        allow_split_mismatch=allow_split_mismatch,
    )


def _one_run_minutes(cfg, profile: str, gpu: bool) -> float:
    from fashion_core.grid.costs import PREPARE_MINUTES, task_minutes

    return PREPARE_MINUTES + task_minutes(cfg, profile, gpu)


def _needs_source(cfg) -> bool:
    """A finetune config that starts from a pretrained run (not the metadata baseline, not from scratch)."""
    from fashion_core.models.network import transfer_policy

    return cfg.fusion.mode != "metadata_only" and bool(transfer_policy(cfg.transfer.method).pretrained)


def _source_line(source: str | None, cfg=None) -> str:
    """The dry run's line on --from: resolved when the store exists (read only), else left to the run."""
    from fashion_core.cli import checks
    from fashion_core.tracking.store import sqlite_store

    if cfg is not None and not _needs_source(cfg):
        return "--from: not used (this technique starts from no pretrained run)"
    if not source:
        return "--from: the grid's best pretrain run by validation"
    db = sqlite_store()
    if db is not None and not db.is_file():
        return f"--from {source}: resolved when it runs (no store yet)"
    return f"--from {source}: pretrain run {checks.check_source(source)}"


@main.command()
@click.argument("run")
@click.option("--data", default=None, help=DATA_HELP)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
    help="Where a network predicts.",
)
@user_errors
def evaluate(run, data, device):
    """Score a finished run's test split once (a selection run deferred it); log it to that run.

    RUN: a run id, runs:/<id> or models:/ reference. The test_* metrics and eval/ tables are the ones the run would
    have logged at its end; a run that has read its test split already is refused.
    """
    from fashion_core.runners.evaluate import evaluate_run

    evaluate_run(run, data, device=device)


@main.command()
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "model_uri",
    default="models:/fashion-pretrain@best",
    show_default=True,
    help="A run id, runs:/<id>, models:/<name>/<version>, models:/<name>@<alias>, or latest; e.g. "
    "models:/fashion-finetune-fused@best (photo + metadata) or models:/fashion-finetune-metadata@best.",
)
@click.option(
    "--meta",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    metavar="FILE",
    help="The products' catalogue fields, for models that read them: a CSV such as styles.csv (rows "
    "matched to the images by id = file name without extension) or a JSON object / list of objects.",
)
@click.option("--top", type=click.IntRange(1, 20), default=5, show_default=True)
@user_errors
def predict(images, model_uri, meta, top):
    """Top classes with probabilities for each product (IMAGE files, and --meta for models that read metadata)."""
    from fashion_core.serving.predict import predict_products

    if not images and meta is None:
        raise UserError("give IMAGE files (and --meta FILE for a model that reads the product's metadata)")
    from fashion_core.cli.checks import check_reference_form
    from fashion_core.tracking.store import require_store

    check_reference_form(model_uri, "--model")
    require_store(f"model for --model {model_uri}")
    preds = predict_products(list(images), model_uri, meta, k=top)
    names = list(images) or [f"row {i + 1}" for i in range(len(preds))]
    for name, row in zip(names, preds):
        click.echo(f"{name}: " + ", ".join(f"{c} {p:.3f}" for c, p in row))


@main.command()
@data_options
@click.option(
    "--techniques",
    default="all",
    show_default=True,
    metavar="NAMES",
    help="Comma-separated techniques: file stems (focal), stage/stem (finetune/ncm), YAML paths, or all.",
)
@click.option(
    "--stages",
    default="pretrain,finetune",
    show_default=True,
    metavar="STAGES",
    help="Which stages' techniques run (comma-separated); pretrain ones always run first.",
)
@click.option(
    "--seeds",
    default="0",
    show_default=True,
    metavar="0,1,2",
    help="Training seeds; every technique runs once per seed.",
)
@click.option(
    "--from",
    "source",
    default=None,
    help="The finetune techniques' pretrained model (run id, runs:/, models:/ or latest); default: the "
    "grid's best pretrain run by validation class-mean top-1.",
)
@click.option(
    "--profile", type=click.Choice(["auto", *_PROFILES]), default="auto", show_default=True, help=PROFILE_HELP
)
@click.option(
    "--override",
    "-o",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key in every technique, e.g. -o train.epochs=10 (repeatable).",
)
@click.option("--overrides", default="", metavar="'K=V K=V'", help="Several overrides in one string.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="train.epochs of every technique.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="train.device.")
@click.option(
    "--experiments-dir",
    default="experiments",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of technique YAML files (pretrain/, finetune/).",
)
@click.option(
    "--reuse/--rerun",
    default=True,
    show_default=True,
    help="Reuse a finished run with the same config, dataset digest, commit and library versions instead "
    "of rerunning it (never outside a git checkout).",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register the pretrain models as versions of 'fashion-pretrain'.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cells at once in local worker processes (the CPU cores are divided between them).",
)
@click.option(
    "--gpus-per-cell",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs per cell with --jobs or --ray: 1 = a GPU each, 0.25 = four cells share one, 0 = CPU.",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="auto|HOST:PORT",
    help="Run every cell as a Ray task on this running cluster (pip install 'fashion-grid[ray]').",
)
@click.option(
    "--cpus-per-cell",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="With --ray: the CPUs each cell asks for (and its torch threads).",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="With --ray or --jobs: reruns of a cell whose worker process or node died.",
)
@dry_run_option
@user_errors
def grid(
    data,
    experiment,
    techniques,
    stages,
    seeds,
    source,
    profile,
    override,
    overrides,
    epochs,
    device,
    experiments_dir,
    reuse,
    register,
    jobs,
    gpus_per_cell,
    ray_address,
    cpus_per_cell,
    max_retries,
    dry_run,
    **data_opts,
):
    """Run the technique grid: every chosen technique x seed as a child run of one `stage=grid` run."""
    from fashion_core.cli import checks
    from fashion_core.config.schema import parse_overrides
    from fashion_core.grid.main_job import log_expected, pick_profile
    from fashion_core.grid.plan import parse_seeds, plan_grid

    if source:
        checks.check_reference_form(source, "--from")
    profile, gpu = pick_profile(profile, checks.explicit_device(device, override, overrides))
    extra = data_overrides(data_config_of(data_opts))
    if epochs is not None:
        extra["train.epochs"] = epochs
    if device is not None:
        extra["train.device"] = device
    extra.update(parse_overrides(list(override) + overrides.split()))
    seed_list = parse_seeds(seeds)
    tasks = plan_grid(
        experiments_dir, split_words([techniques], ","), split_words([stages], ","), seed_list, profile, extra
    )
    if dry_run:
        how = f"Ray cluster {ray_address}" if ray_address else (f"{jobs} local processes" if jobs > 1 else "here")
        return checks.dry_run(
            [t.cfg for t in tasks],
            data,
            profile,
            gpu,
            extra=[f"cells run: {how}"] + ([_source_line(source)] if source else []),
        )
    if source == "latest":  # looked up in the dataset's experiment once the data is read; the store must exist
        from fashion_core.tracking.store import require_store

        require_store("pretrained model for --from latest")
    elif source:
        source = checks.check_source(source, experiment)
    log_expected(checks_minutes(tasks, profile, gpu), f"{len(tasks)} run{'s' if len(tasks) != 1 else ''}", gpu)
    from fashion_core.grid.scheduler import run_grid

    run_grid(
        tasks,
        data,
        source=source or None,
        experiment=experiment,
        reuse=reuse,
        register=register,
        profile=profile,
        seeds=seed_list,
        jobs=jobs,
        gpus_per_cell=gpus_per_cell,
        ray=ray_address or None,
        cpus_per_cell=cpus_per_cell,
        max_retries=max_retries,
        show_status=True,
    )


def checks_minutes(tasks, profile: str, gpu: bool) -> float:
    """Expected minutes of a grid's tasks (prepare included)."""
    from fashion_core.grid.costs import PREPARE_MINUTES, task_minutes

    return PREPARE_MINUTES + sum(task_minutes(t.cfg, profile, gpu) for t in tasks)


@main.command("run")
@data_options
@click.option(
    "--profile",
    type=click.Choice(["auto", *_PROFILES]),
    default="auto",
    show_default=True,
    help="auto: default on a CUDA GPU, quick on CPUs (printed with the reason and the expected time).",
)
@click.option(
    "--techniques",
    default="",
    metavar="NAMES",
    help="Comma-separated techniques as for `fashion grid` (default: the lists in experiments/main.yaml).",
)
@click.option(
    "--override",
    "-o",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key in every technique, e.g. -o train.epochs=10 (repeatable).",
)
@click.option("--overrides", default="", metavar="'K=V K=V'", help="Several overrides in one string.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="train.device.")
@click.option(
    "--experiments-dir",
    default="experiments",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of technique YAML files and main.yaml.",
)
@click.option(
    "--out",
    default="reports/compare",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Local folder for the comparison report.",
)
@click.option(
    "--reuse/--rerun",
    default=True,
    show_default=True,
    help="Reuse a finished run with the same config, dataset digest and commit instead of rerunning it.",
)
@dry_run_option
@user_errors
def run_job(
    data,
    experiment,
    profile,
    techniques,
    override,
    overrides,
    device,
    experiments_dir,
    out,
    reuse,
    dry_run,
    **data_opts,
):
    """The main job: prepare -> pretrain -> finetune -> compare with the techniques of experiments/main.yaml."""
    from fashion_core.config.schema import parse_overrides, to_dict
    from fashion_core.grid.main_job import run_main

    data_cfg = data_config_of(data_opts)
    extra = {f"data.{k}": v for k, v in to_dict(data_cfg).items() if v != getattr(DataConfig(), k)}
    if device is not None:
        extra["train.device"] = device
    extra.update(parse_overrides(list(override) + overrides.split()))
    run_main(
        data,
        profile,
        split_words([techniques], ","),
        experiments_dir,
        extra,
        experiment,
        out,
        reuse,
        dry_run=dry_run,
    )


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--data", default=None, help=DATA_HELP)
@click.option(
    "--grid-run",
    default="auto",
    show_default=True,
    metavar="auto|RUN_ID|none",
    help="The grid run the ensemble joins (so that `compare` shows it): auto = the runs' common parent.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="The run's seed (default: its network member's): the cross-fitted validation halves, the test bootstrap.",
)
@user_errors
def ensemble(runs, data, grid_run, seed):
    """Combine two finished runs of a stage, log p_a + w log p_b (w chosen on validation); log it as a run.

    RUNS: two run ids (or runs:/, models:/ references; apart or as "A,B") of the same stage and split, e.g. an
    image network and the metadata-only baseline.
    """
    from fashion_core.runners.ensemble import run_ensemble

    run_ensemble(split_words(runs, ","), data, grid_run=grid_run, seed=seed)


@main.command()
@click.option(
    "--experiment",
    default=None,
    help="MLflow experiment (default: the one holding the newest grid run, else the newest stage run).",
)
@click.option("--stage", type=click.Choice(["all", "pretrain", "finetune"]), default="all", show_default=True)
@click.option(
    "--grid",
    "grid_run",
    default="latest",
    show_default=True,
    metavar="latest|RUN_ID|none",
    help="Which runs: the newest grid's, one grid's (its parent run id), or none = every run.",
)
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag (repeatable).")
@click.option(
    "--out",
    default="reports/compare",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Local folder for report.html and the CSV/Markdown tables.",
)
@click.option(
    "--log-run/--no-log-run",
    default=True,
    show_default=True,
    help="Also log the report as the artifacts of a `stage=compare` run.",
)
@click.option(
    "--pair",
    multiple=True,
    metavar="A,B",
    help="Also compare these two techniques of one stage, paired on the same test images (repeatable).",
)
@click.option(
    "--ui-url",
    default="http://127.0.0.1:5000",
    show_default=True,
    help="MLflow UI address the report links run ids to ('' for plain ids).",
)
@user_errors
def compare(experiment, stage, grid_run, tag, out, log_run, pair, ui_url):
    """Compare techniques per class: summary, paired comparisons, confusions, an interactive HTML report."""
    from fashion_core.config.schema import parse_overrides
    from fashion_core.tracking.store import require_store

    require_store("runs to compare")
    from fashion_core.report.compare import run_compare
    from fashion_core.report.runs import STAGES

    tags = {k: str(v) for k, v in parse_overrides(split_words(tag)).items()}
    run_compare(
        experiment or None,
        STAGES if stage == "all" else (stage,),
        grid_run or "latest",
        tags,
        out,
        log_run=log_run,
        pairs=pair,
        ui_url=ui_url,
    )


@main.command()
@data_options
@click.option(
    "--space",
    default="focal_weights",
    show_default=True,
    help="A search space: a file stem in --spaces-dir or a path to a YAML file.",
)
@click.option(
    "--spaces-dir",
    default="search_spaces",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of search-space YAML files.",
)
@click.option(
    "--experiments-dir",
    default="experiments",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of technique YAML files (the space's base technique).",
)
@click.option(
    "--profile",
    type=click.Choice(["auto", *_PROFILES]),
    default="auto",
    show_default=True,
    help="Profile of every trial (and of --final); the same for every worker of a study. " + PROFILE_HELP,
)
@click.option(
    "--override",
    "-o",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key of every trial, e.g. -o train.epochs=3 (repeatable; not a searched key).",
)
@click.option("--overrides", default="", metavar="'K=V K=V'", help="Several overrides in one string (MLproject).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="train.device.")
@click.option("--study-name", default=None, help="Optuna study (default: the space's name).")
@click.option(
    "--storage",
    default="sqlite:///optuna.db",
    show_default=True,
    callback=storage_url,
    help="Optuna storage: sqlite:///FILE (one machine), postgresql://USER:PASSWORD@HOST:5432/DB (many "
    "machines) or journal:FILE (many processes on one host).",
)
@click.option(
    "--n-trials",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Trials this worker runs (0: none, e.g. with --final).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Start no trial after this many seconds (0: no limit).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Sampler seed (plus the trials already in the study; give parallel workers different seeds).",
)
@click.option(
    "--pruning/--no-pruning",
    default=True,
    show_default=True,
    help="Median pruning on the per-epoch validation reports.",
)
@click.option(
    "--prune-from",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="First epoch at which a trial may be pruned.",
)
@click.option(
    "--heartbeat",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="sqlite/PostgreSQL: seconds between heartbeats; a trial silent for twice this is failed and retried.",
)
@click.option(
    "--create-only",
    is_flag=True,
    help="Create the storage, the study and the MLflow experiment, then exit (before starting workers).",
)
@click.option(
    "--final",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=False,
    show_default=True,
    help="Then train the best configuration as a normal run tagged selected=true, evaluated on test once.",
)
@click.option(
    "--from",
    "source",
    default="latest",
    show_default=True,
    help="Finetune spaces: the pretrained model (run id, runs:/, models:/ or latest).",
)
@click.option(
    "--allow-split-mismatch",
    is_flag=True,
    help="Accept a --from run trained on another split; the study's runs are tagged split_mismatch_allowed.",
)
@dry_run_option
@user_errors
def tune(
    data,
    experiment,
    space,
    spaces_dir,
    experiments_dir,
    profile,
    override,
    overrides,
    device,
    study_name,
    storage,
    n_trials,
    timeout,
    seed,
    pruning,
    prune_from,
    heartbeat,
    create_only,
    final,
    source,
    dry_run,
    allow_split_mismatch,
    **data_opts,
):
    """Tune a search space with Optuna: one nested MLflow run per trial, chosen on validation only."""
    from fashion_core.cli import checks
    from fashion_core.config.schema import parse_overrides
    from fashion_core.grid.main_job import log_expected, pick_profile
    from fashion_core.tuning.run import check_space_config
    from fashion_core.tuning.spaces import base_config, load_space

    checks.check_reference_form(source, "--from")
    spc = load_space(space, spaces_dir, experiments_dir)
    profile, gpu = pick_profile(profile, checks.explicit_device(device, override, overrides))
    extra = data_overrides(data_config_of(data_opts))
    if device is not None:
        extra["train.device"] = device
    extra.update(parse_overrides(list(override) + overrides.split()))
    base = base_config(spc, profile, extra)  # the space, profile and overrides checked before any study or run
    check_space_config(spc, base)
    trials = n_trials + (1 if final else 0)
    if dry_run:
        return checks.dry_run(
            [base],
            data,
            profile,
            gpu,
            runs=trials,
            extra=[
                f"study {study_name or spc.name!r} in {storage}: {n_trials} trial(s) of "
                f"{', '.join(spc.param_names)}, objective {spc.objective}" + (", then the final run" if final else "")
            ]
            + ([_source_line(source, base)] if spc.stage == "finetune" else []),
        )
    if spc.stage == "finetune" and _needs_source(base) and source != "latest":
        checks.check_source(source, experiment)  # `latest` is looked up in the dataset's experiment
    log_expected(
        checks_minutes([_Task(base)] * trials, profile, gpu),
        f"at most {trials} run{'s' if trials != 1 else ''}; pruned trials stop early",
        gpu,
    )
    import logging

    import optuna

    from fashion_core.tuning.run import run_tune

    optuna.logging.set_verbosity(logging.WARNING)  # the progress lines below say the same, once
    res = run_tune(
        spc,
        data,
        profile=profile,
        overrides=extra,
        study_name=study_name,
        storage=storage,
        n_trials=n_trials,
        timeout=timeout or None,
        seed=seed,
        pruning=pruning,
        prune_from=prune_from,
        heartbeat=heartbeat,
        experiment=experiment,
        create_only=create_only,
        final=final,
        source=source,
        allow_split_mismatch=allow_split_mismatch,
    )
    if res.best_trial is not None:
        click.echo(
            f"best of study {res.study_name!r}: trial {res.best_trial}, {spc.objective} {res.best_value:.4f}, "
            f"{res.best_params}"
        )
    if res.counts:
        click.echo("trials: " + ", ".join(f"{v} {k}" for k, v in res.counts.items() if v))
    click.echo(f"browse the study: {res.dashboard}")


class _Task:
    """A config where the cost functions expect a grid task."""

    def __init__(self, cfg):
        self.cfg = cfg


if __name__ == "__main__":
    main()
