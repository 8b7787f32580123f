"""Configuration: YAML + profile + dotted overrides into frozen dataclasses; bad names and numbers are clear errors."""

from pathlib import Path

import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import find_technique, list_techniques, load_experiment, parse_overrides

EXP = Path(__file__).resolve().parents[1] / "experiments"


def test_every_experiment_file_loads():
    for stage in ("pretrain", "finetune"):
        files = list_techniques(stage, EXP)
        assert files
        for f in files:
            cfg = load_experiment(f, stage=stage)
            assert cfg.stage == stage and cfg.technique == f.stem


def test_precedence_profile_file_override():
    cfg = load_experiment(
        EXP / "pretrain" / "focal.yaml",
        profile="quick",
        overrides=parse_overrides(["loss.gamma=0.5", "train.epochs=3"]),
    )
    assert cfg.loss.name == "focal" and cfg.loss.gamma == 0.5 and cfg.train.epochs == 3
    assert cfg.model.stem == "imagenet"  # from the quick profile


@pytest.mark.parametrize(
    "over,match",
    [
        ({"loss.gama": 1}, "unknown config key 'loss.gama'; valid keys here: name, weights"),
        ({"loss.name": "hinge"}, "unknown loss 'hinge'; choose one of: ce, focal, logit_adjusted"),
        ({"loss.weights": "sqrt"}, "choose one of: none, inverse, inverse_sqrt, effective_number"),
        ({"model.backbone": "vgg"}, "unknown backbone 'vgg'"),
        ({"loss.gamma": -1}, "loss.gamma must be >= 0"),
        ({"train.lr": 0}, "train.lr must be > 0"),
        ({"train.epochs": 0}, "train.epochs must be >= 1"),
        ({"train.batch_size": 0}, "train.batch_size must be >= 1"),
        ({"train.epochs": "many"}, "expected an integer"),
        ({"transfer.method": "magic"}, "unknown transfer method"),
    ],
)
def test_bad_values_are_clear_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment(overrides=over)


def test_unknown_technique_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of: .*baseline.*focal"):
        find_technique("nope", "pretrain", EXP)


def test_technique_names_work_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ folder here: the checkout's own techniques are found
    assert find_technique("focal", "pretrain") == EXP.resolve() / "pretrain" / "focal.yaml"
    with pytest.raises(ConfigError, match="no .*other.* folder of technique files here; run from the project"):
        find_technique("focal", "pretrain", tmp_path / "other")


def test_stage_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="is a finetune technique"):
        load_experiment(EXP / "finetune" / "ncm.yaml", stage="pretrain")


def test_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["loss.gamma"])


def test_float_in_exponent_notation(tmp_path):
    # YAML 1.1 reads "2e-3" (no dot) as a string; a float setting must still take it.
    cfg = load_experiment(overrides=parse_overrides(["train.lr=2e-3", "loss.beta=9e-1"]))
    assert cfg.train.lr == 2e-3 and cfg.loss.beta == 0.9
    f = tmp_path / "t.yaml"
    f.write_text("train:\n  lr: 5e-4\n")
    assert load_experiment(f).train.lr == 5e-4
    for bad in ("fast", "nan", "inf", ".nan"):
        with pytest.raises(ConfigError, match="expected a number"):
            load_experiment(overrides={"train.lr": bad})


