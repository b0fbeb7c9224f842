"""facekit.face.ert: our evaluation of dlib's shape predictor against dlib.shape_predictor itself.

Parity is exact (the integer points dlib returns) on every face measured: 285 faces of shared/data
(57 annotated boxes x 5 jittered rectangles), generated faces at several sizes and offsets, faces
across the image border, grey and RGB input, random small models of other sizes written in
dlib's serialization format, and exact .5 ties (where dlib's SVD-fitted rectangle transform decides).
"""

from __future__ import annotations

import glob
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import mediagen
from facekit import zoo
from facekit.face import ert

dlib = pytest.importorskip("dlib")

PARITY_MIN = 1.0  # share of faces whose 68 rounded points all equal dlib's (measured: 1.0, 570 of 570)
JITTER = 5  # rectangles per annotated face box (the box itself + jittered ones)


# ---------------------------------------------------------------- dlib serialization (writer)
def _int(v: int) -> bytes:
    neg = 0x80 if v < 0 else 0
    v = abs(int(v))
    body = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "little")
    return bytes([len(body) | neg]) + body


def _float(x: float) -> bytes:
    x = float(np.float32(x))
    if not math.isfinite(x):  # float_details' special exponents
        return _int(0) + _int(32002 if math.isnan(x) else 32000 if x > 0 else 32001)
    m, e = math.frexp(x)
    return _int(int(m * (1 << 24))) + _int(e - 24)


def _column(values) -> bytes:
    values = np.asarray(values, np.float32).ravel()
    return _int(-len(values)) + _int(-1) + b"".join(_float(v) for v in values)


def write_model(init, idx1, idx2, thresh, leaves, anchor, deltas) -> bytes:
    """dlib::serialize(shape_predictor) of the given arrays (shapes as ErtModel's)."""
    out = [_int(1), _column(init)]
    n_lev, n_tree, n_split = idx1.shape
    out.append(_int(n_lev))
    for c in range(n_lev):
        out.append(_int(n_tree))
        for t in range(n_tree):
            out.append(_int(n_split))
            for s in range(n_split):
                out += [_int(idx1[c, t, s]), _int(idx2[c, t, s]), _float(thresh[c, t, s])]
            out.append(_int(leaves.shape[2]))
            out += [_column(leaf) for leaf in leaves[c, t]]
    out.append(_int(n_lev))
    for c in range(n_lev):
        out.append(_int(anchor.shape[1]) + b"".join(_int(a) for a in anchor[c]))
    out.append(_int(n_lev))
    for c in range(n_lev):
        out.append(_int(deltas.shape[1]) + b"".join(_float(v) for v in deltas[c].ravel()))
    return b"".join(out)


def random_model(seed: int, n_points: int = 7, n_lev: int = 4, n_tree: int = 9, depth: int = 3, n_pix: int = 30,
                 special: bool = False):
    """Random model arrays (ErtModel's shapes); ``special``: some thresholds NaN, +inf, -inf."""
    rng = np.random.default_rng(seed)
    n_split = 2 ** depth - 1
    init = rng.uniform(0.1, 0.9, (n_points, 2)).astype(np.float32)
    idx1 = rng.integers(0, n_pix, (n_lev, n_tree, n_split))
    idx2 = rng.integers(0, n_pix, (n_lev, n_tree, n_split))
    thresh = rng.normal(0, 40, (n_lev, n_tree, n_split)).astype(np.float32)
    leaves = rng.normal(0, 0.02, (n_lev, n_tree, n_split + 1, 2 * n_points)).astype(np.float32)
    anchor = rng.integers(0, n_points, (n_lev, n_pix))
    deltas = rng.normal(0, 0.08, (n_lev, n_pix, 2)).astype(np.float32)
    if special:
        flat = thresh.reshape(-1)
        flat[rng.choice(flat.size, 30, replace=False)] = np.repeat([np.nan, np.inf, -np.inf], 10)
    return init, idx1, idx2, thresh, leaves, anchor, deltas


# ---------------------------------------------------------------- helpers
def dlib_points(sp, image, rects) -> np.ndarray:
    """int64 [n,K,2] dlib's points for each rectangle of one image."""
    out = [[(p.x, p.y) for p in sp(image, dlib.rectangle(*map(int, r))).parts()] for r in rects]
    return np.array(out, np.int64).reshape(len(out), -1, 2)


def jittered(rects, n: int, seed: int = 0) -> np.ndarray:
    """Each rectangle and n-1 shifted/scaled copies (int [len*n, 4])."""
    rng = np.random.default_rng(seed)
    out = []
    for l, t, r, b in rects:
        s = r - l
        out.append((l, t, r, b))
        for _ in range(n - 1):
            dx, dy = rng.normal(0, 0.1 * s, 2)
            h = s * math.exp(rng.normal(0, 0.15)) / 2
            cx, cy = (l + r) / 2 + dx, (t + b) / 2 + dy
            out.append((round(cx - h), round(cy - h), round(cx + h), round(cy + h)))
    return np.array(out, np.int64)


