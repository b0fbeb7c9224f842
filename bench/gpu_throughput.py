"""`facekit extract --device cuda` on 720p versions of real clips: frames/s of the whole stack on one machine.

    python bench/gpu_throughput.py [CLIP ...] [--copies 32] [--per-device 16,8,4] [--landmarker dlib68]
                                   [--stages detect,track,landmarks,align,crop] [--procs 16]
                                   [--naive-copies 16] [--cpu-copies 16] [--skip decode,naive,cpu]
                                   [--device cuda] [--warmup-seconds 4] [--json out.json]

For each CLIP, --copies hard links of it (distinct names: distinct videos of the store; symbolic
links across file systems) are processed, back to back on the same machine, by
  cuda-K   facekit.extract(copies, device=--device, workers_per_device=K): frames/s by the wall clock
           (everything: starting the worker processes, their imports, model loading, the tail of
           the queue) and an estimate "while processing": frames / (sum of the per-video seconds /
           workers), which leaves out process start-up, imports and the queue's tail but not the
           model loading each worker does in its first video; the share of time GPU 0 ran a
           kernel (NVML, sampled every 0.1 s from before the workers start) and its largest memory in use
  decode   PyAV decoding every frame to RGB, --procs processes at once, one FFmpeg thread each
           (what any pipeline must pay on this machine: the ceiling), --naive-copies copies
  naive    bench/throughput.py's per-frame loop (cv2 YuNet -> dlib 68 points -> ArcFace warp), one
           process per copy, --procs at a time, each on one OpenCV thread (how a user parallelises
           a script; one thread each is its best case), --naive-copies copies
  cpu-W    facekit.extract(copies, device="cpu", workers=--procs), --cpu-copies copies: the same
           machine without its GPU
and prints the ratios to decode and naive, and whether the stores of every cuda-K hold identical
boxes, landmarks and crops (two videos of each run are compared: copies of the same clip), and
how cpu-W differs from them.
Default clips (ffmpeg, from shared/data or $FACEKIT_TEST_DATA; see CLIPS): hamilton_multiface
scaled to 1280x720 and looped 4 times (1,100 frames, 1-6 faces), crowd_1080p scaled to 1280x720 and
looped 4 times (420 frames, 5-8 faces), videoretalking/face_2 scaled to 720x720, padded to 1280x720
and looped 8 times (1,000 frames, one large face). Before anything is timed, the first
--warmup-seconds of the first clip are processed once in this process, which fills numba's on-disk
cache of compiled code for the workers. Runs on the CPU too (--device cpu) to check the script, not
to measure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

import facekit  # noqa: E402

KEYS = ("faces/box", "faces/landmarks", "faces/crop")
# name: (source under the data folder, times played, ffmpeg video filter, x264 CRF)
CLIPS = {"hamilton720": ("videos/hamilton_multiface.mp4", 4, "scale=1280:720", 20),
         "crowd720": ("videos/crowd_1080p.mp4", 4, "scale=1280:720", 22),
         "face2_720": ("videos/videoretalking/face_2.mp4", 8, "scale=720:720,pad=1280:720:280:0", 20)}


def prepare_clips(data: Path, out_dir: Path) -> list[Path]:
    """The default 720p clips (CLIPS), made by ffmpeg from the shared data into out_dir (no audio)."""
    import subprocess

    from mediagen import find_ffmpeg

    out = []
    for name, (src, plays, vf, crf) in CLIPS.items():
        p = out_dir / f"{name}.mp4"
        subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-nostdin",
                        "-stream_loop", str(plays - 1), "-i", str(data / src), "-an", "-vf", vf,
                        "-c:v", "libx264", "-preset", "fast", "-crf", str(crf), str(p)], check=True)
        out.append(p)
    return out


def device_line(device: str) -> str:
    line = f"{os.cpu_count()} CPU cores, Python {platform.python_version()}"
    if device == "cpu":
        return line
    import cv2
    import torch

    p = torch.cuda.get_device_properties(0)
    return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB), PyTorch {torch.__version__}, OpenCV {cv2.__version__}, "
            + line)


class GpuSampler:
    """Mean GPU utilisation (%) and peak memory in use (GiB) of GPU 0 while the block runs (NVML)."""

    def __init__(self, period: float = 0.1):
        self.period, self.util, self.mem = period, [], []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML (CPU machine): nothing sampled
            self._nvml = None

    def _run(self):
        while not self._stop.wait(self.period):
            self.util.append(self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu)
            self.mem.append(self._nvml.nvmlDeviceGetMemoryInfo(self._h).used / 2**30)

    def __enter__(self):
        if self._nvml:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self._nvml:
            self._stop.set()
            self._t.join()

    def text(self) -> str:
        if not self.util:
            return ""
        return f"; GPU busy {np.mean(self.util):.0f} % of the time, up to {max(self.mem):.1f} GiB in use"


def _decode(path: str) -> int:
    import av

    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        for f in c.decode(s):
            f.to_ndarray(format="rgb24")
            n += 1
    return n


def _naive(path: str) -> int:
    import cv2

    cv2.setNumThreads(1)
    from throughput import naive_loop

    return naive_loop(path)[0]


def _ready(_) -> int:
    """Import what the timed functions use, then hold the worker long enough for every worker to get one."""
    import av  # noqa: F401
    import cv2  # noqa: F401
    import throughput  # noqa: F401

    time.sleep(1.0)
    return os.getpid()


def pool_rate(fn, paths: list[str], procs: int) -> tuple[int, float]:
    """Frames and wall seconds of fn over paths in a pool of procs processes (spawned; their start-up
    and imports are not timed, each one's own model loading in fn is)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")  # inherited by the spawned workers
    try:
        with mp.get_context("spawn").Pool(procs) as pool:
            pool.map(_ready, range(procs), chunksize=1)
            t0 = time.perf_counter()
            n = sum(pool.map(fn, paths, chunksize=1))
            return n, time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _read(store_path: Path, key: str) -> dict:
    import h5py

    from facekit import store

    with h5py.File(store.shards_dir(store_path) / store.shard_name(key), "r") as f:
        g = f[store.video_path(key)]
        return {k: g[k][()] for k in KEYS}


def n_workers(device: str, per: int) -> int:
    """Worker processes of a run: ``per`` for each GPU of ``device``."""
    from facekit import device as device_mod
    from facekit.config import Config

    return device_mod.plan(Config(device=device, workers_per_device=per))[0]


def run_extract(copies, out: Path, opts: dict, label: str, per: int) -> dict:
    """One run; ``per``: its worker processes in all."""
    with GpuSampler() as gs:
        t0 = time.perf_counter()
        s = facekit.extract(copies, out, progress=False, **opts)
        dt = time.perf_counter() - t0
    assert s.ok and len(s.processed) == len(copies), s.to_dict()
    n = sum(r.n_frames for r in s.results)
    faces = sum(r.n_faces for r in s.results)
    busy = sum(r.seconds for r in s.results) / min(per, len(copies))
    print(f"  {label:<8} {len(copies)} videos, {n} frames, {faces / n:.2f} faces/frame: {dt:6.1f} s = "
          f"{n / dt:7.1f} frames/s by the wall clock, {n / busy:7.1f} while processing{gs.text()}", flush=True)
    keys = sorted(r.key for r in s.results)[:2]
    return {"frames": n, "seconds": dt, "fps_wall": n / dt, "fps_processing": n / busy,
            "gpu_util": float(np.mean(gs.util)) if gs.util else None,
            "gpu_mem_gib": max(gs.mem) if gs.mem else None, "stores": {k: _read(out, k) for k in keys}}


def _same(a: dict, b: dict) -> bool:
    """Identical arrays (NaN landmarks, which dlib68 gives faces off the image, count as equal)."""
    return a.keys() == b.keys() and all(
        a[k][d].shape == b[k][d].shape and a[k][d].tobytes() == b[k][d].tobytes() for k in a for d in KEYS)


def _diff(a: dict, b: dict) -> str:
    parts = []
    for k in a:
        if k not in b:
            parts.append(f"{k}: missing from the second store")
            continue
        ba, bb = a[k]["faces/box"], b[k]["faces/box"]
        if ba.shape != bb.shape:
            parts.append(f"{k}: {len(ba)} vs {len(bb)} faces")
            continue
        if not len(ba):
            parts.append(f"{k}: no faces in either")
            continue
        lm = np.abs(a[k]["faces/landmarks"] - b[k]["faces/landmarks"])
        cr = np.abs(a[k]["faces/crop"].astype(np.int16) - b[k]["faces/crop"].astype(np.int16))
        parts.append(f"boxes max {np.abs(ba - bb).max():.2f} px, landmarks max {np.nanmax(lm) if lm.size else 0:.2f} px "
                     f"(p99 {np.nanpercentile(lm, 99) if lm.size else 0:.2f}), crops max {cr.max() if cr.size else 0} "
                     f"grey levels ({100 * (cr == 0).mean() if cr.size else 100:.1f} % equal)")
    return "; ".join(parts)


def bench_clip(clip: Path, a, tmp: Path, n: int) -> dict:
    stem = f"{n}-{clip.stem}"
    d = tmp / stem
    d.mkdir()
    copies = []
    for i in range(max(a.copies, a.naive_copies, a.cpu_copies)):
        p = d / f"{clip.stem}_{i:03d}{clip.suffix}"
        try:
            os.link(clip, p)
        except OSError:  # another file system
            p.symlink_to(clip.resolve())
        copies.append(str(p))
    info = facekit.probe(clip)
    print(f"{clip.name}: {info.width}x{info.height}, {info.n_frames} frames", flush=True)
    base = dict(stages=a.stages, landmarker=a.landmarker)
    res: dict = {"clip": clip.name, "width": info.width, "height": info.height}
    if a.device != "cpu":
        for per in a.per_device:
            res[f"cuda-{per}"] = run_extract(copies[:a.copies], tmp / f"{stem}-cuda{per}.h5",
                                             {**base, "device": a.device, "workers_per_device": per},
                                             f"cuda-{per}", n_workers(a.device, per))
    if "decode" not in a.skip:
        n, dt = pool_rate(_decode, copies[:a.naive_copies], a.procs)
        res["decode"] = {"frames": n, "seconds": dt, "fps_wall": n / dt}
        print(f"  {'decode':<8} {a.naive_copies} videos, {n} frames: {dt:6.1f} s = {n / dt:7.1f} frames/s "
              f"({a.procs} processes)", flush=True)
    if "naive" not in a.skip:
        n, dt = pool_rate(_naive, copies[:a.naive_copies], a.procs)
        res["naive"] = {"frames": n, "seconds": dt, "fps_wall": n / dt}
        print(f"  {'naive':<8} {a.naive_copies} videos, {n} frames: {dt:6.1f} s = {n / dt:7.1f} frames/s "
              f"({a.procs} processes)", flush=True)
    if "cpu" not in a.skip:
        res[f"cpu-{a.procs}"] = run_extract(copies[:a.cpu_copies], tmp / f"{stem}-cpu.h5",
                                            {**base, "device": "cpu", "workers": a.procs}, f"cpu-{a.procs}", a.procs)
    runs = {k: v for k, v in res.items() if isinstance(v, dict) and "stores" in v}
    cuda = [k for k in runs if k.startswith("cuda")]
    if len(cuda) > 1:
        same = all(_same(runs[cuda[0]]["stores"], runs[k]["stores"]) for k in cuda[1:])
        print(f"  stores of {', '.join(cuda)}: identical boxes, landmarks and crops: {same}", flush=True)
        res["cuda_identical"] = same
    cpu = [k for k in runs if k.startswith("cpu")]
    if cuda and cpu:
        print(f"  {cpu[0]} vs {cuda[0]}: {_diff(runs[cpu[0]]['stores'], runs[cuda[0]]['stores'])}", flush=True)
    for v in runs.values():
        del v["stores"]
    best = max((v["fps_wall"] for k, v in res.items() if k.startswith("cuda") and isinstance(v, dict)), default=None)
    for ref in ("decode", "naive"):
        if best and ref in res:
            print(f"  best cuda-K vs {ref}: {best / res[ref]['fps_wall']:.2f}x", flush=True)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="*", type=Path, help="default: the CLIPS made from the shared data")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--copies", type=int, default=32, help="copies of each clip in the cuda-K runs")
    ap.add_argument("--per-device", default="16,8,4", help="--workers-per-device values")
    ap.add_argument("--procs", type=int, default=os.cpu_count(), help="processes of decode, naive and cpu-W")
    ap.add_argument("--naive-copies", type=int, default=16, help="copies for decode and naive")
    ap.add_argument("--cpu-copies", type=int, default=16, help="copies for cpu-W")
    ap.add_argument("--landmarker", default="dlib68")
    ap.add_argument("--stages", default="detect,track,landmarks,align,crop")
    ap.add_argument("--skip", default="", help="comma-separated: decode,naive,cpu")
    ap.add_argument("--warmup-seconds", type=float, default=4.0, help="0: no warm-up run")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    a.per_device = [int(v) for v in a.per_device.split(",") if v]
    a.skip = set(a.skip.split(","))
    print(device_line(a.device), flush=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not a.clips:
            data = Path(os.environ.get("FACEKIT_TEST_DATA", BENCH.parent.parent / "shared" / "data"))
            (tmp / "clips").mkdir()
            a.clips = prepare_clips(data, tmp / "clips")
        if a.warmup_seconds > 0:
            import av

            short = tmp / f"warm{a.clips[0].suffix}"
            with av.open(str(a.clips[0])) as src, av.open(str(short), "w") as dst:
                s_in = src.streams.video[0]
                s_out = dst.add_stream_from_template(s_in)
                for pkt in src.demux(s_in):
                    if pkt.pts is not None and (pkt.pts - (s_in.start_time or 0)) * s_in.time_base > a.warmup_seconds:
                        break
                    if pkt.dts is not None:
                        pkt.stream = s_out
                        dst.mux(pkt)
            t0 = time.perf_counter()
            opts = dict(stages=a.stages, landmarker=a.landmarker, device=a.device, progress=False)
            s = facekit.extract([short], tmp / "warm.h5", **opts)
            assert s.ok, s.to_dict()
            print(f"warm-up: {s.results[0].n_frames} frames in {time.perf_counter() - t0:.1f} s", flush=True)
        for i, clip in enumerate(a.clips):
            out.append(bench_clip(clip, a, tmp, i))
            if a.json:  # after every clip: a run cut short keeps what it measured
                a.json.write_text(json.dumps({"device": device_line(a.device), "stages": a.stages,
                                              "landmarker": a.landmarker, "clips": out}, indent=1))


if __name__ == "__main__":
    main()
