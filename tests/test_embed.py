"""Embeddings (stage embed): parity of every backbone with its reference implementation, the stage's
store layout (dtype, per-track pooling, resume, verify), and --track-rejoin.

Download-only weights (arcface-r50, enet-b0-8-best-vgaf) are proven on random ONNX models of the same
signature, run through our path and through the reference package (insightface ArcFaceONNX,
EmotiEffLib EmotiEffLibRecognizerOnnx). The embedded ones (sface, efficientnet-lite0) run for real.
"""

from __future__ import annotations

import numpy as np
import pytest

import facekit
from facekit import zoo
from facekit.face import align, embed, tracking

onnx = pytest.importorskip("onnx")
cv2 = pytest.importorskip("cv2")


def _face_image():
    """A real face (skimage astronaut) as RGB uint8, and its five key points (YuNet, embedded)."""
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut())
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    det = cv2.FaceDetectorYN.create(str(zoo.resolve("yunet").path), "", (bgr.shape[1], bgr.shape[0]), 0.8)
    _, faces = det.detect(bgr)
    assert faces is not None and len(faces) >= 1
    row = faces[0]
    return rgb, bgr, row, row[4:14].reshape(5, 2).astype(np.float64)


def _resolved(name, path):
    return zoo.Resolved(name, path, "explicit", zoo.sha256_of(path))


# ----------------------------------------------------------------------------- random ONNX models

