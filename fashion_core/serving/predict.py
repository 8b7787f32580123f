"""Serving and prediction: a logged model takes product photos and/or catalogue fields, gives class probabilities.

Image networks are logged as ``mlflow.pytorch`` models (uint8 images in); fused networks and the
metadata-only baseline as MLflow pyfunc models (``pyfunc_model.py``, models from code) that take a
frame with an ``image`` column (the file's bytes) and the catalogue fields they read.

    fashion predict path/to/1163.jpg --model models:/fashion-pretrain@best
    fashion predict images/1163.jpg --meta styles.csv --model models:/fashion-finetune-fused@best
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fashion_core.config.checks import ConfigError
from fashion_core.data.cache import decode_image
from fashion_core.data.loader import to_float
from fashion_core.engine.train import load_error
from fashion_core.fusion.encoders import TEXT_FIELD
from fashion_core.fusion.metadata_only import STATE_ARTIFACT as BASELINE_STATE
from fashion_core.fusion.metadata_only import WEIGHTS_ARTIFACT as BASELINE_WEIGHTS
from fashion_core.fusion.metadata_only import baseline_from_folder, class_scores, features
from fashion_core.fusion.modules import reads_metadata
from fashion_core.tracking.references import load_run_model, model_from_checkpoint, resolve_model_uri
from fashion_core.tracking.runs import download_artifact, quiet_mlflow
from fashion_core.zeroshot.head import HEAD_FILE, ZeroShotHead

logger = logging.getLogger(__name__)


class ProductInputError(ValueError):
    """An input the model cannot read, as one line that names the row and the reason (no frame, no traceback)."""


UNREADABLE = "not a readable JPEG/PNG image"


def decode_rows(values, height: int, width: int, names: list[str] | None = None) -> np.ndarray:
    """N x H x W x 3 uint8 from image bytes, base64 text or paths; an unreadable one names its row (or file)."""
    out = []
    for i, v in enumerate(values):
        try:
            out.append(_decode(v, height, width))
        except ProductInputError as e:
            raise ProductInputError(f"{names[i] if names else f'row {i + 1}'}: {e}") from None
        except (
            OSError,
            ValueError,
            SyntaxError,
        ):  # PIL's UnidentifiedImageError is an OSError; bad base64 a ValueError
            raise ProductInputError(f"{names[i] if names else f'row {i + 1}'}: {UNREADABLE}") from None
    return np.stack(out)


class ServingModel(nn.Module):
    """uint8 N x H x W x 3 images -> softmax probabilities (N, C); ``classes`` in index order."""

    def __init__(self, model: nn.Module, classes: list[str]):
        super().__init__()
        self.model = model
        self.classes = list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images.to(torch.uint8))
        return torch.softmax(self.model(x)["logits"].float(), dim=1)


def predict_images(paths: list[str | Path], model_uri: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each image file, from a logged or registered model.

    The model is rebuilt from its state dict (``torch.load(weights_only=True)``), never unpickled.
    """
    run_id = resolve_model_uri(model_uri)
    model, meta = load_run_model(run_id)
    if reads_metadata(model):
        raise ConfigError(
            f"{model_uri} fuses product metadata: predict it with predict_products(..., meta=...) "
            "(fashion predict --meta)"
        )
    h, w = meta["height"], meta["width"]
    try:
        images = decode_rows([str(p) for p in paths], h, w, names=[str(p) for p in paths])
    except ProductInputError as e:
        raise ConfigError(str(e)) from None
    serving = ServingModel(model.eval(), meta["classes"])
    with torch.no_grad():
        probs = serving(torch.from_numpy(images)).numpy()
    out = []
    for row in probs:
        idx = np.argsort(-row)[:k]
        out.append([(meta["classes"][i], float(row[i])) for i in idx])
    return out


# ---------------------------------------------------------------- products: image and/or catalogue fields

IMAGE_COLUMN = "image"
REGISTERED_NAMES = {"image": "", "image+metadata": "-fused", "metadata": "-metadata", "zeroshot": "-zeroshot"}


def registered_name(stage: str, inputs: str) -> str:
    """The registered model of a stage's models of one kind: fashion-<stage>[-fused|-metadata|-zeroshot]."""
    return f"fashion-{stage}{REGISTERED_NAMES[inputs]}"


