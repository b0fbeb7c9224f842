"""The CPU side of a GPU run: what `facekit extract` costs on the CPU when the detector costs nothing.

    python bench/cpu_side.py [CLIP ...] [--stages detect,track,landmarks,align,crop] [--every 1]
                             [--height 720] [--cores 16]

With `--device cuda` the detector runs on the GPU; everything else (decoding and colour
conversion, dlib68 landmarks, tracking, alignment, crops and their gzip compression, HDF5 writes)
stays on the CPU. To measure that part on a machine without a GPU, each clip is processed twice:
the first run records every result of the detector's network (and post-processing), the second
replays them in the same order, so the detector's cost disappears and the store is otherwise made
the normal way (same frames, faces and outputs; checked).

Prints, per clip (scaled by ffmpeg to --height lines, 16:9 padded clips kept as they are):
  full        frames/s and CPU ms/frame of the normal run (detector on the CPU, for reference)
  replayed    frames/s and CPU ms/frame (process CPU time: every thread, FFmpeg's and gzip's included)
  per stage   thread CPU ms/frame spent in each stage's calls (``decode``: the decoding thread's own
              share; FFmpeg's frame threads and the gzip threads appear only in the process total)
  bound       --cores x 1000 / (replayed CPU ms/frame): the frames/s that many cores could sustain
              with enough workers per GPU, if the GPU keeps up and nothing else limits (an upper bound)
Default clips: shared/data's hamilton_multiface (1-6 faces), videoretalking/face_2 (one large face)
and crowd_1080p (6-8 faces), each scaled to 720p.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import facekit  # noqa: E402
from facekit import engine, media  # noqa: E402
from facekit import stages as stages_mod  # noqa: E402
from facekit.face import detect  # noqa: E402


def scaled(src: Path, height: int, out_dir: Path) -> Path:
    """``src`` re-encoded (H.264, CRF 18) at ``height`` lines, width to match (even)."""
    from mediagen import find_ffmpeg

    out = out_dir / f"{src.stem}_{height}p.mp4"
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-nostdin", "-i", str(src),
                    "-vf", f"scale=-2:{height}", "-c:v", "libx264", "-preset", "fast", "-crf", "18",
                    "-c:a", "copy", str(out)], check=True)
    return out


class Meter:
    """Thread CPU seconds spent in each stage's calls and in the decoding iterator."""

    def __init__(self):
        self.seconds: collections.Counter = collections.Counter()
        self._undo = []

    def _wrap(self, owner, attr: str, label: str):
        f = getattr(owner, attr)
        seconds = self.seconds

        def timed(*a, **k):
            t0 = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                seconds[label] += time.thread_time() - t0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, f))

    def __enter__(self):
        for cls in set(stages_mod.REGISTRY.values()):
            for m in ("on_frames", "prepare", "_prepare_keyframes"):
                if m in cls.__dict__:
                    self._wrap(cls, m, f"{cls.name}.{m.lstrip('_')}")
        frames = engine.iter_frames
        seconds = self.seconds

        def timed_frames(*a, **k):
            it = frames(*a, **k)
            while True:
                t0 = time.thread_time()
                try:
                    b = next(it)
                except StopIteration:
                    return
                finally:
                    seconds["decode"] += time.thread_time() - t0
                yield b

        engine.iter_frames = timed_frames
        self._undo.append((engine, "iter_frames", frames))
        return self

    def __exit__(self, *exc):
        for owner, attr, f in reversed(self._undo):
            setattr(owner, attr, f)


def run(clip: Path, stages: str, every: int, cores: int) -> None:
    d = Path(tempfile.mkdtemp())
    kw = dict(stages=stages, progress=False, detect_every=every)
    facekit.extract([str(clip)], d / "warm.h5", **kw)  # models loaded, numba compiled
    calls: list = []
    real = detect.DetectStage._detect_many

    def recording(self, frames, scale):
        out = real(self, frames, scale)
        calls.append(out)
        return out

    detect.DetectStage._detect_many = recording
    t0, c0 = time.perf_counter(), time.process_time()
    full = facekit.extract([str(clip)], d / "full.h5", **kw).results[0]
    w_full, c_full = time.perf_counter() - t0, time.process_time() - c0
    replay = iter(calls)
    detect.DetectStage._detect_many = lambda self, frames, scale: next(replay)
    try:
        with Meter() as m:
            t0, c0 = time.perf_counter(), time.process_time()
            rep = facekit.extract([str(clip)], d / "replayed.h5", **kw).results[0]
            w, c = time.perf_counter() - t0, time.process_time() - c0
    finally:
        detect.DetectStage._detect_many = real
    assert next(replay, None) is None and (rep.n_frames, rep.n_faces) == (full.n_frames, full.n_faces)
    n = rep.n_frames
    info = media.probe(str(clip))
    print(f"{clip.name} ({info.width}x{info.height}, {n} frames, {rep.n_faces} faces, "
          f"{rep.n_faces / n:.1f} a frame; stages {stages}, --detect-every {every})")
    print(f"  full      {n / w_full:7.1f} frames/s  {1e3 * c_full / n:6.1f} CPU ms/frame")
    print(f"  replayed  {n / w:7.1f} frames/s  {1e3 * c / n:6.1f} CPU ms/frame  "
          f"({1e3 * c / max(rep.n_faces, 1):.1f} per face)")
    for label, s in m.seconds.most_common():
        print(f"    {label:<26} {1e3 * s / n:6.2f}")
    print(f"    {'other threads':<26} {1e3 * (c - sum(m.seconds.values())) / n:6.2f}  "
          f"(FFmpeg's decoding threads, gzip, HDF5, model thread pools)")
    print(f"  bound     {cores * 1e3 / (1e3 * c / n):7.0f} frames/s on {cores} cores")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="*")
    ap.add_argument("--stages", default="detect,track,landmarks,align,crop")
    ap.add_argument("--every", type=int, default=1, help="--detect-every")
    ap.add_argument("--height", type=int, default=720, help="default clips are scaled to this many lines")
    ap.add_argument("--cores", type=int, default=16, help="cores of the machine the bound is for")
    args = ap.parse_args()
    clips = [Path(c) for c in args.clips]
    if not clips:
        data = Path(os.environ.get("FACEKIT_TEST_DATA", "../shared/data")) / "videos"
        tmp = Path(tempfile.mkdtemp())
        clips = [scaled(data / p, args.height, tmp) for p in
                 ("hamilton_multiface.mp4", "videoretalking/face_2.mp4", "crowd_1080p.mp4")]
    print(f"{os.cpu_count()} CPUs here; load average {os.getloadavg()[0]:.1f}")
    for clip in clips:
        run(clip, args.stages, args.every, args.cores)


if __name__ == "__main__":
    main()