def _random_onnx(path, size, dim, input_name, seed, mxnet_prefix=False, classifier=0):
    """A small random CNN with the signature of a real backbone: input [N,3,S,S] -> [N,dim]
    (-> Gemm to ``classifier`` logits when given, like the HSEmotion ONNX)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    k = size // 14
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, k, k)) * 0.05).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array((rng.standard_normal((dim, 8 * 14 * 14)) * 0.02).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32) * 0.1, "b2")]
    nodes, x = [], input_name
    if mxnet_prefix:  # mxnet-exported ArcFace graphs start with Sub and Mul (insightface's test)
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "m"),
                  numpy_helper.from_array(np.array(1 / 128, np.float32), "s")]
        nodes += [helper.make_node("Sub", [x, "m"], ["xs"], name="Sub_0"),
                  helper.make_node("Mul", ["xs", "s"], ["xm"], name="Mul_1")]
        x = "xm"
    nodes += [helper.make_node("Conv", [x, "w1", "b1"], ["c"], kernel_shape=[k, k], strides=[k, k], name="conv0"),
              helper.make_node("Relu", ["c"], ["r"], name="relu0"),
              helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flat0"),
              helper.make_node("Gemm", ["f", "w2", "b2"], ["feat"], transB=1, name="fc0")]
    out = "feat"
    if classifier:
        inits += [numpy_helper.from_array(rng.standard_normal((classifier, dim)).astype(np.float32), "wc"),
                  numpy_helper.from_array(rng.standard_normal(classifier).astype(np.float32), "bc")]
        nodes.append(helper.make_node("Gemm", ["feat", "wc", "bc"], ["logits"], transB=1, name="classifier"))
        out = "logits"
    g = helper.make_graph(nodes, "random", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                          ["N", 3, size, size])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classifier or dim])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


# ----------------------------------------------------------------------------- sface (embedded)

def test_sface_equals_opencv_face_recognizer():
    """Same crop -> same vector as cv2.FaceRecognizerSF (the OpenCV Zoo wrapper), batched."""
    rgb, bgr, row, kps = _face_image()
    m = embed.load("sface")
    assert m.weights.origin == "package" and zoo.get("sface").files[0].matches(m.weights.sha256)
    fr = cv2.FaceRecognizerSF.create(str(m.weights.path), "")
    ref_crop = fr.alignCrop(bgr, row)                 # OpenCV's own alignment (BGR)
    ref = fr.feature(ref_crop)[0]
    crops = np.stack([cv2.cvtColor(ref_crop, cv2.COLOR_BGR2RGB)] * 3 + [cv2.flip(cv2.cvtColor(ref_crop, cv2.COLOR_BGR2RGB), 1)])
    ours = m(crops)                                   # one call, 4 crops
    assert ours.shape == (4, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:3], np.tile(ref, (3, 1)), atol=1e-4)
    assert embed.cosine(ours[0], ref) > 0.99999
    # our alignment (Umeyama on kps5) vs OpenCV's alignCrop: the same crop up to rounding
    mine = embed.embed_faces(m, rgb[None], np.array([0]), kps[None])[0]
    assert embed.cosine(mine, ref) > 0.995


def test_sface_verifies_same_person_across_views():
    """A mirrored copy of a face is the same person (cosine >= 0.363), a random image is not."""
    rgb, _, _, kps = _face_image()
    m = embed.load("sface")
    a = embed.embed_faces(m, rgb[None], np.array([0]), kps[None])[0]
    flip = np.ascontiguousarray(rgb[:, ::-1])
    k2 = kps.copy()
    k2[:, 0] = rgb.shape[1] - 1 - k2[:, 0]
    k2 = k2[[1, 0, 2, 4, 3]]                          # subject's right/left swap in a mirror image
    b = embed.embed_faces(m, flip[None], np.array([0]), k2[None])[0]
    noise = np.random.default_rng(0).integers(0, 255, (1, 112, 112, 3), dtype=np.uint8)
    c = m(noise)[0]
    assert embed.cosine(a, b) > embed.SFACE_THRESHOLD + 0.2
    assert embed.cosine(a, c) < embed.SFACE_THRESHOLD


# ----------------------------------------------------------------------------- arcface-r50 (download)

@pytest.mark.parametrize("mxnet", [False, True])
def test_arcface_equals_insightface(tmp_path, mxnet):
    """Our arcface-r50 path = insightface ArcFaceONNX.get (norm_crop + blobFromImages) on the same
    random ONNX model, for both input conventions insightface distinguishes."""
    arc = pytest.importorskip("insightface.model_zoo.arcface_onnx")
    p = _random_onnx(tmp_path / "w600k_random.onnx", 112, 512, "input.1", 1, mxnet_prefix=mxnet)
    rgb, bgr, _, kps = _face_image()

    class Face(dict):
        __getattr__ = dict.get

    ref_model = arc.ArcFaceONNX(model_file=str(p))
    assert (ref_model.input_mean, ref_model.input_std) == ((0.0, 1.0) if mxnet else (127.5, 127.5))
    ref = ref_model.get(bgr, Face(kps=kps.astype(np.float32)))
    m = embed.OnnxEmbedder(embed.BACKBONES["arcface-r50"], _resolved("arcface-r50", p))
    ours = embed.embed_faces(m, np.stack([rgb, rgb]), np.array([0, 1]), np.stack([kps, kps]))
    np.testing.assert_allclose(ours[0], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ours[0], ours[1])


def test_arcface_registry_entry_and_offline_message():
    f = zoo.get("arcface-r50").files[0]
    assert f.filename == "w600k_r50.onnx" and len(f.sha256) == 64 and f.url.startswith("https://")
    with pytest.raises(zoo.ModelNotFoundError, match="facekit models pull arcface-r50"):
        embed.load("arcface-r50")


# ----------------------------------------------------------------------------- HSEmotion (download)

def test_hsemotion_features_equal_emotiefflib(tmp_path, monkeypatch):
    """enet-b0-8-best-vgaf features = EmotiEffLibRecognizerOnnx.extract_features (final Gemm cut off)
    on the same random model; the crop is our aligned 224 crop fed to both."""
    fa = pytest.importorskip("emotiefflib.facial_analysis")
    p = _random_onnx(tmp_path / "enet_random.onnx", 224, 1280, "input", 2, classifier=8)
    monkeypatch.setattr(fa, "get_model_path_onnx", lambda name: str(p))
    ref_model = fa.EmotiEffLibRecognizerOnnx("enet_b0_8_best_vgaf")
    rgb, _, _, kps = _face_image()
    spec = embed.BACKBONES["enet-b0-8-best-vgaf"]
    crops = embed.warp_batch(rgb[None], np.array([0, 0]), embed.crop_affines(np.stack([kps, kps * 0.99 + 2]), spec),
                             spec.size)
    ref = ref_model.extract_features([c for c in crops])
    m = embed.OnnxEmbedder(spec, _resolved("enet-b0-8-best-vgaf", p))
    np.testing.assert_allclose(m(crops), ref, rtol=1e-4, atol=1e-4)
    assert ref.shape == (2, 1280)


# ----------------------------------------------------------------------------- efficientnet-lite0 (embedded)

def test_efficientnet_lite0_pooled_features_feed_its_classifier():
    """Our pooled features are what the package's own classifier head consumes: fc(ours) equals
    EfficientNet.forward on the same normalised input."""
    torch = pytest.importorskip("torch")
    m = embed.load("efficientnet-lite0")
    assert m.weights.origin == "package"
    rgb, _, _, kps = _face_image()
    spec = m.spec
    crops = embed.warp_batch(rgb[None], np.array([0]), embed.crop_affines(kps[None], spec), spec.size)
    f = m(crops)
    assert f.shape == (1, 1280) and np.isfinite(f).all() and (f >= 0).all()  # ReLU6 then mean
    with torch.no_grad():
        x = m.preprocess(crops)
        ref = m.net(x).numpy()
        ours = m.net._fc(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
    # ImageNet normalisation of x/255 (the package's documented preprocessing)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), (crops[0, 0, 0] / 255 - np.array(embed.IMAGENET_MEAN))
                               / np.array(embed.IMAGENET_STD), rtol=1e-5)


# ----------------------------------------------------------------------------- crops

def test_crop_affines_follow_the_template_and_frame_scale():
    rgb, _, _, kps = _face_image()
    spec = embed.BACKBONES["efficientnet-lite0"]
    m = embed.crop_affines(kps[None], spec)
    mapped = align.transform_points(m, kps[None])[0]
    tpl = align.template("arcface", 224, 0.2)
    np.testing.assert_allclose(mapped.mean(0), tpl.mean(0), atol=1e-9)   # least squares: centroids meet
    assert np.sqrt(((mapped - tpl) ** 2).sum(1).mean()) < 0.05 * 224     # and the points nearly do
    # a half-size frame batch: same crop content (pixel-centre convention)
    half = embed.crop_affines(kps[None], spec, scale=0.5)
    p = align.transform_points(half, ((kps[None] + 0.5) * 0.5 - 0.5))
    np.testing.assert_allclose(p, align.transform_points(m, kps[None]), atol=1e-9)


def test_bad_options_stop_before_work(clips, tmp_path):
    for kw, msg in [({"embed": "nope"}, "unknown backbone"), ({"embed": "sface,sface"}, "twice"),
                    ({"embed_dtype": "int8"}, "embed-dtype"), ({"embed_pool": "video"}, "embed-pool")]:
        with pytest.raises(facekit.stages.StageError, match=msg):
            facekit.extract([clips["face"]], tmp_path / "x.h5", stages="embed", **kw)


# ----------------------------------------------------------------------------- the stage

def test_embed_stage_store_layout_pool_and_resume(clips, tmp_path):
    from facekit.verify import verify

    out = tmp_path / "e.h5"
    kw = dict(stages="embed", embed="sface", embed_dtype="float16", embed_pool="track")
    s = facekit.extract([clips["face"]], out, **kw)
    assert s.ok and len(s.processed) == 1
    with facekit.open(out) as st:
        v = st[list(st)[0]]
        g = v.group
        n = g["faces/frame"].shape[0]
        assert n > 0
        e = g["faces/embed/sface"]
        assert e.shape == (n, 128) and e.dtype == np.float16
        a = dict(e.attrs)
        assert a["model"] == "sface" and a["weights_sha256"] == zoo.get("sface").files[0].sha256
        assert "template_points" in a and "crop" in a and "input" in a
        T = g["tracks/id"].shape[0]
        pooled = g["tracks/embed/sface"][()]
        assert pooled.shape == (T, 128)
        tr = g["faces/track"][()]
        t0 = g["tracks/id"][0]
        np.testing.assert_allclose(pooled[0], e[()][tr == t0].astype(np.float64).mean(0), rtol=2e-3, atol=2e-3)
        assert "track" in v.attrs["stages"]          # --embed-pool track adds the track stage
    assert verify(str(out))["ok"]
    again = facekit.extract([clips["face"]], out, **kw)
    assert len(again.skipped) == 1                    # same params: resumed, nothing recomputed
    changed = facekit.extract([clips["face"]], out, **{**kw, "embed_dtype": "float32"})
    assert len(changed.processed) == 1


def test_merge_summary_combines_rows():
    summary = {"id": np.array([0, 1, 2]), "first_frame": np.array([0, 5, 20]), "last_frame": np.array([4, 9, 30]),
               "first_t": np.array([0.0, 0.2, 0.8]), "last_t": np.array([0.16, 0.36, 1.2]),
               "n_frames": np.array([5, 5, 11]), "mean_size": np.array([100.0, 50.0, 100.0]),
               "mean_center_dist": np.array([0.1, 0.5, 0.1]), "mean_score": np.array([0.9, 0.8, 0.9]),
               "shot": np.array([0, 0, 1]), "score": np.zeros(3), "primary": np.zeros(3, bool)}
    m = tracking.merge_summary(summary, np.array([0, 1, 0]))
    assert m["id"].tolist() == [0, 1] and m["n_frames"].tolist() == [16, 5]
    assert m["first_frame"].tolist() == [0, 5] and m["last_frame"].tolist() == [30, 9]
    assert m["shot"].tolist() == [0, 0] and m["primary"].tolist() == [True, False]
    np.testing.assert_allclose(m["mean_size"], [100.0, 50.0])
    assert m["first_frame"].dtype == summary["first_frame"].dtype


def test_rejoin_from_sums_equals_rejoin_tracks():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    ids = np.array([0, 0, 1, 1, 2, 2])
    frames = np.array([0, 1, 0, 1, 5, 6])
    embs = np.stack([a, a, b, b, a + 0.1, a])
    ref = tracking.rejoin_tracks(ids, frames, embs, 0.5)
    u = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    sums = np.stack([u[ids == t].sum(0) for t in range(3)])
    assert tracking.rejoin_from_sums(ids, frames, np.arange(3), sums, 0.5).tolist() == ref.tolist() == [0, 0, 1, 1, 0, 0]


# ----------------------------------------------------------------------------- real data

def _gap_clip(shared_data, tmp_path, gap_frames=15):
    """A GRID talker (5 frames/s), then ``gap_frames`` frames of grey (no face: 3 s gap), then the
    same talker again: one person, two tracks without re-joining."""
    import av

    src = shared_data / "videos" / "grid" / "bbaf2n.mpg"
    frames = []
    with av.open(str(src)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i % 5 == 0:
                frames.append(fr.to_ndarray(format="rgb24"))
    d = tmp_path / "gap_frames"
    d.mkdir()
    seq = frames[:8] + [np.full_like(frames[0], 128)] * gap_frames + frames[8:]
    for k, f in enumerate(seq):
        cv2.imwrite(str(d / f"{k:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return d


@pytest.mark.realdata
def test_track_rejoin_joins_one_person_across_a_gap(shared_data, tmp_path):
    d = _gap_clip(shared_data, tmp_path)
    plain = tmp_path / "plain.h5"
    assert facekit.extract([d], plain, stages="detect,track", frame_rate=5.0).ok
    with facekit.open(plain) as st:
        v = st[list(st)[0]]
        assert len(np.unique(v.faces.track)) == 2 and v.group["tracks/id"].shape[0] == 2
    joined = tmp_path / "joined.h5"
    assert facekit.extract([d], joined, stages="detect,track,embed", frame_rate=5.0, track_rejoin=0.5,
                           embed_pool="track").ok
    with facekit.open(joined) as st:
        v = st[list(st)[0]]
        g = v.group
        assert np.unique(v.faces.track).tolist() == [0]
        assert g["tracks/id"][()].tolist() == [0] and g["tracks/n_frames"][0] == len(v.faces.track)
        assert g["tracks/embed/sface"].shape == (1, 128)
        assert g["tracks"].attrs["rejoin"]          # the parameters are recorded
    from facekit.verify import verify

    assert verify(str(joined))["ok"]


@pytest.mark.realdata
def test_deepface_pairs_auc(shared_data):
    """SFace on the deepface same/different pairs whose files are in shared data: ROC-AUC and
    accuracy at OpenCV's published threshold (figures in docs/accuracy.md)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import embed_accuracy

    r = embed_accuracy.verification(shared_data, "sface")
    assert r["pairs"] >= 20 and r["auc"] >= 0.95 and r["accuracy"] >= 0.85, r