@pytest.fixture(scope="module")
def weights():
    return zoo.resolve("dlib68")


@pytest.fixture(scope="module")
def model(weights):
    # module scope runs before the per-test isolated FACEKIT_HOME: no cache file here
    return ert.load(weights, cache=False)


@pytest.fixture(scope="module")
def reference(weights):
    return dlib.shape_predictor(str(weights.path))


# ---------------------------------------------------------------- parser
def test_parses_the_68_point_model(model):
    assert model.n_points == 68
    c, t, s = model.idx1.shape
    assert (c, t, s) == (15, 500, 15)  # 15 levels of 500 trees of depth 4
    assert model.leaves.shape == (15, 500, 16, 136) and model.leaves.dtype == np.float32
    assert model.anchor.shape == (15, 500) and model.deltas.shape == (15, 500, 2)
    assert model.anchor.max() < 68 and max(model.idx1.max(), model.idx2.max()) < 500
    # the initial shape is a face in the rectangle's unit square (the chin, point 8, a little below it)
    x, y = model.initial_shape.T
    assert 0 < x.min() and x.max() < 1 and 0 < y.min() and y.argmax() == 8 and y.max() < 1.1


def test_parse_roundtrip_of_random_model():
    arrays = random_model(1, special=True)
    m = ert.ErtModel.from_bytes(write_model(*arrays))
    for got, want in zip((m.initial_shape, m.idx1, m.idx2, m.thresh, m.leaves, m.anchor, m.deltas), arrays):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cut", [0, 1, 5, 200, 0.5, -1])
def test_truncated_file_is_a_one_line_model_error(tmp_path, cut):
    data = write_model(*random_model(2))
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    path = tmp_path / "broken.dat"
    path.write_bytes(data[:n])
    with pytest.raises(zoo.ModelError) as e:
        ert.ErtModel.load(path)
    msg = str(e.value)
    assert "broken.dat" in msg and "\n" not in msg


def test_wrong_files_are_model_errors(tmp_path):
    text = tmp_path / "notes.dat"
    text.write_text("this is not a model\n" * 10)
    extra = tmp_path / "extra.dat"
    extra.write_bytes(write_model(*random_model(3)) + b"\x01\x00")
    version = tmp_path / "version.dat"
    version.write_bytes(_int(2) + write_model(*random_model(3))[2:])
    for path, what in ((text, "malformed"), (extra, "unexpected bytes"), (version, "version")):
        with pytest.raises(zoo.ModelError, match=what) as e:
            ert.ErtModel.load(path)
        assert path.name in str(e.value)
    with pytest.raises(zoo.ModelError, match="missing.dat"):
        ert.ErtModel.load(tmp_path / "missing.dat")


# ---------------------------------------------------------------- parity: random models
@pytest.mark.parametrize("seed,kw", [(10, {}), (11, {"depth": 1, "n_points": 3}), (12, {"depth": 5, "n_lev": 2}),
                                     (13, {"n_points": 1}), (14, {"special": True})])
