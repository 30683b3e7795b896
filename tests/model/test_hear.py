"""The HEAR 2021 API (ssast.hear): shapes, timestamps, featurization equal to the pipeline's,
windowing of long clips, the checkpoints it reads, and the checks of hearvalidator."""

import pyarrow as pa
import pytest
import soundfile as sf
import torch

from jobs.kit.models import contract, read_model
from pipeline.batches import to_model_input
from pipeline.clips import featurize_table
from pipeline.features import FeatureConfig
from pipeline.normalization import Normalization, choose_normalization
from ssast import SSAST, SSASTClassifier, SSASTConfig, hear, load_checkpoint, save_checkpoint

RATE = 16000


@pytest.fixture(scope="module")
def model():
    """The random tiny model of load_model(""): 128 mel x 128-frame (1.28 s) windows."""
    return hear.load_model()


def noise(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(seconds * RATE), generator=g) * 2 - 1  # (n, L) in [-1, 1]


@pytest.fixture
def ours(tmp_path):
    """(checkpoint path, features, normalization): a pretrained model of ours on 64 mel bins
    with its own statistics, saved as the jobs save it."""
    torch.manual_seed(1)
    net = SSAST(SSASTConfig(size="tiny", input_fdim=64, input_tdim=128, num_masked=4))
    features, norm = FeatureConfig(num_mel_bins=64), Normalization(mean=-5.0, std=3.0)
    path = tmp_path / "ssast.pt"
    save_checkpoint(net, path, extra=contract(features, norm))
    return path, features, norm


def pipeline_embedding(clips: torch.Tensor, path, tmp_path) -> torch.Tensor:
    """The pipeline's clip embeddings: wav files -> featurize_table -> to_model_input ->
    mean of the patch tokens (jobs/inference/predictor.py, mode embeddings)."""
    found = read_model(str(path))
    uris = []
    for i, clip in enumerate(clips.numpy()):
        uris.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(uris[-1], clip, RATE, subtype="FLOAT")
    rows, errors = featurize_table(pa.table({"path": uris, "uri": uris}), found.features)
    assert errors.num_rows == 0
    norm = choose_normalization("model", model=found.normalization)
    x = to_model_input(rows, found.model.cfg.input_tdim, norm)  # (n, T, F) padded
    with torch.no_grad():
        return load_checkpoint(path).encode(torch.from_numpy(x)).mean(dim=1)


def test_the_model_has_the_documented_attributes(model):
    assert isinstance(model, torch.nn.Module)
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert type(getattr(model, name)) is int, name
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192
    assert model.window_hop_frames == 64  # half the 128-frame window


@pytest.mark.parametrize("seconds", [0.1, 1.0, 3.0])  # shorter than a patch, a window; longer
def test_shapes_and_timestamps(model, seconds):
    audio = noise(3, seconds)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    K = int(seconds * 1000 / hear.TIMESTAMP_HOP_MS) + 1  # 0 ms to the duration, both included
    assert emb.shape == (3, K, 192) and ts.shape == (3, K) and scene.shape == (3, 192)
    assert emb.dtype == ts.dtype == scene.dtype == torch.float32
    assert torch.isfinite(emb).all() and torch.isfinite(scene).all()
    step = torch.diff(ts)
    assert (step > 0).all() and (step <= 50).all()
    assert ts[0, 0] == 0 and ts[0, -1] <= seconds * 1000
    assert (ts == ts[:1]).all()  # the same for every sound


def test_scene_embedding_is_the_pipelines_featurization_and_encoder(ours, tmp_path):
    path, features, norm = ours
    model = hear.load_model(str(path))
    assert (model.features, model.normalization) == (features, norm)
    clips = noise(2, 1.0, seed=2) * torch.tensor([[0.5], [0.05]])  # 98 frames: one window
    want = pipeline_embedding(clips, path, tmp_path)
    torch.testing.assert_close(hear.get_scene_embeddings(clips, model), want, atol=1e-5, rtol=0)
    # The comparison sees featurization: other statistics give other embeddings.
    other = hear.get_scene_embeddings(clips, hear.load_model(str(path), normalization="esc50"))
    assert not torch.allclose(other, want, atol=1e-3)


