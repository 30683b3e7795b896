"""Pure logic of the jobs, without Ray: data-pass and step arithmetic, Tune capacity,
the normalisation rule, model references and their feature contract, task validation."""

import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.evaluation.config import BenchmarkConfig
from jobs.evaluation.driver import run_benchmark
from jobs.finetuning.config import FinetuneConfig
from jobs.finetuning.driver import run_finetuning
from jobs.finetuning.task import read_task
from jobs.finetuning.worker import steps_per_epoch
from jobs.inference.config import PredictConfig
from jobs.inference.driver import run_prediction
from jobs.kit.config import load_config, with_length
from jobs.kit.datasets import auto_length
from jobs.kit.models import check_features, contract, read_model
from jobs.pretraining.config import PretrainConfig
from jobs.pretraining.driver import passes_needed, run_pretraining
from jobs.tuning.config import TuneJobConfig
from jobs.tuning.driver import concurrent_trials, run_tuning, trial_lengths
from pipeline.features import FeatureConfig
from pipeline.normalization import PRESETS, Normalization, choose_normalization
from pipeline.schema import SCHEMA_VERSION, load_dataset_info
from pipeline.storage import OutputBusyError, OutputLock
from ssast import SSAST, SSASTClassifier, SSASTConfig, save_checkpoint


# ------------------------------------------------------------ arithmetic
def test_passes_cover_every_sample_of_the_run_plus_one():
    cfg = load_config(
        PretrainConfig,
        None,
        ["train.max_steps=10", "train.batch_size=4", "scaling.num_workers=2", "optim.accumulate=3"],
    )
    assert passes_needed(cfg, None) == 1  # streamed: one pass, never counted
    assert passes_needed(cfg, 240) == 2  # 10 x 4 x 3 x 2 = 240 samples: 1 pass + 1 spare
    assert passes_needed(cfg, 100) == 4  # ceil(240 / 100) + 1
    assert passes_needed(cfg, 1) == 241
    big = load_config(PretrainConfig, None, ["train.max_steps=100000"])
    assert passes_needed(big, 1) == 1000  # capped


def test_steps_per_epoch_counts_the_short_last_batch():
    assert steps_per_epoch(100, world=1, batch_size=10, accumulate=1) == 10
    assert steps_per_epoch(101, world=1, batch_size=10, accumulate=1) == 11
    assert steps_per_epoch(100, world=2, batch_size=8, accumulate=2) == 4  # 32 per step


def test_workers_fill_the_local_machine_by_default_and_one_cpu_on_a_cluster(monkeypatch, caplog):
    import jobs.kit.cluster as cluster

    def cpus(local, *overrides):
        monkeypatch.setattr(cluster, "_LOCAL_CPUS", [local] if local else [])
        return load_config(PretrainConfig, None, list(overrides)).scaling.resolved()

    with caplog.at_level(logging.INFO, logger="scaling"):
        assert cpus(None).cpus_per_worker == 1.0  # joined a cluster
        assert cpus(2).cpus_per_worker == 1.0  # 2 CPUs: one kept for data loading
        assert cpus(8).cpus_per_worker == 7.0
    assert cpus(8, "scaling.num_workers=2").cpus_per_worker == 3.0
    assert cpus(8, "scaling.cpus_per_worker=0.5").cpus_per_worker == 0.5  # as configured
    assert "scaling.cpus_per_worker=7 (a local Ray of 8 CPUs" in caplog.text


def test_tune_capacity_counts_trial_drivers_and_workers():
    cfg = load_config(TuneJobConfig, None, ["scaling.cpus_per_worker=0.5"])
    assert concurrent_trials(cfg, {"CPU": 4.0}) == 6  # 4 / (0.1 + 0.5)
    two = load_config(TuneJobConfig, None, ["scaling.num_workers=2"])
    assert concurrent_trials(two, {"CPU": 4.0}) == 1  # 4 / 2.1
    gpu = load_config(TuneJobConfig, None, ["scaling.use_gpu=true"])
    assert concurrent_trials(gpu, {"CPU": 16.0, "GPU": 3.0}) == 3
    fixed = load_config(TuneJobConfig, None, ["tune.max_concurrent_trials=2"])
    assert concurrent_trials(fixed, {"CPU": 1.0}) == 2
    with pytest.raises(ValueError, match="a trial needs 2.1 CPUs"):
        concurrent_trials(two, {"CPU": 2.0})
    space = load_config(
        TuneJobConfig, None, ["tune.search_space={model.input_tdim: {choice: [256, 128, 256]}}"]
    )
    assert trial_lengths(space) == [128, 256]


