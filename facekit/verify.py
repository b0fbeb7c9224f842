"""``facekit verify``: check that a store is whole and says what its videos promise.

``verify(path)`` reads the index (``feats.h5``) and every shard in ``feats.h5.d/`` and returns a
report (a JSON-ready dict). A *problem* is anything that makes the store wrong or unreadable:

- a shard that does not open (truncated, not HDF5), holds no video or more than one, has a file
  name that is not its key's, or an unsafe key;
- the index missing, unreadable, or not matching the shards: a shard the index does not list, an
  entry whose shard is gone, an entry whose key/status/error/mtime differ from its shard (stale), a
  duplicated key, a missing or wrong external link;
- a finished (``status == "done"``) video without a dataset its recorded ``stage_params`` promise
  (detect -> faces/frame,box,score,kps5; track -> faces/track, frames/shot, tracks/; landmarks ->
  faces/landmarks; align -> faces/affine; pose -> faces/pose; crop -> faces/crop unless its params
  say ``store: false``; mel -> audio/mel/data,t), or with inconsistent lengths (all ``faces/*``
  share N rows; ``frames/t``, ``frames/index`` and ``frames/shot`` share F rows with ``t`` finite
  and increasing; ``faces/frame`` non-decreasing within [0, F); audio ``data``/``t`` share T rows;
  ``n_frames``/``n_faces`` attributes equal to F/N);
- a failed video without an error message, or a video with an unknown status;
- (unless ``read_data=False``) a dataset whose stored data cannot be read back.

*Warnings* do not make a store wrong: temporary files left by a run in progress or a killed one
(the next run removes its own host's), stages this version does not know, unexpected files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import store
from .store import SHARD_SUFFIX, STATUS_DONE, STATUS_FAILED, TMP_SUFFIX, StoreError

#: what each stage promises in a finished video: dataset paths (relative to the video group),
#: groups (a trailing "/"), and the row-shape tail of the face datasets
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "detect": ("frames/t", "frames/index", "faces/frame", "faces/box", "faces/score", "faces/kps5"),
    "track": ("frames/t", "frames/index", "faces/track", "frames/shot", "tracks/"),
    "landmarks": ("frames/t", "frames/index", "faces/landmarks"),
    "align": ("frames/t", "frames/index", "faces/affine"),
    "pose": ("frames/t", "frames/index", "faces/pose"),
    "crop": ("frames/t", "frames/index", "faces/crop"),
    "parse": ("frames/t", "frames/index", "faces/parsing"),
    "embed": ("frames/t", "frames/index", "faces/embed/"),
    "mel": ("audio/mel/data", "audio/mel/t"),
    "vggish": ("audio/vggish/data", "audio/vggish/t"),
}
ROW_SHAPES = {"source": (), "box": (4,), "score": (), "kps5": (5, 2), "affine": (2, 3), "pose": (3,), "frame": (),
              "track": ()}
READ_BLOCK_BYTES = 64 << 20  # read datasets back in blocks of about this size


def _registry_outputs(stage: str) -> tuple[str, ...] | None:
    """What a stage without an entry above promises, from its ``outputs`` in the stage registry:
    ``audio/<name>`` -> its ``data`` and ``t``; other paths as datasets or groups (trailing "/")."""
    from . import stages

    stages.load_builtin()
    cls = stages.REGISTRY.get(stage)
    if cls is None:
        return None
    out: list[str] = []
    for path in cls.outputs:
        out += [f"{path}/data", f"{path}/t"] if path.startswith("audio/") else [path]
    if cls.consumes == "frames":
        out = ["frames/t", "frames/index"] + out
    return tuple(out)


def _problem(report: dict, message: str, file: str | None = None, key: str | None = None) -> None:
    report["problems"].append(_entry(message, file, key))


def _warning(report: dict, message: str, file: str | None = None, key: str | None = None) -> None:
    report["warnings"].append(_entry(message, file, key))


def _entry(message: str, file: str | None, key: str | None) -> dict:
    where = file or ""
    if key is not None:
        where = f"{where} [{key}]" if where else key
    message = " ".join(str(message).split())  # one line, always
    return {"file": file, "key": key, "message": message, "line": f"{where}: {message}" if where else message}


def _locate(path: str | os.PathLike) -> tuple[Path, Path]:
    """(index file, shards dir) of the store at ``path`` (the index or its ``.d`` directory)."""
    p = Path(path)
    if p.is_dir() and p.name.endswith(".d"):
        p = Path(str(p)[:-2])
    d = store.shards_dir(p)
    if p.is_dir():
        raise StoreError(f"{p}: is a directory; give the store's index file (OUT.h5) or OUT.h5.d")
    if not p.exists() and not d.is_dir():
        raise StoreError(f"{p}: no such facekit store")
    return p, d


def verify(path: str | os.PathLike, read_data: bool = True) -> dict:
    """Check the store at ``path`` (its index ``OUT.h5`` or the shards dir ``OUT.h5.d``).

    Returns ``{"path", "ok", "problems", "warnings", "shards", "videos", "done", "failed"}``;
    ``problems`` and ``warnings`` are lists of ``{"file", "key", "message", "line"}`` (``line`` is
    the one-line form ``facekit verify`` prints). ``ok`` is True when there is no problem.
    read_data: also read every dataset back (bounded memory) to catch damaged data blocks.
    Raises StoreError when there is no store at ``path``.
    """
    import h5py

    index, d = _locate(path)
    report: dict = {"path": str(index), "ok": True, "problems": [], "warnings": [], "shards": 0, "videos": 0,
                    "done": 0, "failed": 0}

    # leftovers of the index writer next to the index
    parent = index.parent if str(index.parent) else Path(".")
    try:
        for p in parent.iterdir():
            if p.name.startswith(f".{index.name}.") and p.name.endswith(TMP_SUFFIX):
                _warning(report, "leftover temporary index file (a run in progress, or one that was killed)", str(p))
    except OSError:
        pass

    shards: dict[str, dict] = {}  # file name -> {"key", "status", "error", "mtime_ns"}
    keys_seen: dict[str, str] = {}
    if d.is_dir():  # (without it, the index check reports every listed shard as missing)
        for p in sorted(d.iterdir()):
            name = p.name
            if name == ".lock":
                continue
            if name.startswith("."):
                if name.endswith(TMP_SUFFIX):
                    _warning(report, "leftover temporary shard (a run in progress, or one that was killed; "
                                     "the next run on this host removes it)", str(p))
                elif not name.startswith(".write-test."):
                    _warning(report, "unexpected hidden file in the shards directory", str(p))
                continue
            if not name.endswith(SHARD_SUFFIX) or not p.is_file():
                _warning(report, "unexpected entry in the shards directory (not a shard)", str(p))
                continue
            report["shards"] += 1
            row = _check_shard(p, report, read_data, h5py)
            if row is None:
                continue
            shards[name] = row
            k = row["key"]
            if k in keys_seen:
                _problem(report, f"key also stored in {keys_seen[k]}", str(p), k)
            keys_seen[k] = name
    report["videos"] = len(shards)
    report["done"] = sum(r["status"] == STATUS_DONE for r in shards.values())
    report["failed"] = sum(r["status"] == STATUS_FAILED for r in shards.values())

    _check_index(index, d, shards, report, h5py)
    report["ok"] = not report["problems"]
    return report


def _check_shard(p: Path, report: dict, read_data: bool, h5py) -> dict | None:
    from .inputs import InputError, safe_key

    f_str = str(p)
    try:
        mtime = p.stat().st_mtime_ns
        f = h5py.File(p, "r")
    except Exception as e:  # noqa: BLE001 - h5py raises OSError and others on a damaged file
        _problem(report, f"shard does not open ({' '.join(str(e).split())})", f_str)
        return None
    with f:
        try:
            vids = f.get("videos")
            keys = list(store._iter_video_keys(vids)) if isinstance(vids, h5py.Group) else []
        except Exception as e:  # noqa: BLE001
            _problem(report, f"shard cannot be read ({' '.join(str(e).split())})", f_str)
            return None
        if len(keys) != 1:
            _problem(report, f"a shard holds one video; this one holds {len(keys)}", f_str)
            if not keys:
                return None
        key = keys[0]
        g = vids[key]
        try:
            ok_key = safe_key(key) == key
        except InputError:
            ok_key = False
        if not ok_key:
            _problem(report, "unsafe store key (absolute, '..', NUL or not NFC-normalised)", f_str, key)
        if p.name != store.shard_name(key):
            _problem(report, f"file name does not match its key (expected {store.shard_name(key)})", f_str, key)
        attrs = store.attrs_dict(g)
        status = str(attrs.get("status", ""))
        error = str(attrs.get("error", ""))
        for msg in _check_video(g, attrs, read_data, h5py):
            if msg.startswith("warning: "):
                _warning(report, msg[len("warning: "):], f_str, key)
            else:
                _problem(report, msg, f_str, key)
        return {"key": key, "status": status, "error": error, "mtime_ns": mtime}


def _rows(ds) -> int:
    return int(ds.shape[0]) if ds.shape else -1


def _check_video(g, attrs: dict, read_data: bool, h5py) -> list[str]:
    """Problems (and ``"warning: ..."`` lines) of one video group."""
    out: list[str] = []
    status = attrs.get("status", "")
    if status == STATUS_FAILED:
        if not str(attrs.get("error", "")).strip():
            out.append("failed video without an error message")
        return out
    if status != STATUS_DONE:
        out.append(f"unknown status {status!r} (expected {STATUS_DONE!r} or {STATUS_FAILED!r})")
        return out
    params = attrs.get("stage_params")
    if not isinstance(params, dict) or not params:
        out.append("finished video without the stage_params attribute (cannot tell what it promises)")
        params = {}

    # what the recorded stages promise
    missing: dict[str, str] = {}  # path -> the first stage that promises it
    for stage, p in params.items():
        promised = STAGE_OUTPUTS.get(stage) or _registry_outputs(stage)
        if promised is None:
            out.append(f"warning: stage {stage!r} is unknown to this facekit version; its outputs are not checked")
            continue
        for path in promised:
            if stage == "crop" and path == "faces/crop" and isinstance(p, dict) and p.get("store") is False:
                continue
            if attrs.get("video_status") == "no video" and not path.startswith("audio/"):
                continue  # an audio file in a run with face stages: they had nothing to see
            there = isinstance(g.get(path[:-1]), h5py.Group) if path.endswith("/") else \
                isinstance(g.get(path), h5py.Dataset)
            if not there:
                missing.setdefault(path, stage)
        if stage == "embed" and isinstance(p, dict) and attrs.get("video_status") != "no video":
            # one dataset per backbone (and per-track means)
            for m in p.get("models") or {}:
                if not isinstance(g.get(f"faces/embed/{m}"), h5py.Dataset):
                    missing.setdefault(f"faces/embed/{m}", stage)
                if p.get("pool") == "track":
                    ds, ids = g.get(f"tracks/embed/{m}"), g.get("tracks/id")
                    if not isinstance(ds, h5py.Dataset):
                        missing.setdefault(f"tracks/embed/{m}", stage)
                    elif isinstance(ids, h5py.Dataset) and _rows(ds) != _rows(ids):
                        out.append(f"tracks/embed/{m} has {_rows(ds)} rows, tracks/id {_rows(ids)}")
    for path, stage in missing.items():
        what = f"group {path}" if path.endswith("/") else f"dataset {path}"
        out.append(f"stage {stage}: {what} is missing")

    # frames
    F = None
    fr = g.get("frames")
    if isinstance(fr, h5py.Group) and isinstance(fr.get("t"), h5py.Dataset):
        t = fr["t"][()]
        F = len(t)
        if t.ndim != 1:
            out.append(f"frames/t has shape {t.shape}, expected [F]")
        elif F:
            if not np.all(np.isfinite(t)):
                out.append("frames/t holds non-finite times")
            elif np.any(np.diff(t) <= 0):
                i = int(np.flatnonzero(np.diff(t) <= 0)[0])
                out.append(f"frames/t is not increasing (row {i + 1}: {t[i + 1]!r} after {t[i]!r})")
        for name in ("index", "shot"):
            ds = fr.get(name)
            if isinstance(ds, h5py.Dataset) and _rows(ds) != F:
                out.append(f"frames/{name} has {_rows(ds)} rows, frames/t {F}")
        ix = fr.get("index")
        if isinstance(ix, h5py.Dataset) and _rows(ix) == F and F and np.any(np.diff(ix[()]) <= 0):
            out.append("frames/index is not increasing")
    if F is not None and "n_frames" in attrs and int(attrs["n_frames"]) != F:
        out.append(f"attribute n_frames={attrs['n_frames']} but frames/t has {F} rows")

    # faces: one table, N rows everywhere
    fa = g.get("faces")
    if isinstance(fa, h5py.Group):
        lengths: dict[str, int] = {}
        fa.visititems(lambda name, obj: lengths.__setitem__(name, _rows(obj)) if isinstance(obj, h5py.Dataset) else None)
        N = lengths.get("frame", next(iter(lengths.values()), 0))
        bad = {n: k for n, k in lengths.items() if k != N}
        if bad:
            out.append("faces/* lengths differ: " + ", ".join(f"{n}={k}" for n, k in sorted(lengths.items())))
        for name, tail in ROW_SHAPES.items():
            ds = fa.get(name)
            if isinstance(ds, h5py.Dataset) and tuple(ds.shape[1:]) != tail:
                out.append(f"faces/{name} has rows of shape {tuple(ds.shape[1:])}, expected {tail}")
        for name, ndim in (("landmarks", 3), ("crop", 4)):
            ds = fa.get(name)
            if isinstance(ds, h5py.Dataset) and ds.ndim != ndim:
                out.append(f"faces/{name} has {ds.ndim} dimensions, expected {ndim}")
        fr_ds = fa.get("frame")
        if isinstance(fr_ds, h5py.Dataset) and _rows(fr_ds) > 0:
            frame = fr_ds[()]
            if F is None:
                if "frames/t" not in missing:
                    out.append("faces/frame without frames/t")
            elif frame.min() < 0 or frame.max() >= F:
                out.append(f"faces/frame holds rows outside [0, {F}) (min {frame.min()}, max {frame.max()})")
            if np.any(np.diff(frame) < 0):
                out.append("faces/frame is not non-decreasing (the face table must be sorted by frame)")
        if "n_faces" in attrs and isinstance(fr_ds, h5py.Dataset) and int(attrs["n_faces"]) != _rows(fr_ds):
            out.append(f"attribute n_faces={attrs['n_faces']} but faces/frame has {_rows(fr_ds)} rows")
        tr = fa.get("track")
        ids = g.get("tracks/id")
        if isinstance(tr, h5py.Dataset) and isinstance(ids, h5py.Dataset) and _rows(tr) > 0:
            known = np.append(ids[()], -1)
            if not np.all(np.isin(tr[()], known)):
                out.append("faces/track holds ids that tracks/id does not list")
    elif "n_faces" in attrs and int(attrs["n_faces"]) != 0 and any(s in params for s in ("detect",)):
        out.append(f"attribute n_faces={attrs['n_faces']} but there is no faces/ group")

    tg = g.get("tracks")
    if isinstance(tg, h5py.Group):
        lens = {n: _rows(ds) for n, ds in tg.items() if isinstance(ds, h5py.Dataset)}
        if len(set(lens.values())) > 1:
            out.append("tracks/* lengths differ: " + ", ".join(f"{n}={k}" for n, k in sorted(lens.items())))

    # audio streams: data [T, D] and t [T]
    au = g.get("audio")
    if isinstance(au, h5py.Group):
        for name, s in au.items():
            if not isinstance(s, h5py.Group):
                continue
            data, t = s.get("data"), s.get("t")
            if not isinstance(data, h5py.Dataset) or not isinstance(t, h5py.Dataset):
                if f"audio/{name}/data" not in missing and f"audio/{name}/t" not in missing:
                    out.append(f"audio/{name}: data or t is missing")
                continue
            if data.ndim != 2 or t.ndim != 1 or data.shape[0] != t.shape[0]:
                out.append(f"audio/{name}: data has shape {data.shape}, t {t.shape} (expected [T, D] and [T])")
            tv = t[()]
            if len(tv) and (not np.all(np.isfinite(tv)) or np.any(np.diff(tv) < 0)):
                out.append(f"audio/{name}/t is not finite and non-decreasing")

    if read_data:
        out += _read_back(g, h5py)
    return out


def _read_back(g, h5py) -> list[str]:
    """Read every dataset of ``g`` in bounded blocks; a damaged block is a problem."""
    names: list[str] = []
    g.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    out = []
    for name in names:
        ds = g[name]
        try:
            if ds.shape is None or ds.ndim == 0:
                ds[()]
                continue
            row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
            step = max(1, READ_BLOCK_BYTES // row_bytes)
            for a in range(0, ds.shape[0], step):
                ds[a:a + step]
        except Exception as e:  # noqa: BLE001 - any read failure is the problem we look for
            out.append(f"dataset {name} cannot be read back ({' '.join(str(e).split())})")
    return out


def _check_index(index: Path, d: Path, shards: dict[str, dict], report: dict, h5py) -> None:
    ix_str = str(index)
    hint = "re-run the command (or facekit.store.rebuild_index) to rebuild the index"
    if not index.exists():
        if shards:
            _problem(report, f"the index file is missing ({hint})", ix_str)
        return
    try:
        f = h5py.File(index, "r")
    except Exception as e:  # noqa: BLE001
        _problem(report, f"the index does not open ({' '.join(str(e).split())}; {hint})", ix_str)
        return
    with f:
        kind = store.from_attr(f.attrs.get("kind", ""))
        if kind != "index":
            _problem(report, f"not a facekit store index (kind={kind!r})", ix_str)
            return
        from .version import SCHEMA_VERSION

        sv = store.from_attr(f.attrs.get("schema_version", ""))
        if sv != SCHEMA_VERSION:
            _warning(report, f"schema_version {sv!r}; this facekit writes {SCHEMA_VERSION!r}", ix_str)
        try:
            ix = f["index"]
            cols = {c: (ix[c].asstr()[()] if c != "mtime_ns" else ix[c][()])
                    for c in ("key", "shard", "status", "error", "mtime_ns")}
        except Exception as e:  # noqa: BLE001
            _problem(report, f"the index table cannot be read ({' '.join(str(e).split())}; {hint})", ix_str)
            return
        lens = {c: len(v) for c, v in cols.items()}
        if len(set(lens.values())) != 1:
            _problem(report, f"index columns differ in length {lens} ({hint})", ix_str)
            return
        rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
        seen_keys: set[str] = set()
        listed: set[str] = set()
        vids = f.get("videos")
        for r in rows:
            key, shard = str(r["key"]), str(r["shard"])
            if key in seen_keys:
                _problem(report, f"the index lists this key twice ({hint})", ix_str, key)
            seen_keys.add(key)
            listed.add(shard)
            have = shards.get(shard)
            if have is None:
                if (d / shard).exists():
                    continue  # the shard itself is broken: reported above
                _problem(report, f"the index lists shard {shard}, which does not exist ({hint})", ix_str, key)
                continue
            diffs = [f"{c} {r[c]!r} != {have[c]!r}" for c in ("key", "status", "error", "mtime_ns")
                     if (int(r[c]) if c == "mtime_ns" else str(r[c])) != have[c]]
            if diffs:
                _problem(report, f"stale index entry for {shard}: {'; '.join(diffs)} ({hint})", ix_str, key)
            # the external link a plain-HDF5 reader follows
            try:
                link = vids.get(key, getlink=True) if isinstance(vids, h5py.Group) else None
            except Exception:  # noqa: BLE001
                link = None
            want = (f"{d.name}/{shard}", "/" + store.video_path(key))
            if not isinstance(link, h5py.ExternalLink) or (link.filename, link.path) != want:
                _problem(report, f"missing or wrong external link videos/{key} ({hint})", ix_str, key)
        for shard, have in sorted(shards.items()):
            if shard not in listed:
                _problem(report, f"shard {shard} is not in the index ({hint})", ix_str, have["key"])


def format_report(report: dict) -> str:
    """The text ``facekit verify`` prints: one line per problem and warning, then a summary."""
    lines = [f"problem: {p['line']}" for p in report["problems"]]
    lines += [f"warning: {w['line']}" for w in report["warnings"]]
    n = len(report["problems"])
    lines.append(f"{report['path']}: {report['shards']} shards, {report['done']} done, {report['failed']} failed; "
                 + ("OK" if report["ok"] else f"{n} problem{'s' if n != 1 else ''}")
                 + (f", {len(report['warnings'])} warning{'s' if len(report['warnings']) != 1 else ''}"
                    if report["warnings"] else ""))
    return "\n".join(lines)
