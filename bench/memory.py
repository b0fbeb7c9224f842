"""Peak memory of `facekit extract` against video length: it must stay flat.

    python bench/memory.py [--minutes 1,20] [--fps 5] [--stages ...]

Generates 640x360 25 fps H.264 clips with a face-free test pattern and a 440 Hz tone (ffmpeg
lavfi; the imageio-ffmpeg binary when there is no ffmpeg on PATH), runs `facekit extract` on each in
its own process and reports the peak RSS (ru_maxrss of the child). Frames are sampled with --fps
to keep the run short; every frame is still decoded. The issue's goal: the 20-minute clip's peak
within 1.5x the 1-minute clip's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def make_clip(path: Path, minutes: float) -> Path:
    import mediagen

    seconds = int(minutes * 60)
    mediagen._run_ffmpeg([
        "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "250", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-ac", "2", "-shortest", str(path)])
    return path


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` under a fresh wrapper process; (peak RSS in MiB of ``cmd``, wall seconds)."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024.0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="1,20")
    ap.add_argument("--fps", default="5")
    ap.add_argument("--stages", default=None, help="default: extract's default stages")
    a = ap.parse_args()
    lengths = sorted(float(m) for m in a.minutes.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fk_mem_") as tmp:
        for m in lengths:
            clip = make_clip(Path(tmp) / f"clip_{m:g}min.mp4", m)
            cmd = [sys.executable, "-m", "facekit", "extract", str(clip), "-o", str(Path(tmp) / f"m{m:g}.h5"),
                   "-q", "--fps", a.fps] + (["--stages", a.stages] if a.stages else [])
            rss, wall = peak_rss_mb(cmd)
            rows.append((m, rss, wall))
            print(f"{m:6g} min  peak RSS {rss:8.1f} MiB  {wall:7.1f} s", flush=True)
    base = rows[0][1]
    for m, rss, _ in rows[1:]:
        print(f"{m:g} min / {lengths[0]:g} min peak RSS: {rss / base:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
