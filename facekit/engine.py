"""The one engine behind every command: inputs -> units -> stages -> shards -> index.

``extract(inputs, out, **options)`` is the Python form of ``facekit extract``; the other
commands are the same call with a different default stage list. Per video (one *unit*):

  probe -> frames in bounded batches (decoded in a background thread) -> frame stages
        -> 16 kHz mono audio -> audio stages -> shard committed (atomic rename)

A failure of one video (bad file, decode error, even a bug in a stage) is recorded in the store
as a failed video with its one-line cause and the run goes on; finished videos are skipped on
re-run unless ``overwrite``. Models load once per process (the stage objects are cached).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field, asdict
from pathlib import Path

import numpy as np

from . import stages as stages_mod
from . import store
from .config import DEFAULT_STAGES, Config
from .inputs import Unit, collect, select_shard
from .media import SAMPLE_RATE, MediaError, iter_frames, prefetch, probe, read_audio
from .version import __version__

INDEX_EVERY_SEC = 60.0  # rebuild the index this often during long runs
#: errors writing the store after which no later video can be written either: the run stops
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class Result:
    """What happened to one video."""

    key: str
    path: str
    status: str  # "done", "skipped" or "failed"
    error: str = ""
    warnings: list = field(default_factory=list)
    n_frames: int = 0
    n_faces: int = 0
    seconds: float = 0.0
    stop_run: bool = field(default=False, repr=False)  # the store is out of space: start no other video


@dataclass
class Summary:
    """The outcome of a run; ``to_dict()`` is what ``--json`` prints.

    ``stopped`` is non-empty when the run stopped early (the store ran out of space): why, and
    how many videos were not started (``not_started``); they are done by the next run."""

    out: str
    results: list[Result]
    seconds: float
    warnings: list = field(default_factory=list)
    stopped: str = ""
    not_started: int = 0

    def _with(self, status):
        return [r for r in self.results if r.status == status]

    @property
    def processed(self) -> list[Result]:
        return self._with("done")

    @property
    def skipped(self) -> list[Result]:
        return self._with("skipped")

    @property
    def failed(self) -> list[Result]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {
            "out": self.out, "seconds": round(self.seconds, 3),
            "processed": len(self.processed), "skipped": len(self.skipped), "failed": len(self.failed),
            "failures": [{"key": r.key, "path": r.path, "error": r.error} for r in self.failed],
            "warnings": self.warnings + [f"{r.path}: {w}" for r in self.results for w in r.warnings],
            "stopped": self.stopped, "not_started": self.not_started,
            "videos": [{k: v for k, v in asdict(r).items() if k != "stop_run"} for r in self.results],
        }


# ----------------------------------------------------------------------------- per process

_PIPELINES: dict[str, list[stages_mod.Stage]] = {}


def build_pipeline(config: Config) -> list[stages_mod.Stage]:
    """Stage objects for ``config`` (models loaded once per process, then cached)."""
    stages_mod.load_builtin()
    key = json.dumps(config.to_json_dict(), sort_keys=True, default=str)
    if key not in _PIPELINES:
        _PIPELINES[key] = [stages_mod.REGISTRY[n](config) for n in config.stages]
    return _PIPELINES[key]


def _source_stamp(unit: Unit) -> dict:
    p = Path(unit.path)
    try:
        if unit.kind == "frames":
            files = [p / f for f in os.listdir(p)]
            return {"source_size": int(sum(f.stat().st_size for f in files)),
                    "source_mtime_ns": int(max([p.stat().st_mtime_ns] + [f.stat().st_mtime_ns for f in files]))}
        st = p.stat()
        return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}
    except OSError:
        return {"source_size": -1, "source_mtime_ns": -1}


def _frames_params(config: Config, unit: Unit) -> dict:
    p = {"fps": config.fps, "max_side": config.max_side}
    if unit.kind == "frames":
        p["frame_rate"] = config.frame_rate
    return p


def _stage_params(pipe, config: Config, unit: Unit) -> dict:
    fp = _frames_params(config, unit)
    return {s.name: ({**s.params, "frames": fp} if s.consumes == "frames" else s.params) for s in pipe}


def _old_video(shard: Path) -> tuple[dict | None, str | None]:
    """(attrs, key) of the video in an existing shard, or (None, None)."""
    if not shard.is_file():
        return None, None
    try:
        import h5py

        with h5py.File(shard, "r") as f:
            for key in store._iter_video_keys(f["videos"]):
                return store.attrs_dict(f["videos"][key]), key
    except (OSError, KeyError):
        return None, None
    return None, None


def pipe_consumes(pipe, name: str) -> str:
    return next(s.consumes for s in pipe if s.name == name)


def _copy_outputs(src_path: str, key: str, writer: store.VideoWriter, paths) -> None:
    import h5py

    with h5py.File(src_path, "r") as f:
        g = f[store.video_path(key)]
        for p in paths:
            if p not in g:
                continue
            parent, _, name = p.rpartition("/")
            dest = writer.group.require_group(parent) if parent else writer.group
            if name in dest:
                del dest[name]
            g.copy(g[p], dest, name=name)


def _finished(unit: Unit, config: Config, shard: Path, stamp: dict, params: dict):
    """``(old attrs, old is done, Result "skipped" or None)``: is this video finished with these params?"""
    old, old_key = (None, None) if config.overwrite else _old_video(shard)
    same_source = bool(old) and old_key == unit.key and all(old.get(k) == v for k, v in stamp.items())
    old_done = bool(old) and old.get("status") == store.STATUS_DONE and same_source
    if old_done and _filter_of_attrs(old) == _filter_of(config):
        old_params = old.get("stage_params") or {}
        if all(old_params.get(n) == p for n, p in params.items()):
            return old, old_done, Result(unit.key, unit.path, "skipped", n_frames=int(old.get("n_frames", 0)),
                                         n_faces=int(old.get("n_faces", 0)))
    return old, old_done, None


#: Cross-video batching of audio stages that can (``precompute_audio``, e.g. whisper): the audio of
#: up to this many consecutive videos, and this many seconds in all, is decoded and encoded together
AUDIO_GROUP_VIDEOS = 64
AUDIO_GROUP_SEC = 600.0


def _will_compute(unit: Unit, config: Config, pipe, out: str, stage_name: str) -> bool:
    """Will ``process_unit`` compute stage ``stage_name`` for ``unit`` (not skip the video, not reuse
    the stage's stored output from this store or from a store given as input)?"""
    params = _stage_params(pipe, config, unit)
    shard = store.shards_dir(out) / store.shard_name(unit.key)
    stamp = _source_stamp(unit)
    old, old_done, skip = _finished(unit, config, shard, stamp, params)
    if skip is not None:
        return False
    src = unit.reuse_from or (str(shard) if old_done else None)
    if src:
        a = _old_video(Path(src))[0] if unit.reuse_from else old
        if a and a.get("status") == store.STATUS_DONE and all(a.get(k) == v for k, v in stamp.items()) \
                and (a.get("stage_params") or {}).get(stage_name) == params[stage_name]:
            return False  # audio stages are reused independently of the others
    return True


def _precompute_audio(group, pipe, config: Config, out: str, cache: dict) -> None:
    """Decode the audio of the videos of ``group`` whose batching stages (``precompute_audio``) will
    run, at most ``AUDIO_GROUP_SEC`` seconds in all, and hand the tracks to those stages in one
    batched pass; ``cache`` keeps (samples, start, warnings) per path so that ``process_unit`` does
    not decode them again. Any problem (no audio, unreadable, the batched pass failing, e.g. out of
    GPU memory) is left to ``process_unit``, which then works on each video alone and records it."""
    batchers = [s for s in pipe if hasattr(s, "precompute_audio")]
    tracks, total = {s.name: [] for s in batchers}, 0
    for u in group:
        try:
            wanted = [s for s in batchers if _will_compute(u, config, pipe, out, s.name)]
            if not wanted:
                continue
            w: list[str] = []
            samples, start = read_audio(u.path, warnings=w)
        except Exception:  # noqa: BLE001 - no audio, unreadable...: process_unit reports it
            continue
        cache[u.path] = (samples, start, w)
        for s in wanted:
            tracks[s.name].append(samples)
        total += samples.size
        if total >= AUDIO_GROUP_SEC * SAMPLE_RATE:
            break  # the rest of the group is decoded by process_unit, one video at a time
    for s in batchers:
        try:
            s.precompute_audio(tracks[s.name])
        except Exception:  # noqa: BLE001 - each video is then encoded alone (and fails alone)
            s.precompute_audio([])


def _audio_groups(order, pipe):
    """Consecutive groups of units for ``_precompute_audio`` (singletons when no stage batches)."""
    if not any(hasattr(s, "precompute_audio") for s in pipe):
        for u in order:
            yield [u]
        return
    for i in range(0, len(order), AUDIO_GROUP_VIDEOS):  # (_precompute_audio bounds the seconds)
        yield order[i:i + AUDIO_GROUP_VIDEOS]


def process_unit(unit: Unit, config: Config, out: str, debug: bool = False, on_frames=None,
                 audio_cache: dict | None = None) -> Result:
    """Run the pipeline on one video and commit its shard (or record its failure).

    on_frames: called as ``on_frames(n_new_frames, info)`` after every batch (progress bars).
    """
    t_start = time.perf_counter()
    pipe = build_pipeline(config)
    shard = store.shards_dir(out) / store.shard_name(unit.key)
    stamp = _source_stamp(unit)
    params = _stage_params(pipe, config, unit)

    old, old_done, skip = _finished(unit, config, shard, stamp, params)
    if skip is not None:
        return skip

    # earlier results we may reuse: a store given as input, or this store's finished shard
    reuse_src, reuse_params = None, {}
    if unit.reuse_from:
        a, k = _old_video(Path(unit.reuse_from))
        # only results of the very same source file (size and mtime unchanged) are reused
        if a and a.get("status") == store.STATUS_DONE and all(a.get(k2) == v for k2, v in stamp.items()):
            reuse_src, reuse_params = unit.reuse_from, a.get("stage_params") or {}
    elif old_done:
        reuse_src, reuse_params = str(shard), old.get("stage_params") or {}
    if reuse_src and _old_video(Path(reuse_src))[0].get("faces_filtered"):
        # faces were dropped by --max-faces/--primary: the stored detections are not all of them
        reuse_params = {n: p for n, p in reuse_params.items() if n not in params or pipe_consumes(pipe, n) != "frames"}
    # a frame stage is reused only if every frame stage before it is (later ones consume earlier
    # ones' faces); audio stages are independent of each other
    reused: set[str] = set()
    if reuse_src:
        for st in pipe:
            if reuse_params.get(st.name) != params[st.name]:
                if st.consumes == "frames":
                    break
                continue
            reused.add(st.name)
        # stages computed together (keyframe detection hands its landmarks on): all or none
        if any(r in params and r not in reused for st in pipe if st.name in reused
               for r in getattr(st, "reuse_with", ())):
            reused = {n for n in reused if pipe_consumes(pipe, n) != "frames"}

    warnings: list[str] = []
    attrs: dict = {"key": unit.key, "source_path": unit.path, "source_kind": unit.kind, **stamp,
                   "facekit_version": __version__, "stages": list(params), "stage_params": params}
    timings: dict[str, float] = {}
    writer = store.VideoWriter(out, unit.key)
    try:
        t0 = time.perf_counter()
        info = probe(unit.path, frame_rate=config.frame_rate)
        timings["probe"] = time.perf_counter() - t0
        ia = info.to_attrs()
        ia["container_n_frames"] = ia.pop("n_frames", -1)
        ia.pop("path", None)
        ia.pop("kind", None)  # already stored as source_kind
        attrs.update(ia)

        frame_stages = [s for s in pipe if s.consumes == "frames"]
        audio_stages = [s for s in pipe if s.consumes == "audio"]
        n_rows = 0
        if frame_stages and not info.has_video:
            if not (audio_stages and info.has_audio):
                raise MediaError(unit.path, "no video stream (face stages need one)")
            # an audio file in a mixed run: its audio features are computed, the face stages have
            # nothing to see (the mirror of "no audio" for a silent video)
            warnings.append("no video stream: face stages skipped, audio stages computed")
            attrs["video_status"] = "no video"
            frame_stages = []
        if frame_stages:
            t0 = time.perf_counter()
            todo = [s for s in frame_stages if s.name not in reused]
            if not todo:  # everything stored: copy, no decoding
                _copy_outputs(reuse_src, unit.key, writer,
                              ["frames"] + [p for s in frame_stages for p in s.outputs])
                n_rows = int(writer.group["frames/t"].shape[0])
            else:
                runners = [_Replay(s, reuse_src, unit.key) if s.name in reused else s for s in frame_stages]
                try:
                    n_rows = _run_frames(unit, info, config, runners, writer, warnings, on_frames)
                finally:
                    for r in runners:
                        if isinstance(r, _Replay):
                            r.close()
            timings["frames"] = time.perf_counter() - t0
        if audio_stages:
            t0 = time.perf_counter()
            todo = [s for s in audio_stages if s.name not in reused]
            if reuse_src:
                _copy_outputs(reuse_src, unit.key, writer, [p for s in audio_stages if s.name in reused for p in s.outputs])
            if todo:
                if info.has_audio:
                    if audio_cache and unit.path in audio_cache:  # decoded for a cross-video batch
                        samples, start_sec, w = audio_cache.pop(unit.path)
                        warnings.extend(w)
                    else:
                        samples, start_sec = read_audio(unit.path, warnings=warnings)
                    for s in todo:
                        s.on_audio(samples, start_sec, writer)
                else:
                    for s in todo:
                        s.on_no_audio(writer)
            timings["audio"] = time.perf_counter() - t0
        carried = _carry_forward(old if old_done else None, shard, unit.key, pipe, params, reused, writer)
        if carried:
            attrs["stages"] = [n for n in stages_mod.CANONICAL_ORDER if n in params or n in carried]
            attrs["stage_params"] = {**params, **carried}
            if (old or {}).get("faces_filtered") and not any(s.consumes == "frames" for s in pipe):
                writer.filtered = old["faces_filtered"]
        n_faces = int(writer.group["faces/frame"].shape[0]) if "faces/frame" in writer.group else 0
        timings["total"] = time.perf_counter() - t_start
        attrs["faces_filtered"] = writer.filtered  # {} unless --max-faces/--primary dropped faces
        attrs.update({"status": store.STATUS_DONE, "error": "", "warnings": warnings, "n_frames": n_rows,
                      "n_faces": n_faces, "timings": timings, "cpu_threads": _cpu_threads(),
                      "reused_stages": sorted(reused),
                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        writer.commit(attrs)
        return Result(unit.key, unit.path, "done", warnings=warnings, n_frames=n_rows, n_faces=n_faces,
                      seconds=time.perf_counter() - t_start)
    except KeyboardInterrupt:
        writer.abort()
        raise
    except Exception as e:  # noqa: BLE001 - one bad video must not cost the run
        writer.abort()
        stop = False
        if isinstance(e, MediaError):
            cause = e.cause
        elif isinstance(e, store.StoreWriteError):
            cause = f"cannot write the store: {e.strerror or e} (errno {e.errno})"
            stop = e.errno in OUT_OF_SPACE
        elif isinstance(e, OSError) and e.errno is not None:
            cause = f"{e.strerror or e} (errno {e.errno})"
        else:
            cause = f"internal error: {type(e).__name__}: {' '.join(str(e).split())}"
        if debug:
            traceback.print_exc()
        attrs.update({"error": cause, "warnings": warnings, "timings": timings,
                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if old and old.get("status") == store.STATUS_DONE:
            # never replace finished results with a failure record (use --overwrite to start again)
            cause += " (the results of an earlier run of this video are kept)"
            return Result(unit.key, unit.path, "failed", error=cause, warnings=warnings,
                          seconds=time.perf_counter() - t_start, stop_run=stop)
        try:
            store.write_failure(out, unit.key, attrs)
        except Exception as e2:  # noqa: BLE001 - e.g. disk full: still report the original cause
            why = f"{e2.strerror} (errno {e2.errno})" if isinstance(e2, OSError) and e2.strerror else str(e2)
            cause += f" (and the failure could not be recorded: {' '.join(why.split())})"
            stop = stop or (isinstance(e2, OSError) and e2.errno in OUT_OF_SPACE)
        return Result(unit.key, unit.path, "failed", error=cause, warnings=warnings,
                      seconds=time.perf_counter() - t_start, stop_run=stop)


def _filter_of(config: Config) -> dict:
    """The face selection a run asks for ({} = keep every face)."""
    if not (config.max_faces or config.primary):
        return {}
    return {"max_faces": config.max_faces, "primary": config.primary, "per_shot": config.per_shot}


def _filter_of_attrs(attrs: dict) -> dict:
    f = attrs.get("faces_filtered") or {}
    return {k: f.get(k) for k in ("max_faces", "primary", "per_shot")} if f else {}


#: stages whose stored outputs use track ids (see _carry_forward)
TRACK_DEPENDENT = ("crop", "parse", "embed")


def _carry_forward(old: dict | None, shard: Path, key: str, pipe, params: dict, reused: set, writer) -> dict:
    """Copy stages stored by an earlier run but not asked for now, when still valid.

    A stage is carried when every stage it requires is unchanged in this run (reused or carried);
    face stages also need this run's faces to be the stored ones (detect reused, or no face stage
    at all in this run, in which case the stored frames are carried too). Returns {stage: params}.
    """
    if not old:
        return {}
    old_params = old.get("stage_params") or {}
    frame_run = any(s.consumes == "frames" for s in pipe)
    faces_same = (not frame_run) or ("detect" in reused and not writer.filtered)
    unchanged = set(reused)
    # stages whose stored outputs depend on the track ids without requiring the track stage: crop
    # images and parse masks are filed by track, embed pools by track, --smooth filters along
    # tracks. When this run recomputes track (e.g. --track-rejoin), they are not carried: dropped,
    # never stale.
    track_recomputed = "track" in params and "track" not in reused
    carried: dict = {}
    for name in stages_mod.CANONICAL_ORDER:
        if name in params or name not in old_params or name not in stages_mod.REGISTRY:
            continue
        cls = stages_mod.REGISTRY[name]
        if cls.consumes == "frames" and not faces_same:
            continue
        if track_recomputed and (name in TRACK_DEPENDENT or
                                 (name == "landmarks" and (old_params[name] or {}).get("smoothing"))):
            continue
        if all(r in unchanged for r in cls.requires):
            carried[name] = old_params[name]
            unchanged.add(name)
    if carried:
        paths = [p for n in carried for p in stages_mod.REGISTRY[n].outputs]
        if not frame_run and any(stages_mod.REGISTRY[n].consumes == "frames" for n in carried):
            paths.append("frames")
        _copy_outputs(str(shard), key, writer, paths)
    return carried


class _Replay:
    """Stands in for a stage whose stored outputs are reused: feeds its rows batch by batch from
    an earlier shard (same frames, same params), so the stages after it see the same faces."""

    def __init__(self, stage, shard: str, key: str):
        import h5py

        self.stage, self.name = stage, stage.name
        self._file = h5py.File(shard, "r")
        self._old = self._file[store.video_path(key)]
        frame = self._old["faces/frame"][()] if "faces/frame" in self._old else np.zeros(0, np.int64)
        self._frame = frame

    def prepare_steps(self) -> list:
        return []

    def begin(self, writer, info) -> None:
        for path in self.stage.outputs:
            if path.startswith("faces/") and path in self._old:
                ds = self._old[path]
                writer.create(path, ds.shape[1:], ds.dtype, attrs=store.attrs_dict(ds),
                              compression=ds.compression, compression_opts=ds.compression_opts,
                              chunk_rows=ds.chunks[0] if ds.chunks else None)

    def on_frames(self, batch, row0: int, writer) -> None:
        a, b = np.searchsorted(self._frame, [row0, row0 + len(batch.t_sec)])
        for path in self.stage.outputs:
            # (an output the earlier version did not write, e.g. faces/source, stays absent)
            if path.startswith("faces/") and path in self._old:
                batch.faces[path[len("faces/"):]] = self._old[path][a:b]
                writer.append(path, batch.faces[path[len("faces/"):]])

    def end(self, writer) -> None:
        other = [p for p in self.stage.outputs if not p.startswith("faces/")]
        if other:
            _copy_outputs(self._file.filename, self._old.attrs["key"], writer, other)

    def close(self) -> None:
        self._file.close()


def _prepared(batches, step):
    """``batches`` with ``step`` (a stage's prepare step) having run on every batch."""
    try:
        for batch in batches:
            step(batch)
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _run_frames(unit, info, config, todo, writer, warnings, on_frames=None) -> int:
    writer.create("frames/t", dtype="f8", attrs={"units": "seconds", "description": "presentation time"})
    writer.create("frames/index", dtype="i8", attrs={"description": "position in the decoded stream"})
    for s in todo:
        s.begin(writer, info)
    n = 0
    scale = 1.0
    batches = iter_frames(unit.path, batch_size=config.batch_size, fps=config.fps, max_side=config.max_side,
                          frame_rate=config.frame_rate, info=info, warnings=warnings)
    ahead = [step for s in todo for step in s.prepare_steps()]
    # decoding runs in a background thread (two batches ahead; one when stages run ahead, which buffer too)
    batches = prefetch(batches, depth=1 if ahead else 2)
    # stages' work that needs only earlier stages' prepared results (detection, then landmarks; with
    # keyframes: keyframe detection, then following) runs one batch ahead, each step in its own thread
    for step in ahead:
        batches = prefetch(_prepared(batches, step), depth=1)
    try:
        for batch in batches:
            batch.faces.clear()  # per-face arrays of this batch, filled by the stages in order
            writer.append("frames/t", batch.t_sec)
            writer.append("frames/index", batch.index)
            for s in todo:
                s.on_frames(batch, n, writer)
            n += len(batch.t_sec)
            if on_frames is not None:
                on_frames(len(batch.t_sec), info)
            scale = batch.scale
    finally:
        batches.close()  # stops and waits for the background threads, also when a stage failed
    for s in todo:
        s.end(writer)
    store.set_attrs(writer.group["frames"], {
        **_frames_params(config, unit), "scale": scale, "width": info.width, "height": info.height,
        "coordinates": "pixels of the source in display orientation (rotation applied, before max_side)"})
    return n


# ----------------------------------------------------------------------------- the run

def _cpu_threads() -> int:
    from .device import cpu_threads

    return cpu_threads()


def _expected_frames(unit: Unit, cfg: Config) -> int | None:
    """A guess of the frames a video will give (for the progress bar only): duration x rate."""
    try:
        info = probe(unit.path, frame_rate=cfg.frame_rate)
    except Exception:  # noqa: BLE001 - the real run reports it
        return None
    if info.n_frames and not cfg.fps:
        return info.n_frames
    rate = cfg.fps or info.fps_avg or info.fps_nominal
    return int(round(info.duration_sec * rate)) if info.duration_sec and rate else None


def _problem_key(path: str) -> str:
    """A store key for an input that could not become a unit (its path relative to the cwd)."""
    from .inputs import InputError, safe_key

    rel = os.path.relpath(os.path.abspath(path)) if path else ""
    try:
        return safe_key("/".join(p for p in Path(rel).parts if p != ".."))
    except InputError:
        return ""


def _problem_record_key(path: str, taken: set[str], out: str) -> str:
    """The key a problem input is recorded under: never one of this run's videos, never a finished
    video of the store (a failure record must not replace results)."""
    key = _problem_key(path)
    if not key:
        return ""
    old, old_key = _old_video(store.shards_dir(out) / store.shard_name(key))
    if key in taken or (old and old_key == key and old.get("source_path") != os.path.abspath(path)):
        key = f"{key}#{hashlib.sha1(os.path.abspath(path).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return key


def _init_worker(gpu_slots=None, threads: int | None = None):
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if threads:  # computed by the parent from FACEKIT_THREADS or the CPUs: this worker's share
        os.environ["FACEKIT_THREADS"] = str(threads)
    if gpu_slots is not None:  # --device cuda: each worker takes one GPU slot and keeps it
        import queue

        from . import device as device_mod

        try:
            device_mod.pin(gpu_slots.get(timeout=5))
        except queue.Empty:  # a replacement for a worker that died: any GPU of the run
            device_mod.pin(None)


def _work(args):
    unit, config, out, debug = args
    return process_unit(unit, config, out, debug)


def extract(inputs, out, *, stages=None, command: str | None = None, progress: bool | None = None,
            debug: bool = False, stdin=None, on_result=None, **options) -> Summary:
    """Run the pipeline over ``inputs`` into the store ``out``; the Python form of ``facekit extract``.

    inputs: paths (files, directories, ``@list.txt``, ``-``) as on the command line.
    stages: names (list or comma-separated); prerequisites are added. Default: as ``facekit extract``.
    options: any ``facekit.config.Config`` field (fps, max_side, det_threshold, workers, ...).
    on_result: called with each ``Result`` as it arrives (the CLI prints failures from it).
    Returns a Summary; nothing is raised for bad videos (they are in ``summary.failed``).
    Raises StageError / ModelError / StoreError / InputError before any work when the run as a
    whole cannot start.
    """
    t_start = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]
    cfg = Config.from_kwargs(**options)
    names = stages if stages is not None else cfg.stages
    if names is None:
        avail = set(stages_mod.available())
        names = [s for s in DEFAULT_STAGES["extract"] if s in avail]
    names = names.split(",") if isinstance(names, str) else list(names)
    if cfg.max_faces or cfg.primary or cfg.smooth or cfg.track_rejoin is not None \
            or (cfg.embed_pool == "track" and "embed" in names):
        names.append("track")  # face selection, smoothing, re-joining and pooling need tracks
    if cfg.masks:
        names += ["crop", "parse"]  # mask PNGs are written beside the crop images
    cfg.stages = stages_mod.resolve(names)
    if cfg.backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {cfg.backend!r} (local or ray)")
    from . import device as device_mod

    device_mod.cpu_threads()  # DeviceError for a malformed FACEKIT_THREADS, whatever models are cached
    check_cfg = cfg
    if cfg.backend == "ray":  # the GPUs are the cluster's: one per actor (facekit/cluster.py)
        device_mod.parse(cfg.device)  # DeviceError for a malformed --device
        n_procs, gpu_slots = cfg.workers, [None]
        if cfg.device != "cpu":
            from dataclasses import replace

            check_cfg = replace(cfg, device="cpu")  # models are checked here on the CPU
    else:
        n_procs, gpu_slots = device_mod.plan(cfg)  # DeviceError (bad --device, unusable CUDA) before any work
        device_mod.pin(gpu_slots[0])
    out = os.fspath(out)
    store.check_writable(out)
    pipe = build_pipeline(check_cfg)  # load models now: a missing model stops the run before any work
    from .config import ineffective_options

    device_warnings = [f"{opt} has no effect in this run (stages: {','.join(cfg.stages)})"
                       for opt in ineffective_options(cfg)]
    device_warnings += [] if gpu_slots[0] is None or device_mod.stages_on_gpu(pipe) else [
        f"--device {cfg.device}: no stage of this run uses the GPU (GPU stages: detect, crop, landmarks with fan2d/fan3d, parse with farl-*, embed, whisper, vggish)"]

    audio_only = all(stages_mod.REGISTRY[n].consumes == "audio" for n in cfg.stages)
    units, problems, warnings = collect(list(inputs), cfg.frame_folders, stdin=stdin, audio=audio_only)
    if not units and not problems:
        from .inputs import InputError

        raise InputError(f"no media files found in: {' '.join(map(str, inputs))}")
    real_out = os.path.realpath(out)
    if any(os.path.realpath(u.path) == real_out for u in units):
        from .inputs import InputError

        raise InputError(f"{out}: the output is one of the inputs")
    units = select_shard(units, cfg.shard)
    if cfg.shard and not cfg.shard.strip().startswith("1/"):
        problems = []  # inputs that could not be read are reported by job 1 of the array only
    store.clean_stale_temps(out)
    root_attrs = {"command": command or "facekit.extract(...)", "config": cfg.to_json_dict()}

    results: list[Result] = []
    run_warnings: list[str] = []
    taken = {u.key for u in units}
    for path, cause in problems:
        r = Result(key=_problem_record_key(path, taken, out), path=path, status="failed", error=cause)
        if r.key:
            taken.add(r.key)
            try:
                store.write_failure(out, r.key, {"key": r.key, "source_path": os.path.abspath(path), "error": cause,
                                                 "facekit_version": __version__})
            except Exception:  # noqa: BLE001 - reported on stderr and in the summary anyway
                pass
        results.append(r)
        if on_result:
            on_result(r)

    def rebuild_index():
        try:
            store.rebuild_index(out, root_attrs)
        except OSError as e:  # e.g. disk full: the shards are intact and the reader scans them
            why = f"{e.strerror} (errno {e.errno})" if e.strerror else str(e)
            run_warnings.append(f"{out}: the index could not be rebuilt ({' '.join(why.split())}); every "
                                f"finished shard is intact and readable; re-run the command to rebuild it")

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(units), unit="video", disable=not show, dynamic_ncols=True, file=sys.stderr)
    # a second line for the frames of the video in flight (one worker: long videos show progress)
    fbar = tqdm(total=0, unit="frame", disable=not show or n_procs > 1, dynamic_ncols=True, file=sys.stderr,
                leave=False, position=1)
    last_index = time.monotonic()
    order = sorted(units, key=lambda u: (-u.size, u.key))  # largest first: the slowest start early
    stopped = ""
    n_units_done = 0

    def handle(r: Result):
        nonlocal last_index, stopped, n_units_done
        results.append(r)
        n_units_done += 1
        bar.update(1)
        bar.set_postfix_str(r.key[-40:], refresh=False)
        if on_result:
            on_result(r)
        if r.stop_run and not stopped:
            stopped = f"{out}: {r.error}"
        elif time.monotonic() - last_index > INDEX_EVERY_SEC:
            rebuild_index()
            last_index = time.monotonic()

    try:
        if cfg.backend == "ray":
            from .cluster import run_ray

            run_ray(order, cfg, out, debug, handle, lambda: bool(stopped))
        elif n_procs <= 1 or len(order) <= 1:
            for group in _audio_groups(order, pipe):
                audio_cache: dict = {}
                if len(group) > 1:
                    _precompute_audio(group, pipe, cfg, out, audio_cache)
                try:
                    for u in group:
                        if not fbar.disable:  # (the guess costs a probe)
                            fbar.reset(total=_expected_frames(u, cfg))
                            fbar.set_description_str(u.key[-30:], refresh=False)
                        handle(process_unit(u, cfg, out, debug, on_frames=lambda n, info: fbar.update(n),
                                            audio_cache=audio_cache))
                        if stopped:
                            break
                finally:
                    for s in pipe:  # features of videos not used (stopped run): not kept in memory
                        if hasattr(s, "precompute_audio"):
                            s.precompute_audio([])
                if stopped:
                    break
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # fork after threads/models is unsafe (and CUDA)
            slots = None
            if gpu_slots[0] is not None:
                # the models this process loaded to check them would sit on the first GPU beside
                # its worker's copy for the whole run: let them go
                del pipe
                _PIPELINES.clear()
                from .face import detect, embed, landmarks, parse

                for cache in (detect._CACHE, landmarks._CACHE, parse._CACHE, embed._CACHE):
                    cache.clear()  # (the model caches hold the GPU models too)
                import gc

                gc.collect()
                try:
                    import torch

                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001 - no torch, or no CUDA: nothing held
                    pass
                slots = ctx.Queue()
                for g in gpu_slots:
                    slots.put(g)
            threads = max(1, device_mod.cpu_threads() // n_procs)
            with ctx.Pool(n_procs, initializer=_init_worker, initargs=(slots, threads)) as pool:
                for r in pool.imap_unordered(_work, [(u, cfg, out, debug) for u in order]):
                    handle(r)
                    if stopped:
                        break  # leaving the block terminates the workers (the next run removes
                        # their temporary files)
    finally:
        fbar.close()
        bar.close()
        rebuild_index()
    not_started = len(order) - n_units_done if stopped else 0
    if stopped:
        stopped += (f"; stopped with {not_started} video{'s' if not_started != 1 else ''} not started (the "
                    f"finished ones are intact): free some space and re-run the same command to resume")
    results.sort(key=lambda r: (r.key, r.path))
    return Summary(out=out, results=results, seconds=time.perf_counter() - t_start,
                   warnings=device_warnings + warnings + run_warnings, stopped=stopped, not_started=not_started)