class ProductModel:
    """Any logged model of this project as one predictor: product photos and/or catalogue fields -> probabilities.

    Built from a run's ``checkpoint/`` files (``model.json`` + ``model_state.pt`` loaded with
    ``weights_only=True``, or the metadata baseline's JSON + ``.npz``): nothing is unpickled.

    Attributes:
        classes: class names in output order.
        needs_image: the model reads the photo.
        fields: the catalogue fields it reads (``[]`` for an image network).
        inputs: ``image`` | ``image+metadata`` | ``metadata``.
        zeroshot: the metadata model's zero-shot head (``zeroshot.head.ZeroShotHead``), or None: it adds the
            classes without training images, scored from the product name.
    """

    def __init__(
        self,
        classes: list[str],
        height: int = 0,
        width: int = 0,
        net: nn.Module | None = None,
        vocab=None,
        logreg=None,
        zeroshot=None,
    ):
        self.classes, self.height, self.width = list(classes), height, width
        self.net, self.vocab, self.logreg, self.zeroshot = net, vocab, logreg, zeroshot
        self.needs_image = net is not None
        reads_text = (vocab is not None and vocab.text is not None) or zeroshot is not None
        text = [_text_field()] if reads_text else []
        self.fields = ([] if vocab is None else vocab.fields) + text
        self.inputs = "metadata" if not self.needs_image else ("image+metadata" if self.fields else "image")

    @classmethod
    def from_folder(cls, folder: str | Path, label: str | None = None) -> ProductModel:
        """From a folder holding a run's ``checkpoint/`` files (a network's or the metadata baseline's).

        Anything unreadable (a pickled object where a state dict belongs, missing keys) is a ConfigError
        naming ``label`` (default: the folder).
        """
        import json

        folder = Path(folder)
        try:
            if (folder / "model.json").is_file():
                meta = json.loads((folder / "model.json").read_text())
                state = torch.load(folder / "model_state.pt", map_location="cpu", weights_only=True)
                net = model_from_checkpoint(meta, state).eval()
                vocab = net.vocab if reads_metadata(net) else None
                return cls(meta["classes"], meta["height"], meta["width"], net=net, vocab=vocab)

            clf, vocab, classes = baseline_from_folder(folder)
            head = folder / HEAD_FILE
            zeroshot = ZeroShotHead.from_dict(json.loads(head.read_text())) if head.is_file() else None
            return cls(classes, vocab=vocab, logreg=clf, zeroshot=zeroshot)
        except Exception as e:
            raise ConfigError(f"{label or folder} has no usable model checkpoint: {load_error(e)}") from None

    @classmethod
    def from_run(cls, run_id: str) -> ProductModel:
        """From a run's logged checkpoint (only the files the model needs, not the training state)."""
        import tempfile

        kinds = (("checkpoint/model.json", "checkpoint/model_state.pt"), (BASELINE_STATE, BASELINE_WEIGHTS))
        with tempfile.TemporaryDirectory() as d:
            for files in kinds:
                try:
                    folder = [download_artifact(run_id, f, d) for f in files][0].parent
                except Exception:
                    continue
                try:  # a zero-shot run's head, beside the metadata model
                    download_artifact(run_id, f"checkpoint/{HEAD_FILE}", d)
                except Exception:
                    pass
                return cls.from_folder(folder, f"run {run_id}")
        raise ConfigError(f"run {run_id} has no logged model ({', '.join(kinds[0])} or {', '.join(kinds[1])})")

    def check_columns(self, frame: pd.DataFrame) -> None:
        """A one-line ProductInputError when the input lacks a column this model reads, or a row lacks its value."""
        wanted = ([IMAGE_COLUMN] if self.needs_image else []) + list(self.fields)
        reads = f"this {self.inputs} model reads {', '.join(wanted)}"
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ProductInputError(f"missing fields: {', '.join(missing)} ({reads})")
        if self.needs_image:  # an empty photo cannot be scored; an empty catalogue field is just unknown
            empty = [
                i + 1 for i, v in enumerate(frame[IMAGE_COLUMN]) if v is None or (isinstance(v, float) and np.isnan(v))
            ]
            if empty:
                raise ProductInputError(f"row {empty[0]}: missing fields: {IMAGE_COLUMN} ({reads})")

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, C) probabilities for a frame with an ``image`` column (bytes, or base64 text) and the fields.

        Raises:
            ProductInputError: one line naming the first bad row and why (``row 3: not a readable JPEG/PNG
                image``, ``missing fields: productDisplayName (...)``).
        """
        rows = frame.reset_index(drop=True)
        self.check_columns(rows)
        if self.net is None:
            scores = class_scores(self.logreg, features(self.vocab, rows), len(self.classes))
            if self.zeroshot is not None:
                scores = self.zeroshot.scores(scores, rows[_text_field()])
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        images = decode_rows(rows[IMAGE_COLUMN], self.height, self.width)
        batch = self.vocab.encode(rows) if self.fields else None
        x = to_float(torch.from_numpy(images))
        with torch.no_grad():
            logits = self.net(x, batch)["logits"]
        return torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The probabilities as a frame, one column per class (what the MLflow pyfunc returns)."""
        return pd.DataFrame(self.predict_proba(frame), columns=self.classes)


