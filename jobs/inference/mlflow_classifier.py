"""MLflow "model from code" for a fine-tuned SSAST classifier (logged by jobs/tracking.py).

``predict`` takes spectrograms (B, T, F) already normalised with the statistics saved in
the checkpoint's ``task`` and returns logits (B, K) in the order of
``task["class_names"]``. Load with ``mlflow.pyfunc.load_model("models:/<name>/<version>")``.
"""

import mlflow
import numpy as np


class SSASTClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from ssast import load_checkpoint

        self.model = load_checkpoint(context.artifacts["checkpoint"]).eval()

    def predict(self, context, model_input, params=None):
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).numpy()


mlflow.models.set_model(SSASTClassifierModel())
