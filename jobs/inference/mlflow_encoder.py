"""MLflow "model from code" for a pretrained SSAST encoder (logged by jobs/tracking.py).

``predict`` takes spectrograms (B, T, F) already normalised as in training and returns
mean-pooled clip embeddings (B, D). Load with
``mlflow.pyfunc.load_model("models:/<name>/<version>")``.
"""

import mlflow
import numpy as np


class SSASTEncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from ssast import load_checkpoint

        self.model = load_checkpoint(context.artifacts["checkpoint"]).eval()

    def predict(self, context, model_input, params=None):
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model.encode(x).mean(dim=1).numpy()


mlflow.models.set_model(SSASTEncoderModel())