# --------------------------------------------------------- normalisation
def test_one_normalisation_rule_with_warned_fallbacks(caplog):
    model, data = Normalization(-5.0, 3.0), Normalization(-6.0, 4.0)
    assert choose_normalization("model", model=model, dataset=data) is model
    assert choose_normalization("dataset", model=model, dataset=data) is data
    assert choose_normalization("esc50", model=model, dataset=data).mean == PRESETS["esc50"][0]
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert choose_normalization("model", dataset=data) is data
        fallback = choose_normalization("dataset")
    assert (fallback.mean, fallback.std) == PRESETS["audioset"]
    assert len(caplog.records) == 2 and "audioset" in caplog.records[1].message
    with pytest.raises(ValueError, match="normalization must be one of"):
        choose_normalization("bogus")
    with pytest.raises(ValueError, match="finite"):
        Normalization(float("nan"), 1.0)
    with pytest.raises(ValueError, match="data.normalization must be one of"):
        load_config(FinetuneConfig, None, ["data.normalization=bogus"])


# ----------------------------------------------------- model references
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SSAST(SSASTConfig(size="tiny", input_fdim=64, input_tdim=64, num_masked=4))


def test_model_references_carry_their_feature_contract(tiny, tmp_path):
    mel64 = FeatureConfig(num_mel_bins=64)
    (tmp_path / "run" / "final").mkdir(parents=True)
    save_checkpoint(
        tiny,
        tmp_path / "run" / "final" / "ssast.pt",
        extra=contract(mel64, Normalization(-5.0, 3.0)),
    )
    for ref in (tmp_path / "run" / "final" / "ssast.pt", tmp_path / "run"):  # file, directory
        found = read_model(str(ref))
        assert found.kind == "pretrain" and found.features == mel64
        assert (found.normalization.mean, found.normalization.std) == (-5.0, 3.0)
        assert found.labels is None
    check_features(found, mel64, "data")
    with pytest.raises(ValueError, match=r"num_mel_bins: data 128 vs model 64") as err:
        check_features(found, FeatureConfig(), "data/features")
    assert "data/features" in str(err.value) and "sample_rate_hz" not in str(err.value)

    # A released-layout file implies the SSAST defaults and carries no statistics.
    torch.save(tiny.to_original_state_dict(), tmp_path / "released.pth")
    released = read_model(str(tmp_path / "released.pth"))
    assert released.features == FeatureConfig() and released.normalization is None
    assert released.payload["format"] == "ssast-ray"  # converted once, for the actors

    # A fine-tuned model.pt of an earlier version kept its statistics inside its task.
    clf = SSASTClassifier(tiny.cfg.replace(num_masked=1), 3)
    task = {"class_names": ["a", "b", "c"], "normalization": [-4.0, 2.0]}
    save_checkpoint(clf, tmp_path / "model.pt", extra={"task": task})
    old = read_model(str(tmp_path / "model.pt"))
    assert old.kind == "classifier" and old.labels.class_names == ("a", "b", "c")
    assert (old.normalization.mean, old.normalization.std) == (-4.0, 2.0)


