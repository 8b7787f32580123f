"""Configuration: YAML + profile + dotted overrides into frozen dataclasses; bad names and numbers are clear errors."""
from pathlib import Path

import pytest

from fashion_core.config import ConfigError, find_technique, list_techniques, load_experiment, parse_overrides

EXP = Path(__file__).resolve().parents[1] / "experiments"


def test_every_experiment_file_loads():
    for stage in ("pretrain", "finetune"):
        files = list_techniques(stage, EXP)
        assert files
        for f in files:
            cfg = load_experiment(f, stage=stage)
            assert cfg.stage == stage and cfg.technique == f.stem


def test_precedence_profile_file_override():
    cfg = load_experiment(EXP / "pretrain" / "focal.yaml", profile="quick",
                          overrides=parse_overrides(["loss.gamma=0.5", "train.epochs=3"]))
    assert cfg.loss.name == "focal" and cfg.loss.gamma == 0.5 and cfg.train.epochs == 3
    assert cfg.model.stem == "imagenet"  # from the quick profile


@pytest.mark.parametrize("over,match", [
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
])
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