def test_each_sound_is_embedded_alone(model):
    a, b = noise(1, 3.0, seed=3), 0.1 * noise(1, 3.0, seed=4)  # 298 frames: 4 windows
    emb, ts = hear.get_timestamp_embeddings(torch.cat([a, b]), model)
    scene = hear.get_scene_embeddings(torch.cat([a, b]), model)
    for i, one in enumerate((a, b)):
        emb_i, ts_i = hear.get_timestamp_embeddings(one, model)
        torch.testing.assert_close(emb[i : i + 1], emb_i, atol=1e-5, rtol=0)
        torch.testing.assert_close(ts[i : i + 1], ts_i)
        torch.testing.assert_close(
            scene[i : i + 1], hear.get_scene_embeddings(one, model), atol=1e-5, rtol=0
        )
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_windows_reach_the_end_of_a_long_clip_and_stay_local(model):
    """A tone at 2.5 s (window 2 and 3 of four) changes the embeddings there and the scene,
    not the timestamps whose columns only windows 0 and 1 see (frames < 128, <= 1.2 s)."""
    quiet = 0.01 * noise(1, 3.0, seed=5)
    loud = quiet.clone()
    t = torch.arange(1600) / RATE  # 0.1 s of 1 kHz: whole periods, no change of the DC
    loud[0, 40000:41600] += 0.5 * torch.sin(2 * torch.pi * 1000 * t)
    (emb_q, ts), (emb_l, _) = (hear.get_timestamp_embeddings(x, model) for x in (quiet, loud))
    early, tone = ts[0] <= 1200, (ts[0] - 2550).abs() <= 50
    # Not bit-equal: the clip's DC moves by rounding, which can flip a float16 fbank value.
    torch.testing.assert_close(emb_q[:, early], emb_l[:, early], atol=1e-4, rtol=0)
    assert (emb_q[:, tone] - emb_l[:, tone]).abs().amax() > 1e-2
    scenes = [hear.get_scene_embeddings(x, model) for x in (quiet, loud)]
    assert (scenes[0] - scenes[1]).abs().amax() > 1e-3


def test_checkpoints_read_as_the_jobs_read_them(ours, tmp_path):
    path, features, norm = ours
    net = load_checkpoint(path)
    overlapping = net.adapted(patch_stride=(10, 10))  # a fine-tuning geometry, 6 x 12 patches
    files = {"pretrain": path}
    for name, encoder in (("classifier", net), ("overlapping", overlapping)):
        clf = SSASTClassifier.from_pretrained(encoder, num_classes=3)
        files[name] = tmp_path / f"{name}.pt"
        save_checkpoint(clf, files[name], extra=contract(features, norm))
    released = SSAST(SSASTConfig(size="tiny", input_tdim=128, num_masked=4))
    files["released"] = tmp_path / "released.pth"
    torch.save(released.to_original_state_dict(), files["released"])
    models = {name: hear.load_model(str(file)) for name, file in files.items()}
    for name, file in files.items():
        found = read_model(str(file))
        assert models[name].features == found.features, name
        want = choose_normalization("model", model=found.normalization)
        assert models[name].normalization == want, name
    assert models["released"].normalization == Normalization.preset("audioset")
    audio = noise(1, 2.0, seed=6)
    scenes = {name: hear.get_scene_embeddings(audio, m) for name, m in models.items()}
    torch.testing.assert_close(scenes["classifier"], scenes["pretrain"])  # its encoder
    emb, ts = hear.get_timestamp_embeddings(audio, models["overlapping"])  # 100 ms columns
    assert emb.shape == (1, 51, 192) and torch.isfinite(emb).all()
    assert (torch.diff(ts) == hear.TIMESTAMP_HOP_MS).all()


def test_bad_input_is_refused(model, ours, tmp_path):
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(ValueError, match="dataset"):
        hear.load_model(normalization="dataset")
    with pytest.raises(ValueError, match="does not exist"):
        hear.load_model(str(tmp_path / "absent.pt"))
    net = SSAST(SSASTConfig(size="tiny", input_tdim=128, num_masked=4))  # 128 mel bins
    save_checkpoint(
        net,
        tmp_path / "bad.pt",
        extra=contract(FeatureConfig(num_mel_bins=64), Normalization(0.0, 1.0)),
    )
    with pytest.raises(ValueError, match="num_mel_bins=64"):
        hear.load_model(str(tmp_path / "bad.pt"))


def test_the_checks_of_hearvalidator(model):
    """hearvalidator 2021.0.2 (validate.py, torch path), which needs tensorflow to install:
    16 x 2 s and 8 x 3.74 s of white noise in [-1, 1], float32, shapes, regular timestamps."""
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    audio = noise(16, 2.0, seed=7)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape[0] == 16
    assert emb.shape[:2] == ts.shape and emb.shape[2] == model.timestamp_embedding_size
    step = torch.diff(ts)
    mean = step.float().mean()
    assert mean <= 50.0 and (step - mean).abs().max() < 1e-3
    scene = hear.get_scene_embeddings(noise(8, 3.74, seed=8), model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)
