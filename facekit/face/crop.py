"""The ``align`` and ``crop`` stages.

``align`` maps every face onto a crop template and stores ``faces/affine`` [N,2,3] float32, the
**crop -> image** similarity (display pixels of the source), so anything found in a crop maps back
with ``align.transform_points(affine, pts)``. Templates (``--align-template``):

* ``arcface`` (default): the five detector key points onto insightface's ArcFace template
  (112 x 112 by default), what identity and most expression backbones expect;
* ``ffhq``: the FFHQ recipe from the 68 landmarks (whole face with margin, 256 x 256 by default).

``crop`` warps the aligned crops (bilinear, black border) into ``faces/crop`` [N,S,S,3] uint8,
chunked and gzip-compressed, and/or writes them as image files (``--images DIR``,
``DIR/<video key>/<track>/<frame row>_<face>.jpg``) and, with ``--track-videos``, one H.264 video
per track (``DIR/<video key>/track<id>.mp4``, the crops at their frames' real timestamps).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import device, stages
from . import align

TRACK_VIDEO_CRF = 18  # x264 quality of --track-videos
CROP_CHUNK = 16  # crops per HDF5 chunk
# gzip level of faces/crop (portable: every HDF5 reader has gzip) where zlib compresses: the last
# partial chunk (HDF5 itself), every chunk without python-isal (store.deflate compresses whole chunks
# with ISA-L otherwise). Photographs barely compress: on real 112 px face crops zlib level 1 gives
# 1.48x in 1.3 ms a crop, level 4 (h5py's default, used before) 1.51x in 1.9 ms
CROP_GZIP = 1
JPEG_QUALITY = 95


def _template_params(config) -> dict:
    name = config.align_template
    return {"template": name, "size": int(config.crop_size or align.DEFAULT_SIZE[name]),
            "margin": float(config.crop_margin)}


def image_to_crop(faces: dict, config) -> np.ndarray:
    """[N,2,3] float64 image -> crop affines (display pixels) for the faces of a batch."""
    p = _template_params(config)
    n = len(faces["frame"])
    if n == 0:
        return np.zeros((0, 2, 3))
    if p["template"] == "ffhq":
        return align.ffhq_quad_affine(faces["landmarks"][:, :, :2], p["size"], p["margin"])
    return align.similarity_from_points(faces["kps5"], align.template("arcface", p["size"], p["margin"]))


@stages.register
class AlignStage(stages.Stage):
    name = "align"
    consumes = "frames"
    requires = ("detect", "landmarks")
    outputs = ("faces/affine",)

    @property
    def params(self) -> dict:
        return _template_params(self.config)

    def begin(self, writer, info) -> None:
        p = self.params
        writer.create("faces/affine", (2, 3), "f4", attrs={
            **p, "direction": "crop -> image", "units": "pixels",
            "template_points": align.template(p["template"], p["size"], p["margin"]).tolist(),
            "points_from": "faces/landmarks (FFHQ quad)" if p["template"] == "ffhq" else "faces/kps5"})

    def on_frames(self, batch, row0: int, writer) -> None:
        m = image_to_crop(batch.faces, self.config)
        batch.faces["affine"] = align.invert_affine(m).astype(np.float32) if len(m) else np.zeros((0, 2, 3), np.float32)
        self.write_faces(writer, batch)


@stages.register
class CropStage(stages.Stage):
    name = "crop"
    consumes = "frames"
    requires = ("align",)
    outputs = ("faces/crop",)

    def __init__(self, config):
        super().__init__(config)
        if config.images and config.image_format not in ("jpg", "png"):
            raise stages.StageError(f"--format {config.image_format!r}: crops are written as jpg or png")
        if config.track_videos and not config.images:
            raise stages.StageError("--track-videos writes next to the crop images: give --images DIR")
        self._cp = device.cupy_module(config)  # CUDA: the CuPy kernel (raises when CuPy cannot use it)
        self.on_gpu = self._cp is not None

    @property
    def params(self) -> dict:
        c = self.config
        return {**_template_params(c), "border": "constant 0", "interpolation": "bilinear",
                "store": c.crops_in_store,
                # file outputs too: a re-run that asks for images must not be skipped as finished
                "images": str(Path(c.images).resolve()) if c.images else None,
                "format": c.image_format if c.images else None,
                "image_files": bool(c.images and c.write_images), "track_videos": bool(c.track_videos),
                # the GPU kernel equals the OpenCV path within 1 grey level (in practice bit-exact)
                **({"device": "cuda"} if self.on_gpu else {})}

    def begin(self, writer, info) -> None:
        s = _template_params(self.config)["size"]
        self._store = self.config.crops_in_store
        if self._store:
            writer.create("faces/crop", (s, s, 3), "u1", compression="gzip", compression_opts=CROP_GZIP,
                          chunk_rows=CROP_CHUNK,
                          attrs={**self.params, "colour": "RGB"})
        self._dir = None
        if self.config.images:
            from ..inputs import safe_key

            root = Path(self.config.images).resolve()
            self._dir = (root / safe_key(writer.key)).resolve()
            if root not in self._dir.parents:
                raise stages.StageError(f"{writer.key}: image directory would escape {root}")
        if self._dir is not None and self._dir.is_dir():
            import shutil

            shutil.rmtree(self._dir)  # files of an earlier run of this video would be stale
        self._videos = _TrackVideos(self._dir) if self.config.track_videos else None

    def on_frames(self, batch, row0: int, writer) -> None:
        import cv2

        f = batch.faces
        s = _template_params(self.config)["size"]
        n = len(f["frame"])
        crops = np.zeros((n, s, s, 3), np.uint8)
        if n:
            # the affines are in display pixels; the batch images are scaled by batch.scale
            # image->crop from the stored float32 faces/affine, so a crop computed now and one
            # computed from a reused align are the same bytes; then display -> processed pixels
            # (x_display = (x_processed + 0.5) / scale - 0.5)
            m = align.invert_affine(f["affine"].astype(np.float64))
            k = 0.5 / batch.scale - 0.5
            m[:, :, 2] += m[:, :, 0] * k + m[:, :, 1] * k
            m[:, :, :2] /= batch.scale
            if self.on_gpu:  # every crop of the batch in one kernel launch
                from .warp_gpu import warp_crops_cuda

                used, pos = np.unique(f["frame"] - row0, return_inverse=True)
                crops[:] = warp_crops_cuda(batch.rgb[used], pos, m, s).get()
            else:
                for i in np.unique(f["frame"]):
                    rows = np.flatnonzero(f["frame"] == i)
                    crops[rows] = align.warp_crops(batch.rgb[i - row0], m[rows], s)
        if self._store:
            writer.append("faces/crop", crops)
        if self._videos is not None and n:
            tracks = f.get("track")
            for k in range(n):
                tid = int(tracks[k]) if tracks is not None else 0
                self._videos.add(tid, float(batch.t_sec[f["frame"][k] - row0]), crops[k])
        if self._dir is not None and n and self.config.write_images:
            params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if self.config.image_format == "jpg" else []
            for k, path in enumerate(crop_image_paths(self._dir, f, self.config.image_format)):
                path.parent.mkdir(parents=True, exist_ok=True)
                ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(crops[k], cv2.COLOR_RGB2BGR), params)
                if not ok:
                    raise OSError(f"cannot encode {path}")
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                buf.tofile(str(tmp))
                os.replace(tmp, path)

    def end(self, writer) -> None:
        if self._videos is not None:
            self._videos.close()
        # --track-rejoin merged tracks after their crops were written: move the files to the new ids
        mapping = getattr(writer, "rejoined", None)
        if self._dir is not None and mapping and self._dir.is_dir():
            _rename_track_dirs(self._dir, mapping)
        # --max-faces/--primary dropped whole tracks after their crops were written: remove their files
        if self._dir is not None and writer.filtered and self._dir.is_dir():
            import shutil

            kept = {f"track{t:04d}" for t in writer.filtered.get("kept_tracks", [])}
            for d in self._dir.iterdir():
                if d.name.startswith("track") and d.name.split(".")[0] not in kept:
                    shutil.rmtree(d) if d.is_dir() else d.unlink()


def crop_image_paths(folder: Path, faces: dict, ext: str, suffix: str = "") -> list[Path]:
    """The image file of each face of a batch: ``folder/track<id>/<frame row>_<j><suffix>.<ext>``
    (``faces/`` instead of ``track<id>/`` without tracks; ``j`` = the face's index in its frame).
    ``--masks`` writes ``..._<j>_mask.png`` beside each crop."""
    n = len(faces["frame"])
    tracks = faces.get("track")
    j_in_frame = np.zeros(n, int)
    for i in np.unique(faces["frame"]):
        rows = np.flatnonzero(faces["frame"] == i)
        j_in_frame[rows] = np.arange(len(rows))
    out = []
    for k in range(n):
        sub = f"track{int(tracks[k]):04d}" if tracks is not None else "faces"
        out.append(folder / sub / f"{int(faces['frame'][k]):06d}_{j_in_frame[k]}{suffix}.{ext}")
    return out
def _rename_track_dirs(folder: Path, mapping: dict) -> None:
    """Rename ``track<old>`` folders to ``track<new>`` (``mapping`` old id -> new id), merging the
    files of re-joined tracks (they never share a frame, so file names never clash)."""
    staged = []
    for old, new in mapping.items():
        d = folder / f"track{int(old):04d}"
        if d.is_dir():
            tmp = folder / f".rejoin{int(old):04d}.{os.getpid()}"
            d.rename(tmp)
            staged.append((tmp, int(new)))
    for tmp, new in staged:
        dest = folder / f"track{new:04d}"
        dest.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, dest / f.name)
        tmp.rmdir()


class _TrackVideos:
    """One H.264 video per track, fed crop by crop (pts = frame time in ms, so VFR is kept)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._open: dict[int, tuple] = {}  # track id -> (container, stream, tmp path, last pts)

    def add(self, track: int, t_sec: float, crop: np.ndarray) -> None:
        import av
        from fractions import Fraction

        if track not in self._open:
            self.folder.mkdir(parents=True, exist_ok=True)
            final = self.folder / f"track{track:04d}.mp4"
            tmp = final.with_name(f".{final.name}.{os.getpid()}.part.mp4")
            c = av.open(str(tmp), "w")
            st = c.add_stream("libx264", rate=Fraction(1000, 1))
            st.width, st.height = crop.shape[1] // 2 * 2, crop.shape[0] // 2 * 2
            st.pix_fmt, st.time_base = "yuv420p", Fraction(1, 1000)
            st.options = {"crf": str(TRACK_VIDEO_CRF)}
            self._open[track] = [c, st, tmp, final, -1]
        c, st, _tmp, _final, last = entry = self._open[track]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(crop[: st.height, : st.width]), format="rgb24")
        from fractions import Fraction

        frame.pts, frame.time_base = max(last + 1, int(round(t_sec * 1000))), Fraction(1, 1000)
        entry[4] = frame.pts
        for p in st.encode(frame):
            c.mux(p)

    def close(self) -> None:
        for c, st, tmp, final, _ in self._open.values():
            for p in st.encode():
                c.mux(p)
            c.close()
            os.replace(tmp, final)
        self._open.clear()
