"""The vggish stage: preprocessing, network and post-processing against the torchvggish reference
(random weights, nothing downloaded), then the stage end to end."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import facekit
import mediagen
from facekit import stages, zoo
from facekit.audio import vggish as V
from facekit.media import read_audio

torch = pytest.importorskip("torch")
torchvggish = pytest.importorskip("torchvggish")  # installs no weights; nothing below downloads
from torchvggish import mel_features, vggish_input  # noqa: E402
from torchvggish.torchvggish import VGG, Postprocessor, make_layers  # noqa: E402

PREPROC_ATOL = 1e-6  # float32 examples (|values| <= ~15, float32 ulp ~1e-6); measured: bit-identical
LOGMEL64_ATOL = 1e-9  # float64 log-mel (our mel matrix is vectorised; measured ~6e-13)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any download attempt (torch.hub or urllib) fails the test."""
    import urllib.request

    def refuse(*a, **k):
        raise AssertionError(f"download attempted: {a[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    # each test resolves its models afresh (its own FACEKIT_HOME); frees the cached 290 MB networks
    from facekit import engine

    monkeypatch.setattr(engine, "_PIPELINES", {})


@pytest.fixture(scope="module")
def ref_net():
    """torchvggish's network with random weights (no final-ReLU change), eval mode."""
    torch.manual_seed(0)
    net = VGG(make_layers(), postprocess=False).eval()
    # default init gives tiny activations after 9 layers; scale so the embedding is O(1)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    return net


@pytest.fixture(scope="module")
def weights_file(ref_net, tmp_path_factory):
    """The random weights saved as torchvggish's state dict (the layout of vggish-10086976.pth)."""
    p = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(ref_net.state_dict(), p)
    return p


@pytest.fixture(scope="module")
def pca_file(tmp_path_factory):
    rng = np.random.default_rng(1)
    p = tmp_path_factory.mktemp("pca") / "pca-random.pth"
    # numpy arrays, like the released torchvggish file (converted from the TF .npz)
    torch.save({"pca_eigen_vectors": rng.normal(0, 0.3, (128, 128)), "pca_means": rng.normal(0, 0.5, (128,))}, p)
    return p


def _speech(shared_data):
    return read_audio(shared_data / "speech" / "jfk.flac")[0]


def _grid(shared_data):
    return read_audio(shared_data / "videos" / "grid" / "bbaf2n.mpg")[0]


# ----------------------------------------------------------------------------- (1) preprocessing

@pytest.mark.parametrize("source", [_speech, _grid], ids=["jfk.flac", "grid-bbaf2n"])
def test_preprocessing_equals_torchvggish(shared_data, source):
    x = source(shared_data)
    ref = vggish_input.waveform_to_examples(x, 16000, return_tensor=False)
    ours = V.waveform_to_examples(x)
    assert ours.dtype == np.float32 and ours.shape == ref.shape and ref.shape[1:] == (96, 64) and len(ref) >= 3
    assert np.abs(ours - ref.astype(np.float32)).max() <= PREPROC_ATOL
    ref_lm = mel_features.log_mel_spectrogram(
        x, audio_sample_rate=16000, log_offset=0.01, window_length_secs=0.025, hop_length_secs=0.010,
        num_mel_bins=64, lower_edge_hertz=125, upper_edge_hertz=7500)
    lm = V.log_mel(x)
    assert lm.shape == ref_lm.shape and np.abs(lm - ref_lm).max() <= LOGMEL64_ATOL
    # the framing itself is exact: example k = log-mel frames [96 k, 96 k + 96)
    np.testing.assert_array_equal(ours, np.stack([lm[96 * k:96 * k + 96] for k in range(len(ours))]).astype(np.float32))
    # other hops: example k = frames [h k, h k + 96), the reference's framing with that hop
    for h in (4, 50):
        ex = V.waveform_to_examples(x, h)
        np.testing.assert_array_equal(ex, mel_features.frame(lm, 96, h).astype(np.float32))
        assert len(ex) == V.n_examples(len(x), h) == 1 + (len(lm) - 96) // h


def test_mel_matrix_and_window_follow_the_reference():
    ref = mel_features.spectrogram_to_mel_matrix(64, 257, 16000, 125.0, 7500.0)
    assert np.abs(V.mel_matrix() - ref).max() < 1e-12
    np.testing.assert_allclose(V.periodic_hann(400), mel_features.periodic_hann(400), atol=1e-15)


def test_example_times_and_short_audio():
    # example k spans samples [160 h k, 160 h k + 15600): centre 0.4875 s after its first sample
    np.testing.assert_allclose(V.example_times(3, 0.04, 1.0), [1.4875, 1.5275, 1.5675])
    assert V.n_examples(15599, 96) == 0 and V.n_examples(15600, 96) == 1
    assert V.waveform_to_examples(np.zeros(15599, np.float32)).shape == (0, 96, 64)
    assert V.waveform_to_examples(np.zeros(0, np.float32)).shape == (0, 96, 64)
    # without pad, less than one hop at the end is in no example
    for n in range(15600, 15600 + 3 * 15360, 997):
        for h in (4, 96):
            k = V.n_examples(n, h)
            assert 0 <= n - ((k - 1) * h * 160 + 15600) < h * 160
    # pad: silence appended so the last example reaches the last sample
    assert len(V.waveform_to_examples(np.ones(100, np.float32), pad=True)) == 1
    for n, h in [(15601, 96), (48000, 96), (48000, 4), (15600, 96)]:
        k = V.n_examples(V.pad_length(n, h), h)
        assert (k - 1) * h * 160 + 15600 >= n  # the last example ends at or after the last sample
        assert k == 1 or (k - 2) * h * 160 + 15600 < n  # and is needed
    # overlapping examples share one log-mel array (memory = the track's log-mel, not K copies)
    v = V.examples_view(np.random.default_rng(0).normal(0, 0.1, 48000).astype(np.float32), 4)
    assert v.shape == (51, 96, 64) and np.shares_memory(v[0], v[1]) and not v.flags.writeable
    np.testing.assert_array_equal(v, V.waveform_to_examples(np.random.default_rng(0).normal(0, 0.1, 48000)
                                                            .astype(np.float32), 4))
    with pytest.raises(ValueError):
        V.hop_frames_of(0.015)
    assert V.hop_frames_of(0.04) == 4 and V.hop_frames_of(0.96) == 96
    from facekit.config import Config

    assert Config().vggish_hop == V.EXAMPLE_SEC  # the default is the reference's hop


# ----------------------------------------------------------------------------- (2) network

def test_network_equals_torchvggish_up_to_its_final_relu(shared_data, ref_net, weights_file):
    ours = V.load_network(weights_file)
    x = torch.from_numpy(V.waveform_to_examples(_speech(shared_data))[:6])
    with torch.no_grad():
        ref = ref_net(x[:, None])  # torchvggish: [N, 1, 96, 64], ReLU after fc2
        out = ours(x)
        ref_pre = torch.nn.Sequential(*list(ref_net.embeddings)[:5])  # the same net without its final ReLU
        feats = ref_net.features(x[:, None]).permute(0, 2, 3, 1).reshape(len(x), -1)
        ref_pre = ref_pre(feats)
    scale = float(ref_pre.abs().max())
    assert scale > 0.1  # a non-trivial output
    # our embedding is the TF reference's pre-activation fc2: torchvggish's minus its last ReLU
    assert float((out - ref_pre).abs().max()) <= 1e-5 * scale
    assert float((torch.relu(out) - ref).abs().max()) <= 1e-5 * scale
    # the difference is real: about half the values are negative, which torchvggish zeroes
    neg = out < 0
    assert 0.2 < float(neg.float().mean()) < 0.8 and bool((ref[neg] == 0).all())


def test_state_dict_names_and_bad_files(ref_net, weights_file, tmp_path):
    ours = V.load_network(weights_file)
    p = tmp_path / "ours.pth"
    torch.save(ours.state_dict(), p)  # our own (TF scope) names load as well
    again = V.load_network(p)
    x = torch.randn(2, 96, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), again(x))
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(zoo.ModelError, match="not a VGGish state dict"):
        V.load_network(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(zoo.ModelError, match="vggish"):
        V.load_network(junk)


# ----------------------------------------------------------------------------- (3) post-processing

def test_pca_postprocessing_equals_torchvggish(pca_file, tmp_path):
    m, mu = V.load_pca(pca_file)
    # torchvggish's Postprocessor with the same parameters (its __init__ would download them)
    ref = Postprocessor.__new__(Postprocessor)
    ref._pca_matrix = torch.as_tensor(m).float()
    ref._pca_means = torch.as_tensor(mu.reshape(-1, 1)).float()
    emb = np.random.default_rng(2).normal(0, 0.6, (64, 128)).astype(np.float32)
    theirs = ref.postprocess(torch.from_numpy(emb)).numpy()  # rounds to the nearest integer
    u = V.pca_whiten(emb, m, mu)
    q = (np.clip(u, -2, 2) + 2) * (255 / 4)
    assert 0.02 < float((np.abs(u) > 2).mean()) < 0.5  # the clip range is exercised
    # the PCA is the same; torchvggish rounds where the TF reference truncates (its uint8 cast)
    near_half = np.abs(q - np.floor(q) - 0.5) < 1e-3  # float32 vs float64 may round those either way
    assert near_half.mean() < 0.01
    np.testing.assert_array_equal(np.round(q)[~near_half], theirs[~near_half])
    ours = V.postprocess(emb, m, mu)
    assert ours.dtype == np.float32 and ours.min() >= 0 and ours.max() <= 255
    np.testing.assert_array_equal(ours, np.floor(q).astype(np.float32))
    # TF vggish_postprocess.py, written out
    tf = ((np.clip(np.dot(m, emb.T - mu.reshape(-1, 1)).T, -2.0, 2.0) - -2.0) * (255.0 / 4.0)).astype(np.uint8)
    np.testing.assert_array_equal(ours, tf.astype(np.float32))
    inside = np.abs(u) < 2  # truncation vs rounding: a real difference inside the clip range
    assert 0.3 < float((ours != theirs)[inside].mean()) < 0.7
    assert np.all((theirs - ours)[~near_half] >= 0) and np.all((theirs - ours)[~near_half] <= 1)
    # a file pickled by numpy 1.x (as the 2019 release was) names numpy.core.multiarray: also allowed
    import zipfile

    with zipfile.ZipFile(pca_file) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = members[pkl].replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n" in members[pkl]
    old = tmp_path / "pca-numpy1.pth"
    with zipfile.ZipFile(old, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    m1, mu1 = V.load_pca(old)
    assert np.array_equal(m1, m) and np.array_equal(mu1, mu)
    # the TF release's .npz loads the same
    npz = tmp_path / "vggish_pca_params.npz"
    np.savez(npz, pca_eigen_vectors=m, pca_means=mu)
    m2, mu2 = V.load_pca(npz)
    assert np.array_equal(m2, m) and np.array_equal(mu2, mu)


# ----------------------------------------------------------------------------- (4) the stage

@pytest.fixture(scope="module")
def wav3(tmp_path_factory):
    return mediagen.audio_only(tmp_path_factory.mktemp("a") / "speech3.wav", duration=3.0)


def test_stage_end_to_end(wav3, weights_file, pca_file, tmp_path):
    out = tmp_path / "v.h5"
    s = facekit.extract([str(wav3)], out, progress=False, stages="vggish", weights={"vggish": str(weights_file)})
    assert s.ok and len(s.processed) == 1
    x, start = read_audio(wav3)
    assert len(x) == 48000 and start == 0.0
    net = V.load_network(weights_file)
    with torch.no_grad():
        expect = net(torch.from_numpy(V.waveform_to_examples(x))).numpy()
    with facekit.open(out) as st:
        a = st.videos["speech3.wav"].audio["vggish"]
        assert a.data.shape == (3, 128) and a.data.dtype == np.float32
        np.testing.assert_allclose(a.data, expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
        np.testing.assert_allclose(a.t, [0.4875, 1.4475, 2.4075], atol=1e-12)
        assert a.attrs["model"] == "vggish" and a.attrs["weights_sha256"] == zoo.sha256_of(weights_file)
        assert a.attrs["hop_sec"] == pytest.approx(0.96) and a.attrs["n_mels"] == 64
        assert a.attrs["postprocess"] is False and a.attrs["audio_status"] == "ok"
        assert a.attrs["embedding"] == "pre-activation fc2"
    from facekit.verify import verify

    rep = verify(out)
    assert rep["ok"] and not rep["problems"], rep

    # another hop (0.2 s; 0.04 s for 25 fps video works the same), padding, post-processing, small batches
    out2 = tmp_path / "v2.h5"
    s = facekit.extract([str(wav3)], out2, progress=False, stages="vggish", vggish_hop=0.2, vggish_pad=True,
                        vggish_postprocess=True, vggish_batch_size=7,
                        weights={"vggish": str(weights_file), "vggish-pca": str(pca_file)})
    assert s.ok
    n = V.n_examples(V.pad_length(48000, 20), 20)
    assert n == 1 + int(np.ceil((48000 - 15600) / 3200)) == 12
    with facekit.open(out2) as st:
        a = st.videos["speech3.wav"].audio["vggish"]
        assert a.data.shape == (n, 128) and a.data.dtype == np.float32
        assert np.array_equal(a.data, np.round(a.data)) and a.data.min() >= 0 and a.data.max() <= 255
        np.testing.assert_allclose(a.t, 0.4875 + 0.2 * np.arange(n), atol=1e-9)
        assert a.t[-1] + 0.4875 >= 3.0 > a.t[-2] + 0.4875  # the last example reaches the end
        assert a.attrs["postprocess"] is True and a.attrs["pca_sha256"] == zoo.sha256_of(pca_file)
        assert a.attrs["pad"] is True and a.attrs["hop_frames"] == 20
        unpadded = V.waveform_to_examples(x, 20)
        assert len(unpadded) == n - 1  # padding added one example at the tail
        with torch.no_grad():
            e = net(torch.from_numpy(unpadded)).numpy()
        ref = V.postprocess(e, *V.load_pca(pca_file))
        # float32 batch differences can move a value across an integer boundary: allow a rare +-1
        d = np.abs(a.data[:len(ref)] - ref)
        assert d.max() <= 1 and (d > 0).mean() < 0.01


def test_cli_and_models_add(wav3, weights_file, tmp_path):
    from facekit.cli import main

    out = tmp_path / "c.h5"
    r = CliRunner().invoke(main, ["audio", str(wav3), "-o", str(out), "--stages", "vggish", "--vggish-hop", "0.5",
                                  "--weights", f"vggish={weights_file}", "-q"])
    assert r.exit_code == 0, r.output
    with facekit.open(out) as st:
        a = st.videos["speech3.wav"].audio["vggish"]
        assert a.data.shape == (5, 128)  # 298 frames: 1 + (298 - 96) // 50
    # a random file is not the registry's: `models add` refuses it without --force, then uses it
    r = CliRunner().invoke(main, ["models", "add", "vggish", str(weights_file)])
    assert r.exit_code != 0 and "10086976" in r.output
    r = CliRunner().invoke(main, ["models", "add", "vggish", str(weights_file), "--force"])
    assert r.exit_code == 0, r.output
    assert zoo.resolve("vggish").origin == "cache"
    out2 = tmp_path / "c2.h5"
    assert facekit.extract([str(wav3)], out2, progress=False, stages="vggish").ok


def test_registry_entries():
    for name, fname, prefix in [("vggish", "vggish-10086976.pth", "10086976"),
                                ("vggish-pca", "vggish_pca_params-970ea276.pth", "970ea276")]:
        f = zoo.get(name).files[0]
        assert f.filename == fname and f.sha256 == prefix and f.matches(prefix + "0" * 56)
        assert f.url == f"https://github.com/harritaylor/torchvggish/releases/download/v0.1/{fname}"


# ----------------------------------------------------------------------------- (5) (6) errors, no audio

def test_offline_missing_weights_is_a_clear_error(wav3, weights_file, tmp_path):
    with pytest.raises(stages.StageError) as e:
        facekit.extract([str(wav3)], tmp_path / "x.h5", progress=False, stages="vggish")
    msg = str(e.value)
    assert "vggish-10086976.pth" in msg and "FACEKIT_OFFLINE" in msg
    assert "facekit models pull vggish" in msg and "--weights vggish=PATH" in msg
    with pytest.raises(stages.StageError, match="vggish_pca_params-970ea276.pth"):
        facekit.extract([str(wav3)], tmp_path / "y.h5", progress=False, stages="vggish", vggish_postprocess=True,
                        weights={"vggish": str(weights_file)})
    from facekit.cli import main

    r = CliRunner().invoke(main, ["audio", str(wav3), "-o", str(tmp_path / "z.h5"), "--stages", "vggish"])
    assert r.exit_code == 2 and "facekit models pull vggish" in r.output
    assert not (tmp_path / "z.h5").exists()


def test_bad_parameters_stop_before_work(wav3, weights_file, tmp_path):
    w = {"vggish": str(weights_file)}
    with pytest.raises(stages.StageError, match="multiple of 0.01"):
        facekit.extract([str(wav3)], tmp_path / "x.h5", progress=False, stages="vggish", vggish_hop=0.015, weights=w)
    from facekit.cli import main

    r = CliRunner().invoke(main, ["audio", str(wav3), "-o", str(tmp_path / "y.h5"), "--stages", "vggish",
                                  "--vggish-hop", "0"])
    assert r.exit_code == 2


def test_video_without_audio_and_short_audio(weights_file, tmp_path):
    silent = mediagen.silent_video(tmp_path / "silent.mp4", n_frames=5)
    short = mediagen.audio_only(tmp_path / "short.wav", duration=0.5)
    out = tmp_path / "n.h5"
    s = facekit.extract([str(silent), str(short)], out, progress=False, stages="vggish",
                        weights={"vggish": str(weights_file)})
    assert s.ok
    with facekit.open(out) as st:
        a = st.videos["silent.mp4"].audio["vggish"]
        assert a.data.shape == (0, 128) and a.t.shape == (0,) and a.attrs["audio_status"] == "no audio"
        b = st.videos["short.wav"].audio["vggish"]  # 0.5 s < 0.975 s: no complete example
        assert b.data.shape == (0, 128) and b.attrs["audio_status"] == "ok"


def test_device(weights_file):
    """The stage runs on --device cuda when PyTorch has a GPU (same embeddings), else refuses clearly."""
    from facekit.config import Config

    w = {"vggish": str(weights_file)}
    if not torch.cuda.is_available():
        with pytest.raises(stages.StageError, match="PyTorch cannot use CUDA"):
            V.VGGishStage(Config(device="cuda", weights=w))
        return
    ex = V.waveform_to_examples(np.random.default_rng(0).normal(0, 0.1, 48000).astype(np.float32))
    cpu = V.VGGishStage(Config(weights=w)).embed(ex)
    gpu = V.VGGishStage(Config(device="cuda:0", weights=w)).embed(ex)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3 * np.abs(cpu).max())