@pytest.mark.realdata
def test_bald_guys_cluster_into_four_people(shared_data):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import embed_accuracy

    r = embed_accuracy.clustering(shared_data, "sface")
    assert r["faces"] >= 20 and r["clusters"] == 4, r


def test_rejoined_track_folders_are_merged(tmp_path):
    from facekit.face.crop import _rename_track_dirs

    for tid, files in {0: ["000000_0.jpg"], 1: ["000001_0.jpg"], 2: ["000009_0.jpg"], 3: ["000002_0.jpg"]}.items():
        d = tmp_path / f"track{tid:04d}"
        d.mkdir()
        for f in files:
            (d / f).write_text(str(tid))
    _rename_track_dirs(tmp_path, {0: 0, 1: 1, 2: 0, 3: 2})      # track 2 re-joined track 0
    got = {d.name: sorted(f.name for f in d.iterdir()) for d in tmp_path.iterdir()}
    assert got == {"track0000": ["000000_0.jpg", "000009_0.jpg"], "track0001": ["000001_0.jpg"],
                   "track0002": ["000002_0.jpg"]}


def test_cli_embed(clips, tmp_path):
    from click.testing import CliRunner

    from facekit.cli import main

    r = CliRunner().invoke(main, ["embed", "--help"])
    assert r.exit_code == 0 and "--embed-pool" in r.output and "--track-rejoin" in r.output
    r = CliRunner().invoke(main, ["embed", str(clips["face"]), "-o", str(tmp_path / "x.h5"), "--embed", "clip"])
    assert r.exit_code == 2 and "unknown backbone 'clip'" in r.output
    r = CliRunner().invoke(main, ["crop", str(clips["face"]), "-o", str(tmp_path / "y.h5"), "--images",
                                  str(tmp_path / "i"), "--track-videos", "--track-rejoin", "0.5"])
    assert r.exit_code == 2 and "--track-videos" in r.output
    out = tmp_path / "z.h5"
    r = CliRunner().invoke(main, ["embed", str(clips["face"]), "-o", str(out), "--stages", "embed", "-q"])
    assert r.exit_code == 0, r.output
    with facekit.open(out) as st:
        v = st[list(st)[0]]
        assert "embed/sface" in v.faces.keys() and v.faces["embed/sface"].shape[1] == 128


