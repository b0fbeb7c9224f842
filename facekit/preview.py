"""``facekit preview``: draw what facekit found over the video, as a contact sheet (PNG/JPG) of
sampled frames or as a video (MP4), so a dataset can be checked by looking.

Drawn: face boxes coloured by track (with the track id and score), the 68 landmarks, the five
key points, head-pose axes (x red, y green, z blue) when ``faces/pose`` is stored, the parsing
masks (each label in its colour, ``PARSING_ALPHA`` opaque, background left clear) when
``faces/parsing`` is stored, and the frame time. Results come from a store (``--from feats.h5``) or are computed on the fly.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from .media import iter_frames, probe
from .store import Store, Video

SHEET_FRAMES = 12  # frames in a contact sheet
SHEET_COLUMNS = 4
SHEET_TILE_WIDTH = 480  # pixels per tile
VIDEO_CRF = 20  # x264 quality of preview videos
PARSING_ALPHA = 0.45  # opacity of the parsing overlay


class PreviewError(Exception):
    pass


def _colour(track: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per track id (golden-ratio hue walk)."""
    import colorsys

    if track < 0:
        return (255, 255, 255)
    r, g, b = colorsys.hsv_to_rgb((track * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay_parsing(img: np.ndarray, parsing: np.ndarray, affine: np.ndarray, labels) -> np.ndarray:
    """Blend label masks [n,S,S] (crop coordinates, ``affine`` [n,2,3] crop -> image) over ``img``
    in place: each label in its colour (``facekit.face.parse.COLOURS``), background left clear."""
    import cv2

    from .face.parse import palette

    pal = palette(labels).astype(np.float32)
    h, w = img.shape[:2]
    for m, a in zip(parsing, affine):
        if not np.isfinite(a).all():
            continue
        lab = cv2.warpAffine(np.ascontiguousarray(m), np.asarray(a, np.float64), (w, h), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        on = lab > 0
        if on.any():
            img[on] = ((1 - PARSING_ALPHA) * img[on] + PARSING_ALPHA * pal[np.minimum(lab[on], len(pal) - 1)]
                       ).round().astype(np.uint8)
    return img


def draw(rgb: np.ndarray, faces: dict[str, np.ndarray], t_sec: float | None = None,
         pose_axes: np.ndarray | None = None, parsing_labels=None) -> np.ndarray:
    """Draw one frame's faces (arrays of ``Faces.in_frame``, display pixels) on a copy of ``rgb``.

    pose_axes: [n,4,2] projected origin and x/y/z axis end points per face, when available.
    parsing_labels: the ``labels`` of ``faces/parsing``; with it (and ``parsing``/``affine`` in
    ``faces``) the masks are blended in first.
    """
    import cv2

    img = np.ascontiguousarray(rgb.copy())
    h, w = img.shape[:2]
    if parsing_labels is not None and "parsing" in faces and "affine" in faces and len(faces["parsing"]):
        overlay_parsing(img, faces["parsing"], faces["affine"], parsing_labels)
    th = max(1, round(max(h, w) / 400))
    n = len(faces.get("box", []))
    for j in range(n):
        track = int(faces["track"][j]) if "track" in faces else -1
        col = _colour(track)
        x0, y0, x1, y1 = [int(round(v)) for v in faces["box"][j]]
        cv2.rectangle(img, (x0, y0), (x1, y1), col, th, cv2.LINE_AA)
        label = (f"#{track} " if track >= 0 else "") + (f"{faces['score'][j]:.2f}" if "score" in faces else "")
        cv2.putText(img, label, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * th, col, th, cv2.LINE_AA)
        if "landmarks" in faces:
            for x, y in faces["landmarks"][j][:, :2]:
                if np.isfinite(x) and np.isfinite(y):
                    cv2.circle(img, (int(round(x)), int(round(y))), th, (0, 255, 0), -1, cv2.LINE_AA)
        if "kps5" in faces:
            for x, y in faces["kps5"][j]:
                cv2.circle(img, (int(round(x)), int(round(y))), th + 1, (255, 64, 64), -1, cv2.LINE_AA)
        if pose_axes is not None:
            o = tuple(int(round(v)) for v in pose_axes[j, 0])
            for k, c in ((1, (255, 0, 0)), (2, (0, 255, 0)), (3, (0, 0, 255))):
                cv2.line(img, o, tuple(int(round(v)) for v in pose_axes[j, k]), c, th + 1, cv2.LINE_AA)
    if t_sec is not None:
        cv2.putText(img, f"{t_sec:.2f} s", (6, 18 * th), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * th, (255, 255, 255),
                    th + 1, cv2.LINE_AA)
    return img


def _pose_axes(faces: dict, size: tuple[int, int]) -> np.ndarray | None:
    if "pose" not in faces or "landmarks" not in faces or not len(faces["pose"]):
        return None
    try:
        from .face.pose import pose_axes_2d
    except ImportError:
        return None
    box = faces["box"]
    return pose_axes_2d(faces["pose"], faces["landmarks"][:, 30, :2], 0.5 * (box[:, 2] - box[:, 0]))


def _parsing_labels(v: Video):
    """The label names of the video's ``faces/parsing``, or None when it has none."""
    f = v.faces
    if f.group is None or "parsing" not in f.group:
        return None
    return f.attrs("parsing").get("labels")


def _find_video(st: Store, src: str) -> Video:
    real = os.path.realpath(src)
    for key in st:
        v = st[key]
        if key == src or os.path.realpath(v.attrs.get("source_path", "")) == real:
            return v
    raise PreviewError(f"{src}: not in store {st.path} (run facekit extract on it first, or omit --from)")


def preview(src: str | os.PathLike, out: str | os.PathLike, store_path: str | os.PathLike | None = None,
            n_frames: int = SHEET_FRAMES, columns: int = SHEET_COLUMNS, stages: str | None = None,
            progress: bool = False) -> Path:
    """Write a contact sheet (``out`` .png/.jpg) or an annotated video (``out`` .mp4/.mkv) of ``src``.

    Without ``store_path`` the default stages are computed into a temporary store first.
    Returns the path written.
    """
    src, out = os.fspath(src), Path(out)
    ext = out.suffix.lower()
    if ext not in (".png", ".jpg", ".jpeg", ".mp4", ".mkv", ".mov"):
        raise PreviewError(f"{out}: give a .png/.jpg (contact sheet) or .mp4/.mkv (video) output")
    with tempfile.TemporaryDirectory(prefix="facekit-preview-") as tmp:
        if store_path is None:
            from .engine import extract
            from .stages import available

            wanted = stages or ",".join(s for s in ("detect", "track", "landmarks", "pose") if s in available())
            tmp_store = Path(tmp) / "preview.h5"
            s = extract([src], tmp_store, stages=wanted, progress=progress)
            if not s.ok:
                raise PreviewError(s.failed[0].error if s.failed[0].error.startswith(src) else
                                   f"{src}: {s.failed[0].error}")
            store_path = tmp_store
        with Store(store_path) as st:
            v = _find_video(st, src)
            if v.status != "done":
                raise PreviewError(f"{src}: failed in {store_path}: {v.error}")
            if ext in (".png", ".jpg", ".jpeg"):
                _sheet(src, v, out, n_frames, columns)
            else:
                _video(src, v, out)
    return out


def _frames_of(src: str, v: Video, wanted_rows: set[int] | None = None):
    """Yield (row, rgb at display size, t) for the stored frame rows (same sampling as the run)."""
    import cv2

    fa = v.frames.attrs
    info = probe(src, frame_rate=fa.get("frame_rate", 30.0))
    stored_t = v.frames.t
    row = 0
    for batch in iter_frames(src, fps=fa.get("fps") or None, max_side=fa.get("max_side") or None, info=info,
                             frame_rate=fa.get("frame_rate", 30.0)):
        for rgb, t in zip(batch.rgb, batch.t_sec):
            if row >= len(stored_t):
                return
            if wanted_rows is None or row in wanted_rows:
                if batch.scale != 1.0:
                    rgb = cv2.resize(rgb, (info.width, info.height), interpolation=cv2.INTER_LINEAR)
                yield row, rgb, float(t)
            row += 1


def _sheet(src, v: Video, out: Path, n_frames: int, columns: int) -> None:
    import cv2

    n_rows_total = len(v.frames)
    if n_rows_total == 0:
        raise PreviewError(f"{src}: no frames stored")
    counts = v.faces.per_frame_counts() if len(v.faces) else np.zeros(n_rows_total, int)
    picks = np.unique(np.linspace(0, n_rows_total - 1, min(n_frames, n_rows_total)).round().astype(int))
    tiles = []
    for row, rgb, t in _frames_of(src, v, set(picks.tolist())):
        faces = v.faces.in_frame(row) if counts[row] else {}
        img = draw(rgb, faces, t, _pose_axes(faces, (rgb.shape[1], rgb.shape[0])), _parsing_labels(v))
        s = SHEET_TILE_WIDTH / img.shape[1]
        tiles.append(cv2.resize(img, (SHEET_TILE_WIDTH, max(1, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA))
    th = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)], axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(out.suffix, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PreviewError(f"{out}: could not encode the contact sheet")
    buf.tofile(str(out))


def _video(src, v: Video, out: Path) -> None:
    import av

    counts = v.faces.per_frame_counts() if len(v.faces) else np.zeros(len(v.frames), int)
    labels = _parsing_labels(v)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part{out.suffix}")
    try:
        with av.open(str(tmp), "w") as container:
            stream = None
            for row, rgb, t in _frames_of(src, v):
                faces = v.faces.in_frame(row) if counts[row] else {}
                img = draw(rgb, faces, t, _pose_axes(faces, (rgb.shape[1], rgb.shape[0])), labels)
                if stream is None:
                    stream = container.add_stream("libx264", rate=Fraction(1000, 1))
                    stream.width, stream.height = img.shape[1] // 2 * 2, img.shape[0] // 2 * 2
                    stream.pix_fmt = "yuv420p"
                    stream.time_base = Fraction(1, 1000)
                    stream.options = {"crf": str(VIDEO_CRF)}
                    last_pts = -1
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: stream.height, : stream.width]),
                                                   format="rgb24")
                pts = max(last_pts + 1, int(round(t * 1000)))  # real timestamps, VFR kept
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                last_pts = pts
                for p in stream.encode(frame):
                    container.mux(p)
            if stream is not None:
                for p in stream.encode():
                    container.mux(p)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
