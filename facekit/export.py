"""``facekit export``: a store -> one file per video and stream (``.npy`` or ``.csv``), on one clock.

Layout (``key`` = the video's key in the store, its relative path, so folders are kept)::

    DIR/manifest.json                    what was written: clock, method, per-video streams and shapes
    DIR/<key>/t.npy, frame.npy           npy: the clock [R] float64 seconds (frame: decoded frame number,
                                         on the video clock)
    DIR/<key>/<stream>.npy               [R, ...] float32/float64, NaN rows where there is no data
    DIR/<key>/<stream>.csv               header ``t[,frame],<stream>_0,<stream>_1,...`` (trailing dims
                                         flattened in C order), one line per row

Streams are named like their store paths with ``/`` replaced by ``.``: audio streams by their
stage name (``mel``, ``whisper``, ``vggish``), face datasets as ``faces.box``, ``faces.landmarks``,
``faces.embed.sface``. Clocks: ``video`` (rows = the frames of ``frames/``; audio resampled with
``method``; faces reduced to one face per frame, the primary track's or the largest), an audio
stream's name (rows = its windows; every stream resampled onto it), or ``native`` (each stream
keeps its own rows: audio windows, or the face table with ``faces.frame``/``faces.track``
columns; each stream then gets its own ``<stream>.t.npy``). Failed videos are listed in the
manifest and skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import clock as clock_mod
from .store import STATUS_DONE, open as open_store

FORMATS = ("npy", "csv")
FACE_SELECTIONS = ("primary", "largest")
#: Face datasets left out unless named in ``streams`` (images, or per-face geometry of the crop).
FACE_STREAMS_NOT_BY_DEFAULT = ("crop", "parsing", "affine", "frame", "track")


class ExportError(Exception):
    """The export cannot start (bad option, unknown stream or clock, unreadable store)."""


def available_streams(video) -> list[str]:
    """Stream names a video can export: audio stages, then ``faces.<dataset>`` (embeddings included)."""
    names = list(video.audio)
    faces = video.group.get("faces")
    if faces is not None:
        def walk(g, prefix):
            for k, v in g.items():
                if hasattr(v, "shape"):
                    names.append(f"faces.{prefix}{k}")
                else:
                    walk(v, f"{prefix}{k}.")
        walk(faces, "")
    return names


def _default_streams(video, clock: str) -> list[str]:
    skip = FACE_STREAMS_NOT_BY_DEFAULT[:3] if clock == "native" else FACE_STREAMS_NOT_BY_DEFAULT
    return [s for s in available_streams(video) if not (s.startswith("faces.") and s.split(".", 1)[1] in skip)]


def _store_name(stream: str) -> str:
    return stream.replace(".", "/") if stream.startswith("faces.") else stream


def _write(path: Path, data: np.ndarray, t: np.ndarray, fmt: str, stream: str, index=None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "npy":
        with open(tmp, "wb") as f:
            np.save(f, data)
    else:
        flat = data.reshape(len(data), -1) if data.ndim > 1 else data.reshape(-1, 1)
        cols = ["t"] + (["frame"] if index is not None else [])
        cols += [stream] if data.ndim == 1 else [f"{stream}_{i}" for i in range(flat.shape[1])]
        lead = [np.asarray(t, np.float64).reshape(-1, 1)]
        if index is not None:
            lead.append(np.asarray(index, np.float64).reshape(-1, 1))
        table = np.concatenate(lead + [flat.astype(np.float64)], axis=1) if len(t) else np.zeros((0, len(cols)))
        fmts = ["%.6f"] + (["%d"] if index is not None else []) + ["%.9g"] * flat.shape[1]
        with open(tmp, "w") as f:
            f.write(",".join(cols) + "\n")
            np.savetxt(f, table, delimiter=",", fmt=fmts)
    os.replace(tmp, path)


def export(store_path, to, format: str = "npy", clock: str = "video", method: str = "nearest",  # noqa: A002
           streams=None, faces: str = "primary", keys=None, progress: bool | None = None) -> dict:
    """Write the streams of every finished video of ``store_path`` below ``to``; returns the manifest.

    ``format``: npy or csv. ``clock``: ``video``, an audio stream name, or ``native``. ``method``:
    nearest, linear or mean (``facekit.clock``). ``streams``: names (``mel``, ``faces.landmarks``...)
    or None for every audio stream and face dataset except crops/masks/affines. ``faces``: primary
    or largest (one face per frame; videos without tracks use largest, noted in the manifest).
    ``keys``: only these videos.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    if method not in clock_mod.METHODS:
        raise ExportError(f"unknown method {method!r} (choose from {', '.join(clock_mod.METHODS)})")
    if faces not in FACE_SELECTIONS:
        raise ExportError(f"unknown face selection {faces!r} (choose from {', '.join(FACE_SELECTIONS)})")
    if isinstance(streams, str):
        streams = [s.strip() for s in streams.split(",") if s.strip()]
    to = Path(to)
    manifest = {"store": str(store_path), "format": format, "clock": clock, "method": method,
                "faces": faces, "videos": {}, "failed": {}, "skipped": {}}
    try:
        st = open_store(store_path)
    except Exception as e:  # noqa: BLE001 - h5py/OS errors: one line for the user
        raise ExportError(f"{store_path}: cannot read the store ({e})") from None
    with st:
        todo = list(st) if keys is None else list(keys)
        missing = [k for k in todo if k not in st]
        if missing:
            raise ExportError(f"no video {missing[0]!r} in {store_path}")
        if streams:  # every named stream must exist somewhere (a typo must not export nothing)
            known = set()
            for k in todo:
                if st[k].status == STATUS_DONE:
                    known.update(available_streams(st[k]))
            unknown = [s for s in streams if s not in known]
            if unknown and known:
                raise ExportError(f"unknown stream {unknown[0]!r} (in this store: {', '.join(sorted(known))})")
        if clock not in ("video", "native") and todo:
            if not any(clock in st[k].audio for k in todo if st[k].status == STATUS_DONE):
                raise ExportError(f"unknown clock {clock!r} (video, native, or an audio stream of the store)")
        from tqdm import tqdm

        bar = tqdm(todo, desc="export", unit="video", disable=(progress is False) or (progress is None and not _tty()))
        for key in bar:
            v = st[key]
            if v.status != STATUS_DONE:
                manifest["failed"][key] = v.error or v.status
                continue
            names = list(streams) if streams else _default_streams(v, clock)
            have = set(available_streams(v))
            if clock not in ("video", "native") and clock not in v.audio:
                manifest["skipped"][key] = f"no {clock} stream (audio status: no audio?)"
                continue
            folder = to / key
            folder.mkdir(parents=True, exist_ok=True)
            entry = {}
            sel = faces
            if faces == "primary" and (v.tracks is None or "primary" not in v.tracks):
                sel = "largest"  # no track stage in this video: the largest face of each frame
                entry["faces"] = "largest (no tracks/primary)"
            index = v.frames.index if clock == "video" else None
            if clock != "native":
                t = v.clock(clock)
                if format == "npy":  # CSV files carry t (and frame) in their first columns
                    _write(folder / "t.npy", np.asarray(t, np.float64), t, "npy", "t")
                    if index is not None:
                        _write(folder / "frame.npy", np.asarray(index, np.int64), t, "npy", "frame")
                entry["rows"] = int(len(t))
            for name in names:
                if name not in have:
                    entry[name] = None  # e.g. no face stage ran for this video
                    continue
                try:
                    data, ts = v.stream(_store_name(name), clock=clock, method=method, faces=sel)
                except KeyError as e:
                    raise ExportError(f"{key}: {name}: {e.args[0]}") from None
                idx = index
                if clock == "native" and name.startswith("faces."):
                    idx = v.frames.index[v.faces["frame"]]  # the frame number of each face row
                _write(folder / f"{name}.{format}", data, ts, format, name, idx)
                if clock == "native" and format == "npy":
                    _write(folder / f"{name}.t.npy", np.asarray(ts, np.float64), ts, "npy", "t")
                entry[name] = list(data.shape)
            manifest["videos"][key] = entry
    to.mkdir(parents=True, exist_ok=True)
    tmp = to / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, to / "manifest.json")
    return manifest


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
