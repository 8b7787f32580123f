"""Where a model comes from: the run behind a model reference, and the network rebuilt from its checkpoint.

``finetune --from``, ``predict --model`` and tuning resolve a run id, a ``runs:/`` or ``models:/`` URI
or ``latest`` here, and ``load_run_model`` rebuilds the network from ``checkpoint/model.json`` and the
state dict. The state dict is loaded with ``torch.load(weights_only=True)`` instead of
``mlflow.pytorch.load_model``: loading never unpickles (runs no code from the artifact store), and the
fused models, which the image-only serving model cannot hold, load the same way.
"""

from __future__ import annotations

import json
import re
import tempfile
from typing import cast

import torch

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ModelConfig, to_dict
from fashion_core.engine.train import load_error
from fashion_core.fusion.meta import model_from_meta
from fashion_core.models.heads import NCMHead
from fashion_core.models.network import FashionNet
from fashion_core.tracking import runs as tracking

STATE_ARTIFACT = "checkpoint/model_state.pt"
MODEL_JSON = "checkpoint/model.json"


class SourceError(ConfigError):
    """``finetune --from`` names something that is not a usable pretrain run."""


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model_uri(spec: str, experiment: str | None = None, stage: str = "pretrain") -> str:
    """The run id behind a model reference: a run id, ``runs:/<id>[/..]``, ``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``models:/<name>`` (newest version), or ``latest`` (newest finished ``stage`` run)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if spec == "latest":
        runs = tracking.find_runs(
            f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
            [experiment] if experiment else None,
            max_results=50,
        )
        runs = [r for r in runs if r.data.tags.get("baseline") != "metadata_only"][:1]  # no network to load
        if not runs:
            raise SourceError(
                f"latest: no finished {stage} run; {tracking.store_hint()}; or run `fashion {stage}` first"
            )
        return runs[0].info.run_id
    if spec.startswith("runs:/"):
        return spec[len("runs:/") :].split("/")[0]
    if spec.startswith("models:/"):
        rest = spec[len("models:/") :]
        try:
            if "@" in rest:
                name, alias = rest.split("@", 1)
                mv = client.get_model_version_by_alias(name.rstrip("/"), alias)
            else:
                name, _, version = rest.partition("/")
                if not version:
                    versions = client.search_model_versions(f"name = '{name}'")
                    if not versions:
                        raise SourceError(f"{spec}: no versions of registered model {name!r}")
                    version = str(max(int(v.version) for v in versions))
                mv = client.get_model_version(name, version)
        except MlflowException as e:
            raise SourceError(f"{spec}: {e.message}; {tracking.store_hint()}") from None
        # Optional in MLflow's model; this project registers versions from runs (log_model), which set it.
        return cast(str, mv.run_id)
    if _RUN_ID.match(spec):
        return spec
    raise SourceError(
        f"{spec!r}: expected a run id, runs:/<id>, models:/<name>/<version>, models:/<name>@<alias> or latest"
    )


def resolve_source(spec: str, experiment: str | None = None) -> str:
    """The pretrain run id behind ``finetune --from``; it must exist, be FINISHED and be a pretrain run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = resolve_model_uri(spec, experiment, "pretrain")
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise SourceError(f"--from {spec}: no run {run_id}; {tracking.store_hint()}") from None
    if run.info.status != "FINISHED":
        raise SourceError(f"--from {spec}: run {run_id} is {run.info.status}, not FINISHED")
    stage = run.data.tags.get("stage")
    if stage != "pretrain":
        raise SourceError(f"--from {spec}: run {run_id} is a {stage or 'untagged'} run, not a pretrain run")
    if run.data.tags.get("baseline") == "metadata_only":
        raise SourceError(
            f"--from {spec}: run {run_id} is the metadata-only baseline (a scikit-learn model), "
            "not a network to fine-tune"
        )
    return run_id


def load_run_model(run_id: str, map_location: str = "cpu") -> tuple[FashionNet, dict]:
    """Rebuild a logged FashionNet from its state dict (loaded with weights_only=True) and model.json."""
    with tempfile.TemporaryDirectory() as d:
        try:
            meta = json.loads(tracking.download_artifact(run_id, MODEL_JSON, d).read_text())
            state = torch.load(
                tracking.download_artifact(run_id, STATE_ARTIFACT, d), map_location=map_location, weights_only=True
            )
        except Exception as e:
            raise SourceError(
                f"run {run_id} has no usable model checkpoint ({MODEL_JSON}, {STATE_ARTIFACT}): {load_error(e)}"
            ) from None
    return model_from_checkpoint(meta, state), meta


def model_from_checkpoint(meta: dict, state: dict) -> FashionNet:
    """The network a ``model.json`` describes, with the weights of a ``model_state.pt`` state dict."""
    mcfg = ModelConfig(**{k: v for k, v in meta["model"].items()})
    # A fused model (model.json has "fused") comes back with its encoders' vocabularies and auxiliary heads.
    model = model_from_meta(mcfg.__class__(**{**to_dict(mcfg), "init": "scratch"}), meta)
    if meta.get("head_kind") == "ncm":
        model.set_head(NCMHead(state["head.means"]))
    elif meta.get("head_kind") and meta["head_kind"] != model.head_kind:
        model.reset_head(len(meta["classes"]), meta["head_kind"])
    model.load_state_dict(state)
    return model