def _text_field() -> str:
    return TEXT_FIELD


def _decode(value, height: int, width: int) -> np.ndarray:
    """One image given as bytes, base64 text or a file path -> H x W x 3 uint8."""
    import base64
    import io

    if isinstance(value, str):
        p = Path(value)
        value = p.read_bytes() if len(value) < 4096 and p.is_file() else base64.b64decode(value)
    if not isinstance(value, (bytes, bytearray)):
        raise ProductInputError(
            f"the {IMAGE_COLUMN} column holds the image file's bytes (base64 in JSON), not {type(value).__name__}"
        )
    return decode_image(io.BytesIO(bytes(value)), height, width)


def read_meta(path: str | Path) -> pd.DataFrame:
    """Catalogue fields of products from a CSV (styles.csv or a few columns of it) or a JSON object / list."""
    import json

    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            frame = pd.DataFrame([raw] if isinstance(raw, dict) else raw)
        else:
            frame = pd.read_csv(path, dtype=str, on_bad_lines="skip")  # "NA" is missing, as in the catalogue
    except (OSError, ValueError) as e:
        raise ConfigError(f"--meta {path}: cannot read it ({e}); give a CSV like styles.csv or a JSON object") from None
    return frame


def product_frame(images: list[str | Path], meta: pd.DataFrame | None) -> pd.DataFrame:
    """The predictor's input: one row per image (matched to ``meta`` by id = file stem when it has ``id``,
    else in order), or one row per ``meta`` row when there are no images."""
    if meta is None:
        return pd.DataFrame({IMAGE_COLUMN: [str(p) for p in images]})
    if not images:
        return meta.reset_index(drop=True)
    if "id" in meta.columns:
        by_id = meta.assign(id=meta["id"].astype(str).str.strip()).drop_duplicates("id").set_index("id")
        missing = [Path(p).name for p in images if Path(p).stem not in by_id.index]
        if missing:
            raise ConfigError(
                f"--meta has no row with the id of {', '.join(missing[:5])} (an image's id is its file "
                "name without extension, as in styles.csv)"
            )
        rows = by_id.loc[[Path(p).stem for p in images]].reset_index()
    elif len(meta) == len(images):
        rows = meta.reset_index(drop=True)
    else:
        raise ConfigError(
            f"--meta has {len(meta)} rows and no id column for {len(images)} images: add an id column "
            "(the image file names without extension) or give one row per image, in order"
        )
    return rows.assign(**{IMAGE_COLUMN: [str(p) for p in images]})