@pytest.mark.parametrize("path", sorted(EXP.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_technique_file_loads_for_its_stage(path):
    cfg = load_experiment(path, stage=path.parent.name)
    assert cfg.technique == path.stem and cfg.description


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_technique_states_only_what_differs_from_its_parent(tmp_path):
    root = tmp_path / "experiments"
    _write(
        root / "pretrain",
        "base",
        "description: the parent\nstage: pretrain\n"
        "fusion:\n  mode: late\n  fields: [gender, usage]\n  meta_dropout: 0.25\nloss:\n  name: logit_adjusted\n",
    )
    child = _write(root / "pretrain", "child", "parent: base\ndescription: the child\nfusion:\n  fields: [gender]\n")
    cfg = load_experiment(child, stage="pretrain")
    assert cfg.technique == "child" and cfg.description == "the child"
    assert cfg.fusion.mode == "late" and cfg.fusion.fields == ("gender",)  # a list is replaced, a section merged
    assert cfg.fusion.meta_dropout == 0.25 and cfg.loss.name == "logit_adjusted"
    other = _write(
        root / "finetune", "child", "parent: pretrain/child\ndescription: in the other stage\nstage: finetune\n"
    )
    cfg = load_experiment(other, stage="finetune")  # a parent of the other stage, by <stage>/<name>
    assert cfg.stage == "finetune" and cfg.fusion.fields == ("gender",) and cfg.loss.name == "logit_adjusted"
    grand = _write(root / "pretrain", "grand", "parent: child\n")
    assert load_experiment(grand).description == ""  # a description describes one file: never inherited


def test_unknown_parents_and_cycles_are_errors(tmp_path):
    root = tmp_path / "experiments"
    _write(root / "pretrain", "focal", "stage: pretrain\n")
    bad = _write(root / "pretrain", "bad", "parent: focl\n")
    with pytest.raises(ConfigError, match="unknown parent 'focl'; choose one of: focal"):
        load_experiment(bad)
    a = _write(root / "pretrain", "a", "parent: b\n")
    _write(root / "pretrain", "b", "parent: a\n")
    with pytest.raises(ConfigError, match="cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_experiment(a)
    with pytest.raises(ConfigError, match="parent must name a technique file"):
        load_experiment(_write(root / "pretrain", "empty", "parent: [x]\n"))


def test_the_project_techniques_compose():
    """The fused, metadata-only and zero-shot families name their parents; finetune files reuse pretrain ones."""
    from fashion_core.config.schema import technique_raw

    assert technique_raw(EXP / "pretrain" / "fused_text_film.yaml")["fusion"]["mode"] == "film"
    ft = load_experiment(EXP / "finetune" / "fused_text.yaml", stage="finetune")
    pt = load_experiment(EXP / "pretrain" / "fused_text.yaml", stage="pretrain")
    assert ft.fusion == pt.fusion and ft.loss == pt.loss and ft.train.epochs == 15
    zs = load_experiment(EXP / "finetune" / "zeroshot.yaml", stage="finetune")
    assert zs.zeroshot.enabled and zs.zeroshot.fold_by == "subCategory" and zs.transfer.method == "scratch"
    assert zs.fusion == load_experiment(EXP / "finetune" / "meta_only.yaml", stage="finetune").fusion


def test_a_logged_config_with_a_removed_key_reads_back(tmp_path):
    """Configs logged before the WordNet class text left carry ``zeroshot.class_text``: at ``name`` (what the code
    does) the key loads as if absent, as a file, a nested mapping or an override; ``wordnet`` is refused with why."""
    import yaml

    from fashion_core.config.schema import ExperimentConfig, flatten

    zs = load_experiment(EXP / "finetune" / "zeroshot.yaml", stage="finetune")
    assert "class_text" not in zs.to_dict()["zeroshot"]
    logged = zs.to_dict()
    logged["zeroshot"]["class_text"] = "name"
    path = tmp_path / "config.yaml"  # as a run logs it
    path.write_text(yaml.safe_dump(logged, sort_keys=False))
    assert load_experiment(path, stage="finetune") == zs
    assert ExperimentConfig(stage="finetune").replace(**flatten(logged)) == zs
    assert ExperimentConfig(stage="finetune").replace(zeroshot={"class_text": "name"}) == ExperimentConfig("finetune")
    assert zs.replace(**parse_overrides(["zeroshot.class_text=name"])) == zs
    logged["zeroshot"]["class_text"] = "wordnet"
    path.write_text(yaml.safe_dump(logged, sort_keys=False))
    why = r"zeroshot.class_text=wordnet is no longer an option: .*preferred the name alone"
    for load in (
        lambda: load_experiment(path, stage="finetune"),
        lambda: ExperimentConfig(stage="finetune").replace(zeroshot={"class_text": "wordnet"}),
        lambda: zs.replace(**{"zeroshot.class_text": "wordnet"}),
    ):
        with pytest.raises(ConfigError, match=why):
            load()
    with pytest.raises(ConfigError, match="unknown config key 'zeroshot.class_texts'"):
        zs.replace(**{"zeroshot.class_texts": "name"})


def test_the_sections_of_metadata_and_zero_shot():
    cfg = load_experiment(
        overrides={
            "fusion.mode": "metadata_only",
            "metadata.logreg_c": 10,
            "zeroshot.enabled": True,
            "zeroshot.text": "mapped",
        }
    )
    assert cfg.metadata.logreg_c == 10.0 and cfg.zeroshot.text == "mapped"
    with pytest.raises(ConfigError, match="unknown config key 'fusion.zs_text'"):
        load_experiment(overrides={"fusion.zs_text": "mapped"})
    with pytest.raises(ConfigError, match="zeroshot.enabled extends the metadata-only model"):
        load_experiment(overrides={"zeroshot.enabled": True})
    with pytest.raises(ConfigError, match="metadata.logreg_c must be >= 0"):
        load_experiment(overrides={"metadata.logreg_c": -1})
