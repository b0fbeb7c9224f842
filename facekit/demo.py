"""``make demo`` / ``python -m facekit.demo [DIR]``: make a short talking-face clip, run
``facekit extract`` on it and print ``facekit info``.

The face is the astronaut portrait that ships inside scikit-image (installed by ``make demo``);
the clip is encoded with PyAV (H.264 + AAC), so nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 25  # frames/s of the demo clip
SECONDS = 3  # length of the demo clip
SIZE = (480, 360)  # width, height in pixels
AUDIO_RATE = 44_100  # Hz


def _face() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        sys.exit("facekit demo: needs scikit-image for its sample face (pip install scikit-image)")
    return np.ascontiguousarray(data.astronaut()[0:220, 130:330])


def make_clip(path: str | Path) -> Path:
    """Write a SECONDS-long clip of a face drifting over a gradient, with a voiced-speech-like tone."""
    import av
    import cv2

    path = Path(path)
    w, h = SIZE
    face = cv2.resize(_face(), (200, 220))
    bg = np.zeros((h, w, 3), np.uint8)
    bg[..., 0] = np.linspace(40, 90, w, dtype=np.uint8)[None, :]
    bg[..., 2] = np.linspace(120, 60, h, dtype=np.uint8)[:, None]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for i in range(FPS * SECONDS):
            img = bg.copy()
            x = 140 + int(20 * np.sin(i / 10))
            y = 70 + int(8 * np.cos(i / 13))
            img[y:y + 220, x:x + 200] = face
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        t = np.arange(AUDIO_RATE * SECONDS) / AUDIO_RATE
        f0 = 130 + 20 * np.sin(2 * np.pi * 0.5 * t)
        voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / AUDIO_RATE) / k for k in range(1, 8))
        syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None)
        audio = (0.3 * voice * syllables / 2).astype(np.float32)
        for start in range(0, len(audio), 1024):
            chunk = audio[start:start + 1024]
            fr = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            fr.sample_rate = AUDIO_RATE
            fr.pts, fr.time_base = start, Fraction(1, AUDIO_RATE)
            for p in aus.encode(fr):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d = Path(argv[0] if argv else "demo-out")
    d.mkdir(parents=True, exist_ok=True)
    clip = make_clip(d / "talking_face.mp4")
    out = d / "feats.h5"
    print(f"demo clip: {clip}")
    exe = [sys.executable, "-m", "facekit"]
    rc = subprocess.call(exe + ["extract", str(clip), "-o", str(out), "--overwrite"])
    print(f"\nresult: {out} (shards in {out}.d/)\n")
    subprocess.call(exe + ["info", str(out)])
    print("\nread it in Python:\n  import facekit\n"
          f"  v = facekit.open({str(out)!r}).videos['talking_face.mp4']\n  v.faces.box, v.audio['mel'].data")
    return rc


if __name__ == "__main__":
    sys.exit(main())