def predict_products(
    images: list[str | Path], model_uri: str, meta: str | Path | None = None, k: int = 5
) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) per product, from any logged or registered model of this project.

    Args:
        images: image files (none for a metadata-only model with ``meta``).
        model_uri: a run id, runs:/, models:/ or latest.
        meta: a CSV (styles.csv rows, matched by id) or JSON of the products' fields; a model that reads
            metadata refuses to run without it.
    """
    quiet_mlflow()  # no progress bar per downloaded file
    model = ProductModel.from_run(resolve_model_uri(model_uri))
    if model.fields and meta is None:
        raise ConfigError(
            f"{model_uri} is an {model.inputs} model: it reads {', '.join(model.fields)}; give them "
            "with --meta styles.csv (rows by id) or --meta product.json"
        )
    if model.needs_image and not images:
        raise ConfigError(f"{model_uri} reads the product photo: give IMAGE files")
    frame = product_frame(list(images), read_meta(meta) if meta is not None else None)
    try:
        probs = model.predict_proba(frame)
    except ProductInputError as e:  # "row 3: ..." names the file when the rows are files
        msg = str(e)
        if images and msg.startswith("row "):
            n, rest = msg[len("row ") :].split(":", 1)
            msg = f"{images[int(n) - 1]}:{rest}"
        raise ConfigError(msg) from None
    out = []
    for row in probs:
        idx = np.argsort(-row)[:k]
        out.append([(model.classes[i], float(row[i])) for i in idx])
    return out


# ---------------------------------------------------------------- logging and registering

SERVING_REQUIREMENTS = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pillow",
    "pyyaml",
    "pyarrow",
    "plotly",
    "mlflow",
)


def _requirements() -> list[str]:
    """Pinned versions of what the pyfunc imports (the installed ones)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in SERVING_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _white_jpeg(height: int, width: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (max(1, width), max(1, height)), (255, 255, 255)).save(buf, format="JPEG")
    return buf.getvalue()


def example_frame(model: ProductModel) -> pd.DataFrame:
    """One product as the model's input: a white photo and a value of each field seen in training."""
    row: dict = {}
    if model.needs_image:
        row[IMAGE_COLUMN] = _white_jpeg(model.height, model.width)
    for v in model.vocab.categorical if model.vocab is not None else ():
        row[v.field] = v.values[0] if v.values else ""
    if model.vocab is not None and model.vocab.text is not None:
        row[_text_field()] = "Men Blue Shirt"
    return pd.DataFrame([row])


def log_product_model(folder: str | Path, register: str | None, val_score: float):
    """Log a run's checkpoint folder as the MLflow pyfunc ``model`` (image and/or fields in) and register it.

    Args:
        folder: the run's ``checkpoint/`` files (see :meth:`ProductModel.from_folder`).
        register: registered model name, or None.
        val_score: validation class-mean top-1 (the @best alias follows it).
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    quiet_mlflow()
    model = ProductModel.from_folder(folder)
    # Optional in the signature: MLflow's own check of a missing column answers with the whole request frame;
    # ProductModel.check_columns answers "missing fields: ..." in one line instead.
    # Schema takes a list[ColSpec | TensorSpec], and list is invariant: the annotation lets a list of ColSpec pass.
    cols: list[ColSpec | TensorSpec] = [ColSpec("binary", IMAGE_COLUMN, required=False)] if model.needs_image else []
    cols += [ColSpec("string", f, required=False) for f in model.fields]
    signature = ModelSignature(Schema(cols), Schema([ColSpec("double", c) for c in model.classes]))
    here = Path(__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(here / "pyfunc_model.py"),
        artifacts={"checkpoint": str(folder)},
        code_paths=[str(here.parent)],
        signature=signature,
        input_example=example_frame(model),
        pip_requirements=_requirements(),
        registered_model_name=register,
    )
    mlflow.log_dict({"classes": model.classes, "inputs": model.inputs, "fields": model.fields}, "model_classes.json")
    if register and info.registered_model_version is not None:
        set_best_alias(register, str(info.registered_model_version), val_score)
    return info


def set_best_alias(name: str, version: str, val_score: float) -> None:
    """Tag a registered version with its validation score; move ``@best`` to it when it beats the current best."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, "val_top1_mean", f"{val_score:.6f}")
    best = None
    try:
        best = client.get_model_version_by_alias(name, "best")
    except Exception:
        pass
    best_score = float(best.tags.get("val_top1_mean", "-1")) if best is not None else -1.0
    if val_score > best_score:
        client.set_registered_model_alias(name, "best", version)
        logger.info(f"registered {name} version {version} as models:/{name}@best (val top-1 {val_score:.4f})")
