"""MLflow "model from code" for a fine-tuned SSAST classifier (logged by jobs/kit/tracking.py).

``predict`` takes either

* audio: a DataFrame with a ``path`` column (local paths or URIs, any format the
  featurizer reads) and/or an ``audio`` column (base64-encoded file bytes, e.g. a WAV in a
  JSON request). Each clip is featurized with the model's own feature settings and
  statistics and predicted as ``jobs/predict.py`` does (windows averaged over a long
  clip); the answer has one row per input row: ``path``, ``top_labels``, ``top_scores``
  (the top 5), and ``reason`` / ``detail`` for a clip that could not be read (its labels
  null; the other rows are unaffected);
* spectrograms (B, T, F) already normalised with the model's statistics: logits (B, K)
  in the order of ``task["class_names"]``.

Load with ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` or serve with
``mlflow models serve -m models:/<name>/<version> --env-manager local``.
"""

import base64
import binascii

import mlflow
import numpy as np


class SSASTClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from jobs.inference.config import PredictConfig
        from jobs.inference.predictor import Predictor
        from jobs.kit.models import read_model
        from pipeline.batches import ModelInput
        from pipeline.normalization import choose_normalization

        found = read_model(context.artifacts["checkpoint"])
        self.model = found.model.eval()
        cfg = PredictConfig()
        T = found.model.cfg.input_tdim
        norm = choose_normalization(cfg.normalization, model=found.normalization, dataset=None)
        self.predictor = Predictor(
            found.payload,
            "labels",
            ModelInput(T, norm),
            top_k=cfg.top_k,
            source="audio",
            features=found.features,
            hop=cfg.hop(T),
            frame_shift_s=found.features.frame_shift_ms / 1000,
        )

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame) and {"path", "audio"} & set(model_input):
            return self._predict_audio(model_input)
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).numpy()

    def _predict_audio(self, frame):
        import pyarrow as pa

        n = len(frame)
        given = frame["path"].tolist() if "path" in frame else [None] * n
        encoded = frame["audio"].tolist() if "audio" in frame else [None] * n
        paths, audio = [], []
        for i, (path, data) in enumerate(zip(given, encoded, strict=True)):
            path = path if isinstance(path, str) and path else None
            paths.append(path or f"request[{i}]")
            audio.append(_bytes(data) if isinstance(data, str) else None)
            if path is None and audio[-1] is None:
                audio[-1] = b""  # neither: an empty_file error row, not a fetch of a name
        # path = the row's index (featurization keeps it on feature and error rows alike),
        # uri = what is read: the answer is put back in the order of the request.
        keys = [str(i) for i in range(n)]
        rows = pa.table({"path": keys, "uri": paths, "audio": pa.array(audio, pa.binary())})
        out = self.predictor(rows).to_pandas()
        out["row"] = out["path"].astype(int)
        out = out.sort_values("row", kind="stable").reset_index(drop=True)
        out["path"] = [paths[i] for i in out["row"]]
        for column in ("reason", "detail"):  # null (not NaN) on good rows, in JSON too
            if column in out:
                out[column] = out[column].astype(object).where(out[column].notna(), None)
        keep = ["path", "top_labels", "top_scores", "reason", "detail"]
        return out[[c for c in keep if c in out]]


def _bytes(text: str) -> bytes:
    """base64 text -> bytes; text that is not base64 gives bytes no decoder reads (its row
    is an ``unreadable`` error)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode("utf-8", "replace")


mlflow.models.set_model(SSASTClassifierModel())