def test_parity_random_models(tmp_path, seed, kw):
    """Random models of other sizes, written in dlib's format: dlib and we return the same points,
    on random RGB and grey images, rectangles inside, across and outside the image border."""
    path = tmp_path / "tiny.dat"
    path.write_bytes(write_model(*random_model(seed, **kw)))
    sp = dlib.shape_predictor(str(path))
    m = ert.ErtModel.load(path)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (61, 83, 3), dtype=np.uint8), rng.integers(0, 256, (40, 50), dtype=np.uint8)]
    rects, index = [], []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        for _ in range(40):
            l, t = rng.integers(-30, w), rng.integers(-30, h)
            s = rng.integers(0, 60)
            rects.append((l, t, l + s, t + rng.integers(max(0, s - 5), s + 6)))
            index.append(i)
    rects, index = np.array(rects), np.array(index)
    got = ert.round_like_dlib(m.predict(images, rects, index))
    want = np.concatenate([dlib_points(sp, im, rects[index == i]) for i, im in enumerate(images)])
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- parity: the 68-point model
def test_parity_generated_faces(model, reference):
    """mediagen faces at several sizes and offsets (RGB and grey), rectangles from dlib's own
    detector, jittered, and pushed across the image border."""
    det = dlib.get_frontal_face_detector()
    images, rects, index = [], [], []
    for size, offset, scale in [((320, 240), (0, 0), 0.85), ((640, 360), (-150, 40), 0.7),
                                ((200, 260), (30, -20), 0.9), ((480, 480), (0, 0), 0.5)]:
        im = mediagen.face_image(size, offset, scale=scale)
        found = [(d.left(), d.top(), d.right(), d.bottom()) for d in det(im)]
        assert found, f"dlib's detector finds the generated face ({size})"
        l, t, r, b = found[0]
        s = r - l
        border = [(-s // 2, t, -s // 2 + s, b), (l, im.shape[0] - s // 3, r, im.shape[0] - s // 3 + s),
                  (im.shape[1] - s // 4, -s // 4, im.shape[1] - s // 4 + s, 3 * s // 4),
                  (im.shape[1] + 5, t, im.shape[1] + 5 + s, b)]  # entirely outside
        for img in (im, np.ascontiguousarray(im.mean(axis=2).astype(np.uint8))):
            rr = np.concatenate([jittered(found, 6, seed=len(images)), np.array(border)])
            images.append(img)
            rects.append(rr)
            index += [len(images) - 1] * len(rr)
    rects = np.concatenate(rects)
    index = np.array(index)
    got = ert.round_like_dlib(model.predict(images, rects, index))
    want = np.concatenate([dlib_points(reference, im, rects[index == i]) for i, im in enumerate(images)])
    np.testing.assert_array_equal(got, want)


def _annotated_boxes(data):
    """(image path, dlib rectangle) for the face boxes of shared/data's landmark sets."""
    d = data / "landmarks"
    items = []
    for name in ("training.xml", "testing.xml"):
        for im in ET.parse(d / "dlib_pascal" / name).getroot().iter("image"):
            for b in im.iter("box"):
                l, t, w, h = (int(b.get(k)) for k in ("left", "top", "width", "height"))
                items.append((d / "dlib_pascal" / im.get("file"), (l, t, l + w - 1, t + h - 1)))
    for j in sorted(glob.glob(str(d / "mmpose" / "*" / "test_*.json"))):
        meta = json.load(open(j))
        files = {i["id"]: i["file_name"] for i in meta["images"]}
        for a in meta["annotations"]:
            x, y, w, h = a["bbox"]
            items.append((d / "mmpose" / j.split("/")[-2] / files[a["image_id"]],
                          (round(x), round(y), round(x + w), round(y + h))))
    return items


def test_parity_real_faces(shared_data, model, reference):
    """Every annotated face box of shared/data (dlib_pascal, mmpose sets) and jittered copies:
    measured 285 of 285 faces identical to dlib (RGB), and the same on grey versions."""
    import cv2

    items = _annotated_boxes(shared_data)
    assert len(items) >= 50
    paths = sorted({p for p, _ in items})
    images = [np.ascontiguousarray(cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1]) for p in paths]
    rects = jittered([b for _, b in items], JITTER)
    index = np.repeat([paths.index(p) for p, _ in items], JITTER)
    for imgs in (images, [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images]):
        got = ert.round_like_dlib(model.predict(imgs, rects, index))
        want = np.zeros_like(got)
        for i, im in enumerate(imgs):
            want[index == i] = dlib_points(reference, im, rects[index == i])
        same = (got == want).all(axis=(1, 2))
        print(f"identical faces: {same.sum()} / {len(same)}")
        assert same.mean() >= PARITY_MIN
        assert np.abs(got - want).max() <= 1


def test_batching_and_inputs(model, reference):
    """An empty batch; a single image given as an array; results independent of the batch."""
    assert model.predict([], np.zeros((0, 4), int), np.zeros(0, int)).shape == (0, 68, 2)
    im = mediagen.face_image((320, 240))
    rects = jittered([(110, 70, 210, 170)], 40, seed=5)
    full = model.predict(im, rects)
    assert full.dtype == np.float64 and full.shape == (40, 68, 2)
    one = np.concatenate([model.predict([im], rects[i:i + 1], [0]) for i in range(len(rects))])
    np.testing.assert_array_equal(full, one)
    np.testing.assert_array_equal(ert.round_like_dlib(full), dlib_points(reference, im, rects))
    # non-contiguous views are read as the images they show
    big = np.zeros((300, 400, 3), np.uint8)
    big[30:270, 40:360] = im
    np.testing.assert_array_equal(model.predict([big[30:270, 40:360]], rects, np.zeros(40, int)), full)
    with pytest.raises(ValueError):
        model.predict([im.astype(np.float32)], rects[:1], [0])
    with pytest.raises(ValueError):
        model.predict([im], rects[:2], [0, 1])


def test_round_like_dlib():
    np.testing.assert_array_equal(ert.round_like_dlib(np.array([0.5, -0.5, 1.49, -1.5, 2.5])), [1, 0, 1, -1, 3])


def test_cache_file(weights, tmp_path, monkeypatch):
    """The parsed arrays are kept under FACEKIT_HOME keyed by the weights' sha256 and read back
    instead of parsing; a damaged cache file is replaced."""
    monkeypatch.setattr(ert, "_CACHE", {})
    path = ert.cache_file(weights)
    assert weights.sha256 in path.name and str(path).startswith(str(zoo.home()))
    first = ert.load(weights)
    assert path.is_file()
    monkeypatch.setattr(ert, "_CACHE", {})
    with monkeypatch.context() as mp:
        mp.setattr(ert.ErtModel, "load", classmethod(lambda cls, p: pytest.fail("parsed again")))
        second = ert.load(weights)
    for k in ert._ARRAYS:
        np.testing.assert_array_equal(getattr(first, k), getattr(second, k))
    monkeypatch.setattr(ert, "_CACHE", {})
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    third = ert.load(weights)
    np.testing.assert_array_equal(third.leaves, first.leaves)
    assert path.stat().st_size > 60e6 and not list(path.parent.glob(".*tmp"))


def test_threads_give_the_same_points(model):
    im = mediagen.face_image((320, 240))
    rects = jittered([(110, 70, 210, 170)], 9, seed=7)
    np.testing.assert_array_equal(model.predict(im, rects, threads=3), model.predict(im, rects))


def test_ties_round_as_dlib(tmp_path):
    """dlib maps the normalised shape to the image with a transform it fits through its own SVD
    (unnormalizing_tform = Q * pinv(unit-square corners)): [[w,0],[0,h]] + (left,top) only to ~1e-16,
    so a coordinate landing exactly on .5 may round down. A model without trees whose 64 points lie
    on a 1/128 grid (.5 ties are frequent) on 5600 rectangles: we round every coordinate as dlib,
    ties included, where the exact transform differs from dlib on hundreds of them."""
    k = 64
    xs = ((2 * np.arange(k) + 1) / 128).astype(np.float32)
    e = np.zeros((0, 0, 0), np.int64)
    path = tmp_path / "grid.dat"
    path.write_bytes(write_model(np.stack([xs, xs[::-1]], 1), e, e, e.astype(np.float32),
                                 np.zeros((0, 0, 1, 2 * k), np.float32), np.zeros((0, 0), np.int64),
                                 np.zeros((0, 0, 2), np.float32)))
    sp = dlib.shape_predictor(str(path))
    m = ert.ErtModel.load(path)
    im = np.zeros((8, 8), np.uint8)
    rects = np.array([(l, l + 5, l + w, l + 5 + w + (w % 7) - 3) for w in range(700)
                      for l in (0, 1, -3, 17, 100, 1001, -250, 12345)])
    want = dlib_points(sp, im, rects)
    got = ert.round_like_dlib(m.predict(im, rects))
    np.testing.assert_array_equal(got, want)
    # the exact transform: the same points but for ties
    l, t, r, b = (rects[:, i, None].astype(np.float64) for i in range(4))
    exact = np.stack([(r - l) * xs[None] + l, (b - t) * xs[::-1][None] + t], -1)
    tie = (exact % 1) == 0.5
    naive = ert.round_like_dlib(exact)
    print(f"ties {tie.sum()} of {tie.size} coordinates; exact transform differs from dlib on {(naive != want).sum()}")
    assert tie.sum() > 1000 and (naive != want).sum() > 100 and not ((naive != want) & ~tie).any()


def test_unit_square_pinv():
    """dlib's pinv of the unit-square corners: inv(P) to a few ulps, and not exactly it; our port of
    dlib's svd4 is a singular value decomposition."""
    exact = np.array([[-1, 0, 1], [1, -1, 0], [0, 1, 0]], np.float64)
    assert np.abs(ert.UNIT_SQUARE_PINV - exact).max() < 1e-15
    assert (ert.UNIT_SQUARE_PINV != exact).any()
    rng = np.random.default_rng(0)
    for a in [np.array(ert.UNIT_SQUARE_CORNERS)] + [rng.normal(size=(r, c)) for r, c in ((2, 2), (3, 3), (5, 3))]:
        m, n = a.shape
        u, q, v, e = np.zeros((m, n)), np.zeros(n), np.zeros((n, n)), np.zeros(n)
        assert ert._svd4(a, u, q, v, e) == 0
        np.testing.assert_allclose(u @ np.diag(q) @ v.T, a, atol=1e-14)
        np.testing.assert_allclose(sorted(q), sorted(np.linalg.svd(a)[1]), rtol=1e-13)
        np.testing.assert_allclose(v.T @ v, np.eye(n), atol=1e-14)