def test_cuda_without_a_usable_gpu_is_refused_not_silently_cpu():
    import onnxruntime as ort

    from facekit.config import Config
    from facekit.face.embed import EmbedStage
    from facekit.stages import StageError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(StageError, match="no CUDA provider"):
        EmbedStage(Config(device="cuda:0", embed="sface"))


def test_audio_file_in_an_embed_run_verifies(clips, tmp_path):
    import mediagen

    wav = mediagen.audio_only(tmp_path / "s.wav", duration=0.5)
    out = tmp_path / "m.h5"
    s = facekit.extract([str(wav), str(clips["face"])], out, stages="embed,mel", embed_pool="track", progress=False)
    assert s.ok, s.to_dict()
    rep = facekit.verify(out)
    assert rep["ok"], rep["problems"]


def test_recomputed_tracks_drop_stored_outputs_filed_by_track(clips, tmp_path):
    """Crops written as images per track are not carried into a run that re-does the tracks."""
    out, images = tmp_path / "c.h5", tmp_path / "img"
    facekit.extract([str(clips["face"])], out, stages="crop,embed", images=str(images), embed_pool="track",
                    progress=False)
    facekit.extract([str(clips["face"])], out, stages="detect,track", track_rejoin=0.3, progress=False)
    with facekit.open(out) as st:
        v = st["face.mp4"]
        assert "crop" not in v.attrs["stage_params"] and "embed" not in v.attrs["stage_params"]
        assert "align" in v.attrs["stage_params"]  # does not depend on track ids: carried
        assert "tracks/embed" not in v.group
    assert facekit.verify(out)["ok"]
