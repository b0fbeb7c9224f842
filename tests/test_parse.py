"""Face parsing: the landmarks68 regions, the FaRL path against pyfacer's own code, the parse stage
through the engine and the CLI, mask PNGs, the preview overlay, resume/params."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import facekit
from facekit import zoo
from facekit.cli import main
from facekit.face import align, parse
from facekit.face.pose import MEAN_FACE_68

import mediagen

L = parse.L


def synthetic_lm(size=256, open_mouth=0.0):
    """68 points of the generic mean face fitted into a size x size crop (frontal, upright);
    ``open_mouth`` moves the lower lip and the lower inner lip down by that many pixels."""
    p = MEAN_FACE_68[:, :2].astype(np.float64)
    lo, hi = p.min(0), p.max(0)
    k = 0.62 * size / (hi - lo).max()
    lm = (p - (lo + hi) / 2) * k + [size / 2, size * 0.56]
    lm[[65, 66, 67]] = lm[[63, 62, 61]]  # a closed mouth (the mean face's is ajar)
    if open_mouth:
        lm[[55, 56, 57, 58, 59, 65, 66, 67], 1] += open_mouth
    return lm


# ----------------------------------------------------------------------------- landmarks68 rendering

def test_render_shapes_labels_and_layout():
    S = 256
    m = parse.render_landmarks68(np.stack([synthetic_lm(S), synthetic_lm(S, open_mouth=8)]), S)
    assert m.shape == (2, S, S) and m.dtype == np.uint8
    assert len(parse.LABELS) == 10 and parse.LABELS[0] == "background"
    assert set(np.unique(m[1])) == set(range(10))  # every region present when the mouth is open
    assert L["inner_mouth"] not in np.unique(m[0])  # closed mouth: no inner mouth

    def centroid(label, k=1):
        ys, xs = np.nonzero(m[k] == label)
        return xs.mean(), ys.mean()

    # subject's right eye/brow on the image left of a frontal face
    assert centroid(L["right_eye"])[0] < S / 2 < centroid(L["left_eye"])[0]
    assert centroid(L["right_brow"])[0] < S / 2 < centroid(L["left_brow"])[0]
    assert centroid(L["right_brow"])[1] < centroid(L["right_eye"])[1] < centroid(L["nose"])[1]
    assert centroid(L["nose"])[1] < centroid(L["upper_lip"])[1] < centroid(L["inner_mouth"])[1] \
        < centroid(L["lower_lip"])[1]
    # the forehead is extrapolated above the brows, skin reaches above the brow band
    ys, _ = np.nonzero(m[1] == L["skin"])
    brow_top = np.nonzero(np.isin(m[1], [L["right_brow"], L["left_brow"]]))[0].min()
    assert ys.min() < brow_top - 10
    assert m[1][0, 0] == 0 and m[1][-1, -1] == 0  # corners are background


def test_each_landmark_in_its_region_synthetic():
    S = 256
    lm = synthetic_lm(S, open_mouth=8)
    m = parse.render_landmarks68(lm[None], S)[0]

    def at(p):
        return int(m[int(round(p[1])), int(round(p[0]))])

    assert at(lm[36:42].mean(0)) == L["right_eye"] and at(lm[42:48].mean(0)) == L["left_eye"]
    assert all(at(p) == L["right_brow"] for p in lm[17:22])
    assert all(at(p) == L["left_brow"] for p in lm[22:27])
    assert all(at(p) == L["nose"] for p in lm[27:31])  # the bridge and the tip
    assert at((lm[51] + lm[62]) / 2) == L["upper_lip"] and at((lm[57] + lm[66]) / 2) == L["lower_lip"]
    assert at(lm[60:68].mean(0)) == L["inner_mouth"]
    assert at((lm[2] + lm[31]) / 2) == L["skin"]  # a cheek


def test_render_draw_order_and_subpixel():
    S = 256
    lm = synthetic_lm(S)
    # eyes are drawn over the nose: widen the bridge so it overlaps the eyes; the eye centres stay eyes
    old = parse.NOSE_HALF_WIDTH
    try:
        parse.NOSE_HALF_WIDTH = (0.6, 0.6, 0.6)
        m = parse.render_landmarks68(lm[None], S)[0]
    finally:
        parse.NOSE_HALF_WIDTH = old
    c = lm[36:42].mean(0).round().astype(int)
    assert m[c[1], c[0]] == L["right_eye"]
    # sub-pixel: a quarter-pixel shift of the face changes the mask (integer rounding would not)
    a = parse.render_landmarks68(lm[None], S)[0]
    b = parse.render_landmarks68(lm[None] + 0.25, S)[0]
    assert (a != b).any() and (a != b).mean() < 0.02


def test_render_nan_landmarks_and_3d_input():
    S = 64
    lm = np.full((1, 68, 3), np.nan)
    assert (parse.render_landmarks68(lm, S) == 0).all()
    lm3 = np.concatenate([synthetic_lm(S)[None], np.zeros((1, 68, 1))], axis=2)
    np.testing.assert_array_equal(parse.render_landmarks68(lm3, S), parse.render_landmarks68(lm3[:, :, :2], S))
    assert parse.render_landmarks68(np.zeros((0, 68, 2)), S).shape == (0, S, S)


def test_palette_png_round_trip(tmp_path):
    from PIL import Image
    import cv2

    m = parse.render_landmarks68(synthetic_lm(96, open_mouth=4)[None], 96)[0]
    p = tmp_path / "m.png"
    parse.write_palette_png(p, m, parse.palette(parse.LABELS))
    im = Image.open(p)
    assert im.mode == "P" and im.size == (96, 96)
    np.testing.assert_array_equal(np.array(im), m)
    pal = np.array(im.getpalette()[:30], np.uint8).reshape(10, 3)
    np.testing.assert_array_equal(pal, parse.palette(parse.LABELS))
    bgr = cv2.imread(str(p))  # any reader: colours come out
    np.testing.assert_array_equal(bgr[..., ::-1], parse.palette(parse.LABELS)[m])


# ----------------------------------------------------------------------------- the stage, CLI, resume

def test_parse_stage_store_layout_and_resume(clips, tmp_path):
    out = tmp_path / "p.h5"
    s = facekit.extract([str(clips["face2"])], out, stages="parse", progress=False)
    assert s.ok and len(s.processed) == 1, s.to_dict()
    with facekit.open(out) as st:
        v = st["face2.mkv"]
        f = v.faces
        assert f.parsing.shape == (len(f), 112, 112) and f.parsing.dtype == np.uint8 and len(f) == 12
        a = f.attrs("parsing")
        assert a["labels"] == list(parse.LABELS) and a["model"] == "landmarks68"
        assert a["params"]["forehead_ratio"] == parse.FOREHEAD_RATIO
        assert set(v.attrs["stages"]) >= {"detect", "landmarks", "align", "parse"}
        # the stored mask is the rendering of the stored landmarks in the stored crop frame
        m = align.invert_affine(f.affine.astype(np.float64))
        want = parse.render_landmarks68(align.transform_points(m, f.landmarks.astype(np.float64)), 112)
        np.testing.assert_array_equal(f.parsing, want)
        # the synthetic face's eyes are where the detector's eye key points map
        eyes = align.transform_points(align.invert_affine(f.affine.astype(np.float64)), f.kps5[:, :2].astype(np.float64))
        lab = [f.parsing[i, int(round(p[1])), int(round(p[0]))] for i in range(len(f)) for p in eyes[i]]
        assert np.mean(np.isin(lab, [L["right_eye"], L["left_eye"]])) > 0.9
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 0 and "unknown" not in res.output, res.output
    # same command: skipped; another crop size: recomputed (params include the crop)
    assert len(facekit.extract([str(clips["face2"])], out, stages="parse", progress=False).skipped) == 1
    s = facekit.extract([str(clips["face2"])], out, stages="parse", progress=False, crop_size=96)
    assert len(s.processed) == 1
    with facekit.open(out) as st:
        v = st["face2.mkv"]
        assert v.faces.parsing.shape[1:] == (96, 96)
        assert v.attrs["reused_stages"] == ["detect", "landmarks"]  # only align and parse were recomputed


def test_cli_parse_and_unknown_or_missing_parser(clips, tmp_path):
    r = CliRunner()
    out = tmp_path / "c.h5"
    res = r.invoke(main, ["parse", str(clips["face2"]), "-o", str(out), "-q", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["processed"] == 1
    with facekit.open(out) as st:
        assert st["face2.mkv"].faces.parsing.shape == (12, 112, 112)
    res = r.invoke(main, ["parse", str(clips["face2"]), "-o", str(tmp_path / "x.h5"), "--parser", "nope"])
    assert res.exit_code == 2 and "unknown parser 'nope'" in res.output
    res = r.invoke(main, ["parse", str(clips["face2"]), "-o", str(tmp_path / "y.h5"), "--parser", "farl-lapa"])
    assert res.exit_code == 2 and "facekit models pull farl-lapa" in res.output  # offline, not downloaded


def test_masks_next_to_crops(clips, tmp_path):
    from PIL import Image

    out, imgs = tmp_path / "m.h5", tmp_path / "crops"
    res = CliRunner().invoke(main, ["crop", str(clips["face2"]), "-o", str(out), "--images", str(imgs),
                                    "--masks", "-q", "--format", "png"])
    assert res.exit_code == 0, res.output
    crops = sorted(p for p in imgs.rglob("*.png") if not p.stem.endswith("_mask"))
    masks = sorted(imgs.rglob("*_mask.png"))
    assert len(crops) == len(masks) == 12
    assert [m.name for m in masks] == [c.stem + "_mask.png" for c in crops]
    assert all(m.parent == c.parent for m, c in zip(masks, crops))
    with facekit.open(out) as st:
        f = st["face2.mkv"].faces
        assert "parse" in st["face2.mkv"].attrs["stages"]
        by_name = {m.name: np.array(Image.open(m)) for m in masks}
        for k in range(len(f)):
            name = f"{int(f.frame[k]):06d}_0_mask.png"
            np.testing.assert_array_equal(by_name[name], f.parsing[k])
    res = CliRunner().invoke(main, ["crop", str(clips["face2"]), "-o", str(tmp_path / "n.h5"), "--masks"])
    assert res.exit_code == 2 and "--masks" in res.output and "--images" in res.output


def test_preview_overlays_parsing(clips, tmp_path):
    from facekit import preview as pv

    out = tmp_path / "pv.h5"
    assert facekit.extract([str(clips["face2"])], out, stages="parse", progress=False).ok
    with facekit.open(out) as st:
        v = st["face2.mkv"]
        faces = v.faces.in_frame(0)
        labels = pv._parsing_labels(v)
    assert labels == list(parse.LABELS)
    rgb = np.zeros((240, 320, 3), np.uint8) + 90
    plain = pv.draw(rgb, {k: faces[k] for k in ("box", "score")}, None)
    with_masks = pv.draw(rgb, {k: faces[k] for k in ("box", "score", "parsing", "affine")}, None, parsing_labels=labels)
    changed = (plain != with_masks).any(axis=2)
    # coloured inside the face (the mask's non-background pixels mapped into the frame), untouched far away
    x0, y0, x1, y1 = faces["box"][0]
    cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
    assert changed[cy - 5:cy + 5, cx - 5:cx + 5].all()
    assert not changed[:, : max(0, int(x0) - 40)].any()
    sheet = tmp_path / "sheet.png"
    res = CliRunner().invoke(main, ["preview", str(clips["face2"]), "--from", str(out), "-o", str(sheet),
                                    "--frames", "2"])
    assert res.exit_code == 0 and sheet.stat().st_size > 0, res.output


# ----------------------------------------------------------------------------- FaRL parity with pyfacer

def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pyfacer_farl():
    """pyfacer's own facer.face_parsing.farl module, imported without facer/__init__.py (which
    pulls torchvision, timm, matplotlib... that these modules do not use)."""
    _torch()
    spec = importlib.util.find_spec("facer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pyfacer is not installed (pip install --no-deps pyfacer==0.0.5 validators)")
    saved = {k: v for k, v in sys.modules.items() if k == "facer" or k.startswith("facer.")}
    pkg = types.ModuleType("facer")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["facer"] = pkg
    try:
        mod = importlib.import_module("facer.face_parsing.farl")
    except ImportError as e:
        pytest.skip(f"pyfacer's parsing modules cannot be imported: {e}")
    yield mod
    for k in [k for k in sys.modules if k == "facer" or k.startswith("facer.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _scripted_model(path, n_classes, seed):
    """A random TorchScript model of the FaRL signature: [B,3,448,448] float in [0,1] ->
    (logits [B,C,448,448], aux). Position-dependent, so any misalignment shows."""
    torch = _torch()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, n_classes, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
                self.conv.bias.copy_(torch.randn(n_classes, generator=g))
            self.register_buffer("ax", torch.randn(1, n_classes, 1, 1, generator=g) * 4)
            self.register_buffer("ay", torch.randn(1, n_classes, 1, 1, generator=g) * 4)

        def forward(self, x):
            y = self.conv(x * 2 - 1)
            lin = torch.linspace(-1.0, 1.0, x.shape[-1])
            y = y + self.ax * lin.reshape(1, 1, 1, -1) + self.ay * lin.reshape(1, 1, -1, 1)
            return y, y.mean(dim=1)

    torch.jit.script(Net().eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def face_frames():
    from facekit.face.yunet import YuNet

    det = YuNet(zoo.resolve("yunet"))
    imgs = np.stack([mediagen.face_image(size=(200, 150), offset=(o, 0), scale=0.7) for o in (-10, 12)])
    kps = [det.detect(im)[2] for im in imgs]
    assert all(len(k) == 1 for k in kps)
    # three faces in two frames: the detected ones and a rotated, shifted copy
    k2 = align.transform_points(np.array([[np.cos(0.2), -np.sin(0.2), 20], [np.sin(0.2), np.cos(0.2), -25]]),
                                kps[0][0].astype(np.float64))
    return imgs, np.array([0, 1, 0]), np.stack([kps[0][0], kps[1][0], k2]).astype(np.float32)


@pytest.fixture
def one_torch_thread():
    """PyTorch on one CPU thread for the test. With both cores busy, the multi-threaded float32
    path gave warps differing by up to 0.1 logits at the synthetic face's hard edges in about one
    run in three (CI, 2026-11-23); on one thread the comparison is deterministic."""
    torch = _torch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name,n_classes", [("farl-lapa", 11), ("farl-celebm", 19)])
def test_farl_equals_pyfacer(pyfacer_farl, face_frames, tmp_path, name, n_classes, one_torch_thread):
    torch = _torch()
    from facekit.face import farl

    path = _scripted_model(tmp_path / f"{name}.pt", n_classes, seed=n_classes)
    conf = farl.SETTINGS[name]["conf"]
    ref = pyfacer_farl.FaRLFaceParser(conf, model_path=str(path), device="cpu")
    assert ref.label_names == farl.SETTINGS[name]["model_labels"]
    imgs, fidx, kps = face_frames
    # pyfacer: pixel centres at i + 0.5, so facekit's points (centres at i) go in shifted by 0.5
    data = {"points": torch.from_numpy(kps + 0.5), "image_ids": torch.from_numpy(fidx)}
    ref_logits = ref(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), data)["seg"]["logits"].numpy()

    ours = farl.FarlParser(zoo.Resolved(name, path, "explicit", zoo.sha256_of(path)))
    h, w = imgs.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    grid = np.broadcast_to(np.stack([xx, yy], -1), (len(fidx), h, w, 2))  # every image pixel centre
    logits = ours.logits_at(imgs, fidx, kps, grid)
    assert logits.shape == ref_logits.shape == (3, n_classes, h, w)
    assert np.abs(ref_logits).max() > 1  # not a trivial comparison
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=2e-4)
    labels = ours.parse_batch(imgs, fidx, kps, grid)
    agree = (labels == ref_logits.argmax(1)).mean()
    assert agree > 0.999  # argmax may flip only where two logits tie within float error
    # a face whose key points are missing gets an all-background mask, the others are unchanged
    kbad = kps.copy()
    kbad[1] = np.nan
    lb = ours.parse_batch(imgs, fidx, kbad, grid)
    assert (lb[1] == 0).all() and (lb[[0, 2]] == labels[[0, 2]]).all()


def test_farl_stage_through_extract(pyfacer_farl, clips, tmp_path):
    from facekit.face import farl

    path = _scripted_model(tmp_path / "farl-lapa.pt", 11, seed=3)
    out = tmp_path / "farl.h5"
    s = facekit.extract([str(clips["face2"])], out, stages="parse", parser="farl-lapa", progress=False,
                        weights={"farl-lapa": str(path)}, batch_size=4, fps=2)
    assert s.ok, s.to_dict()
    with facekit.open(out) as st:
        f = st["face2.mkv"].faces
        a = f.attrs("parsing")
        assert f.parsing.shape == (len(f), 112, 112) and 2 <= len(f) <= 3 and f.parsing.dtype == np.uint8
        assert a["labels"] == farl.SETTINGS["farl-lapa"]["labels"] and a["model"] == "farl-lapa"
        assert a["model_labels"][1] == "face" and a["weights_sha256"] == zoo.sha256_of(path)
        assert a["params"]["warp_factor"] == 0.8 and f.parsing.max() < 11
        # the stored masks are the model evaluated at the crop pixel centres of faces/affine
        ours = farl.FarlParser(zoo.Resolved("farl-lapa", path, "explicit", zoo.sha256_of(path)))
        from facekit.media import iter_frames

        frames = np.concatenate([b.rgb for b in iter_frames(str(clips["face2"]), fps=2)])
        pts = parse.crop_points(f.affine, 112)
        want = ours.parse_batch(frames, f.frame, f.kps5, pts)
        np.testing.assert_array_equal(f.parsing, want)


def test_farl_bad_weight_file(tmp_path, clips):
    _torch()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(zoo.ModelError, match="not a loadable TorchScript"):
        facekit.extract([str(clips["face2"])], tmp_path / "b.h5", stages="parse", parser="farl-celebm",
                        weights={"farl-celebm": str(bad)})


def test_farl_registry_entries():
    for n in ("farl-lapa", "farl-celebm"):
        m = zoo.get(n)
        assert m.task == "parse" and not m.embedded and len(m.files[0].sha256) == 64
        assert m.files[0].url.startswith("https://github.com/FacePerceiver/facer/releases/download/models-v1/")


# ----------------------------------------------------------------------------- real faces

def test_real_faces_landmarks_fall_in_their_regions(shared_data):
    """dlib68 landmarks -> landmarks68 masks; ground-truth points checked against them
    (figures: docs/accuracy.md, bench/parse_accuracy.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import parse_accuracy as pa

    rows = pa.evaluate(shared_data, "arcface")
    assert all(r[1] is not None for r in rows) and len(rows) == 8
    s = pa.summary(rows)
    # measured: eye centres 100 %, lip middles 100 %, brows 87.5 % strict (95 % within 5 % iod)
    assert s["eye centres"]["strict"] == 100
    assert s["upper lip middle"]["strict"] == 100 and s["lower lip middle"]["strict"] == 100
    assert s["brows"]["strict"] >= 80 and s["brows"]["tolerant"] >= 90
    assert s["nose"]["tolerant"] >= 80 and s["lips (all 20 points)"]["tolerant"] >= 90
    # masks drawn from the ground truth itself: the rendering geometry puts (almost) every point home
    assert all(s[g]["tolerant_gt"] == 100 for g in s if g != "jaw (contour)")