def test_bad_model_references_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file or directory"):
        read_model(str(tmp_path / "nope.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="a directory without final/ssast.pt"):
        read_model(str(tmp_path / "empty"))
    (tmp_path / "zero.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="zero.pt is empty"):
        read_model(str(tmp_path / "zero.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        read_model(str(tmp_path / "list.pt"))


# ------------------------------------------------------------- the task
def write_dataset(root, labels, splits, mean=-5.0, std=3.0, frames=None, features=None):
    """A featurized dataset directory by hand: dataset.json and one shard (``frames``:
    each row's num_frames, default 1; the fbank column is not filled to match)."""
    (root / "features").mkdir(parents=True)
    n = len(labels)
    pq.write_table(
        pa.table(
            {
                "label": labels,
                "split": splits,
                "fbank": [[0.0] * 128] * n,
                "num_frames": frames or [1] * n,
                "num_mel_bins": [128] * n,
            }
        ),
        root / "features" / "part-0.parquet",
    )
    (root / "features" / "part-1.parquet.tmp-1234").write_bytes(b"leftover of a killed write")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "feature_config": (features or FeatureConfig()).to_dict(),
                "num_rows": n,
                "num_errors": 0,
                "hours": 0.0,
                "mean": mean,
                "std": std,
            }
        )
    )
    return load_dataset_info(str(root))


def test_read_task_counts_splits_names_classes_and_refuses_bad_data(tmp_path):
    labels = ["dog", "cat", "dog", "bird", "cat", "dog"]
    splits = ["train", "train", "train", "valid", "test", "test"]
    info = write_dataset(tmp_path / "ok", labels, splits)
    task = read_task(info, FinetuneConfig())
    assert task.labels.class_names == ("bird", "cat", "dog")
    assert task.rows == {"train": 3, "valid": 1, "test": 2} and task.train_rows == 3
    assert (task.loss, task.metric) == ("ce", "accuracy")
    assert (task.normalization.mean, task.normalization.std) == (-5.0, 3.0)
    assert task.normalization.fill == pytest.approx(5.0 / 6.0)
    np.testing.assert_array_equal(task.labels.encode(["cat", "dog"]), [[0, 1, 0], [0, 0, 1]])
    assert task.saved()["class_names"] == ["bird", "cat", "dog"]
    limited = read_task(
        info, load_config(FinetuneConfig, None, ["data.limit=1", "data.multilabel=true"])
    )
    assert limited.rows == {"train": 1, "valid": 1, "test": 1}
    assert (limited.loss, limited.metric) == ("bce", "mAP")

    with pytest.raises(ValueError, match="no rows with split == 'valid'"):
        read_task(write_dataset(tmp_path / "novalid", labels[:3], splits[:3]), FinetuneConfig())
    with pytest.raises(ValueError, match="a classifier needs at least 2"):
        read_task(write_dataset(tmp_path / "one", ["x"] * 2, ["train", "valid"]), FinetuneConfig())
    with pytest.raises(ValueError, match=r"no column 'kind' \(data.label_column\)"):
        read_task(info, load_config(FinetuneConfig, None, ["data.label_column=kind"]))
    with pytest.raises(ValueError, match="is not one of the model's 3 classes"):
        task.labels.encode(["cow"])
    # A null or empty label is never class 0: refused with the count (rows of other
    # splits, e.g. an unlabelled pool, do not count).
    holes = write_dataset(tmp_path / "holes", [*labels, None, ""], [*splits, "train", "test"])
    with pytest.raises(ValueError, match="2 of the 8 rows .* have no 'label' value"):
        read_task(holes, FinetuneConfig())
    pool = write_dataset(tmp_path / "pool", [*labels, None], [*splits, "pool"])
    assert read_task(pool, FinetuneConfig()).rows == task.rows
    with pytest.raises(ValueError, match="label is empty in a row"):
        task.labels.encode(["cat", None])


def test_auto_length_is_the_training_splits_95th_percentile_rounded_up_to_16(tmp_path, caplog):
    # Training clips of 10, 20, ..., 200 frames: the 95th percentile (linear) is 190.5,
    # rounded up to 192; the long valid / test clips are not measured.
    frames = [10 * k for k in range(1, 21)] + [5000, 5000]
    info = write_dataset(
        tmp_path / "ds", ["a", "b"] * 11, ["train"] * 20 + ["valid", "test"], frames=frames
    )
    with caplog.at_level("INFO", logger="datasets"):
        assert auto_length(info, ("split", "train")) == 192
    assert "model.input_tdim=auto: 192 frames" in caplog.text
    assert auto_length(info) == 4768  # every row: 95th percentile 4760
    # Cut into 2 s segments (198 frames): the merged last pieces (2.7 s) would give 272.
    pieces = [198] * 15 + [270] * 5
    cut = write_dataset(tmp_path / "cut", ["a"] * 20, ["pool"] * 20, frames=pieces)
    assert auto_length(cut) == 272
    cut = write_dataset(
        tmp_path / "cut2",
        ["a"] * 20,
        ["pool"] * 20,
        frames=pieces,
        features=FeatureConfig(segment_s=2.0),
    )
    assert auto_length(cut) == 208

    pre = load_config(PretrainConfig, None, ["model.input_tdim=auto", "model.mask_ratio=0.5"])
    assert with_length(pre, 192).model.ssast_config().num_patches == 8 * 12
    assert with_length(pre, 192).model.masked(128) == 48
    with pytest.raises(ValueError, match="must be resolved from the data first"):
        pre.model.ssast_config()
    with pytest.raises(ValueError, match="'auto' or a number of frames >= 16, got 'long'"):
        load_config(FinetuneConfig, None, ["model.input_tdim=long"])


def test_fine_tuning_rate_and_schedule_follow_the_init_unless_set():
    scratch = FinetuneConfig().with_init_defaults().optim
    assert (scratch.lr, scratch.schedule) == (1e-3, "cosine")
    ckpt = load_config(FinetuneConfig, None, ["init=enc.pt"]).with_init_defaults().optim
    assert (ckpt.lr, ckpt.schedule) == (1e-4, "multistep")
    mine = load_config(FinetuneConfig, None, ["optim.lr=3e-4"]).with_init_defaults().optim
    assert (mine.lr, mine.schedule) == (3e-4, "cosine")


def test_every_job_that_writes_an_output_refuses_one_being_written(tmp_path):
    """Pretraining, fine-tuning, the sweep, prediction and the benchmark take the same
    lock as featurization: a second job into a busy output fails before any work (no
    Ray, no data read: the inputs here do not even exist)."""
    missing = str(tmp_path / "nothing")
    jobs = {
        "pretrain": lambda out: run_pretraining(missing, out, PretrainConfig()),
        "finetune": lambda out: run_finetuning(missing, out, FinetuneConfig()),
        "tune": lambda out: run_tuning(missing, out, TuneJobConfig()),
        "predict": lambda out: run_prediction(missing, missing, out, PredictConfig()),
        "benchmark": lambda out: run_benchmark(["scratch"], missing, out, BenchmarkConfig()),
    }
    for name, job in jobs.items():
        out = str(tmp_path / name)
        with OutputLock(out):
            with pytest.raises(OutputBusyError, match="being written by another job"):
                job(out)
        with pytest.raises((ValueError, OSError)) as err:  # free: on to the missing input
            job(out)
        assert not isinstance(err.value, OutputBusyError), name
        assert not os.path.exists(f"{out}/_lock.json"), name  # released on the way out


def test_in_memory_pretraining_batches_split_each_pass_between_ranks():
    import numpy as np
    import pytest

    from jobs.kit.config import load_config
    from jobs.pretraining.config import PretrainConfig
    from jobs.pretraining.worker import _memory_batches

    clips = np.arange(11, dtype=np.float32).reshape(11, 1, 1)  # clip k holds the value k
    cfg = load_config(PretrainConfig, None, ["train.batch_size=2", "train.seed=3"])
    seen = []
    for rank in (0, 1):
        stream = _memory_batches(clips, cfg, rank, 2)
        # 5 clips per rank (11 // 2), so 2 whole batches a pass; then the next pass.
        seen.append([next(stream)["fbank"].flatten().tolist() for _ in range(4)])
    first = [v for r in seen for b in r[:2] for v in b]
    assert len(set(first)) == 8  # one pass: the ranks' batches are disjoint
    assert seen[0][:2] != seen[0][2:]  # each pass its own order
    again = _memory_batches(clips, cfg, 0, 2)
    assert [next(again)["fbank"].flatten().tolist() for _ in range(4)] == seen[0]  # seeded
    with pytest.raises(ValueError, match="fewer than train.batch_size=2"):
        next(_memory_batches(clips[:3], cfg, 0, 2))


def test_pictures_at_the_intervals_that_reach_a_multiple_of_image_every():
    from jobs.pretraining.worker import passed_multiple

    # log_every 10, image_every 100: the interval ending at step 100 (and 200), not 110.
    assert [s for s in range(10, 301, 10) if passed_multiple(s, 10, 100)] == [100, 200, 300]
    assert not passed_multiple(6, 6, 100)  # a 6-step run: its one interval reaches no 100
    assert passed_multiple(105, 7, 100)  # a resumed interval from step 98
    assert not passed_multiple(100, 10, 0)  # 0: never
