"""The MLflow pyfunc of fused networks and the metadata-only baseline, logged as a model from code.

MLflow stores this file with the model and runs it on load (``mlflow.models.set_model``), so no
Python object is pickled; the weights are the run's ``checkpoint/`` files, read by
``serving.ProductModel`` (state dict with ``weights_only=True``, or JSON + ``.npz``). Input: a frame
with an ``image`` column (the image file's bytes; base64 text in a JSON request) and the catalogue
fields the model reads; output: one probability column per class.

    mlflow models serve -m models:/fashion-finetune-fused@best --env-manager local --port 5001
"""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from fashion_core.serving.predict import ProductInputError, ProductModel

CHECKPOINT = "checkpoint"  # the artifact key of the run's checkpoint folder


class RequestError(MlflowException):
    """A bad request as one line: HTTP 400 with ``{"error_code": "INVALID_PARAMETER_VALUE", "message": ...}``.

    MLflow's scoring server answers any other exception with a generic message and the stack trace, and
    rewrites an MlflowException's message to ``Failed to predict data '<the whole input frame>'. Error: ...``
    (image bytes included); this message keeps its first value, so the answer says only which row and why.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


class ProductPyfunc(PythonModel):
    """``serving.ProductModel`` behind the pyfunc interface."""

    def load_context(self, context) -> None:
        self.model = ProductModel.from_folder(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            return self.model.predict_frame(frame)
        except ProductInputError as e:
            raise RequestError(str(e)) from None


mlflow.models.set_model(ProductPyfunc())
