"""The linear probe during pretraining: while Ray Train runs, the driver watches the run's
checkpoints and probes each due one on a labelled dataset (frozen clip embeddings, a
logistic regression; jobs/evaluation/probes.py), logging ``probe/<task>/accuracy`` (test
split, held-out conditions) and ``probe/<task>/valid_accuracy`` at the checkpoint's step.

It runs in a driver thread, beside the workers rather than inside their loop, so the
workers never wait for it; a checkpoint deleted before its turn is skipped.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import fsspec
import torch

from jobs.evaluation.probes import LabelledSet
from jobs.evaluation.run import embed
from jobs.kit.tracking import Tracker
from pipeline.batches import ModelInput, auto_target_frames
from pipeline.features import FeatureConfig
from pipeline.normalization import Normalization
from pipeline.schema import feature_diff, load_dataset_info

logger = logging.getLogger("pretrain")
STEP_DIR = re.compile(r"step_(\d{8})$")


class CheckpointProbe:
    """Probe the due checkpoints of ``storage/name`` in a background thread."""

    def __init__(
        self,
        data: str,
        task: str | None,
        every_steps: int,
        storage: str,
        name: str,
        features: FeatureConfig,
        norm: Normalization,
        tracker: Tracker,
    ) -> None:
        info = load_dataset_info(data)
        if not info.feature_config.same_frames(features):
            raise ValueError(
                f"eval.data {data} was featurized with other settings than the "
                f"pretraining data ({feature_diff(info.feature_config, features)})"
            )
        self.data = LabelledSet.read(data)
        frames = self.data.rows.column("num_frames").to_numpy()
        self.spec = ModelInput(auto_target_frames(frames), norm)
        self.task = task or Path(data.rstrip("/")).name
        self.every, self.tracker = every_steps, tracker
        self.root = f"{storage}/{name}"
        self.done = set(self._steps())  # a resumed run's earlier checkpoints were probed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> CheckpointProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._probe_due(final=True)  # what the last interval left

    def probe(self, state: dict) -> dict[str, float]:
        """Probe metrics of one checkpoint's encoder."""
        from ssast import load_checkpoint

        model = load_checkpoint(state).adapted(input_tdim=self.spec.target_frames).eval()
        fitted = self.data.fit(embed(model, self.data.rows, self.spec, 32)[-1])
        return {
            f"probe/{self.task}/accuracy": fitted["test/accuracy"],
            f"probe/{self.task}/valid_accuracy": fitted["valid/accuracy"],
        }

    def _watch(self) -> None:
        while not self.stop.wait(2.0):
            self._probe_due()

    def _steps(self) -> dict[int, str]:
        fs, root = fsspec.core.url_to_fs(self.root)
        found = {}
        for path in fs.glob(f"{root}/step_*"):
            m = STEP_DIR.search(path.rstrip("/"))
            if m and fs.exists(f"{path}/state.pt"):
                found[int(m.group(1))] = path
        return found

    def _probe_due(self, final: bool = False) -> None:
        """Probe every due checkpoint not probed yet. One still being written (Ray Train
        copies it into storage) fails to load and is tried again on the next pass; at the
        end (``final``) every checkpoint is complete."""
        fs, _ = fsspec.core.url_to_fs(self.root)
        for step, path in sorted(self._steps().items()):
            if step in self.done or step % self.every:
                continue
            start = time.perf_counter()
            try:
                with fs.open(f"{path}/state.pt", "rb") as f:
                    state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - partial file, or deleted meanwhile
                if final or not fs.exists(f"{path}/state.pt"):
                    logger.warning("probe: skipping the checkpoint of step %d (%s)", step, exc)
                    self.done.add(step)
                continue
            self.done.add(step)
            metrics = self.probe(state)
            metrics["perf/probe_s"] = time.perf_counter() - start
            self.tracker.log(metrics, step)
            logger.info(
                "probe at step %d: %s accuracy %.3f",
                step,
                self.task,
                metrics[f"probe/{self.task}/accuracy"],
            )
