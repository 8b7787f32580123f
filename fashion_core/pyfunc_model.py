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
from mlflow.pyfunc import PythonModel

CHECKPOINT = "checkpoint"  # the artifact key of the run's checkpoint folder


class ProductPyfunc(PythonModel):
    """``serving.ProductModel`` behind the pyfunc interface."""

    def load_context(self, context) -> None:
        from fashion_core.serving import ProductModel

        self.model = ProductModel.from_folder(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.model.predict_frame(frame)


mlflow.models.set_model(ProductPyfunc())
