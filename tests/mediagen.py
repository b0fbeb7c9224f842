"""Synthetic test media for facekit tests.

Self-contained (no facekit imports): numpy + OpenCV + scikit-image + ffmpeg
(system ffmpeg if on PATH, else the imageio-ffmpeg binary) + PyAV for the
variable-frame-rate writer.  Every generator takes the output path first plus
keyword options and returns the path (``vfr_video`` returns ``(path, ts)``).

The "face" is the astronaut portrait shipped with scikit-image (Eileen
Collins), cropped to head and shoulders, pasted over a gradient background and
moved a few pixels per frame, so that an ordinary frontal face detector finds
exactly one face in every frame.
"""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
import tempfile
import wave
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "find_ffmpeg",
    "face_image",
    "face_frames",
    "make_audio",
    "write_wav",
    "face_video",
    "silent_video",
    "vfr_video",
    "rotated_video",
    "audio_only",
    "zero_byte",
    "text_as_mp4",
    "truncated_video",
    "mp4_without_moov",
    "still_image",
    "frames_folder",
    "odd_size_video",
    "large_video",
    "hevc10_video",
    "gray_video",
    "interlaced_video",
    "can_encode",
    "symlink_loop",
]

AUDIO_RATE = 44100
AUDIO_CHANNELS = 2


# --------------------------------------------------------------------------
# ffmpeg
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def find_ffmpeg() -> str:
    """Path of an ffmpeg executable: ``ffmpeg`` on PATH, else imageio-ffmpeg's."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("no ffmpeg on PATH and imageio-ffmpeg not installed") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: Sequence[str], stdin_bytes: bytes | None = None) -> None:
    cmd = [find_ffmpeg(), "-hide_banner", "-y", "-loglevel", "error"]
    if stdin_bytes is None:
        cmd.append("-nostdin")
    cmd += [str(a) for a in args]
    proc = subprocess.run(cmd, input=stdin_bytes, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          stdin=None if stdin_bytes is not None else subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stderr.decode(errors='replace')}")


# --------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _astronaut_face() -> np.ndarray:
    import cv2

    img = None
    try:  # reading the bundled png directly is ~10x faster than skimage.data.astronaut()
        import importlib.util

        spec = importlib.util.find_spec("skimage")
        if spec is not None and spec.submodule_search_locations:
            png = Path(list(spec.submodule_search_locations)[0]) / "data" / "astronaut.png"
            bgr = cv2.imread(str(png), cv2.IMREAD_COLOR)
            if bgr is not None:
                img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    except Exception:  # pragma: no cover
        img = None
    if img is None:
        from skimage import data

        img = data.astronaut()  # 512x512 RGB uint8
    assert img.shape == (512, 512, 3), img.shape
    return np.ascontiguousarray(img[0:220, 130:330])  # head + shoulders, 220x200


@functools.lru_cache(maxsize=32)
def _scaled_face(width: int, height: int, scale: float) -> np.ndarray:
    import cv2

    face = _astronaut_face()
    fh, fw = face.shape[:2]
    s = min(scale * height / fh, scale * width / fw)
    nw, nh = max(2, int(round(fw * s))), max(2, int(round(fh * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.resize(face, (nw, nh), interpolation=interp)


@functools.lru_cache(maxsize=32)
def _background(width: int, height: int, kind: str) -> np.ndarray:
    if kind == "plain":
        bg = np.empty((height, width, 3), np.uint8)
        bg[:] = (90, 110, 140)
        return bg
    if kind == "gradient":
        y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
        x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
        r = 60 + 60 * x + 0 * y
        g = 80 + 40 * y + 0 * x
        b = 150 - 50 * x * y
        return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown background {kind!r}")


def _tri(i: int, speed: int, amp: int) -> int:
    """Triangle wave through 0: 0, speed, 2*speed ... amp ... -amp ..."""
    if amp <= 0 or speed <= 0:
        return 0
    period = 4 * amp
    p = (i * speed + amp) % period  # start at 0 going up
    return (p if p < 2 * amp else period - p) - amp


def face_image(size: tuple[int, int] = (320, 240), offset: tuple[int, int] = (0, 0),
               background: str = "gradient", scale: float = 0.85) -> np.ndarray:
    """One RGB uint8 frame (H, W, 3): the face centred + ``offset`` (dx, dy) pixels."""
    width, height = size
    bg = _background(width, height, background).copy()
    face = _scaled_face(width, height, scale)
    fh, fw = face.shape[:2]
    x = (width - fw) // 2 + int(offset[0])
    y = (height - fh) // 2 + int(offset[1])
    x = min(max(x, 0), width - fw)
    y = min(max(y, 0), height - fh)
    bg[y:y + fh, x:x + fw] = face
    return bg


def face_frames(n_frames: int = 30, size: tuple[int, int] = (320, 240),
                speed: int = 2, background: str = "gradient",
                scale: float = 0.85) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` RGB frames with the face moving ``speed`` px/frame
    (horizontally, and half that vertically), bouncing inside the frame."""
    width, height = size
    face = _scaled_face(width, height, scale)
    ampx = max(0, min(24, (width - face.shape[1]) // 2))
    ampy = max(0, min(12, (height - face.shape[0]) // 2))
    for i in range(n_frames):
        yield face_image(size, (_tri(i, speed, ampx), _tri(i, max(1, speed // 2), ampy)),
                         background, scale)


# --------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------
def make_audio(kind: str = "tone", duration: float = 1.0, rate: int = AUDIO_RATE,
               channels: int = AUDIO_CHANNELS, seed: int = 0) -> np.ndarray:
    """int16 samples, shape (n, channels), n = round(duration * rate).

    ``tone``: 440 Hz sine at -6 dBFS.  ``speech``: speech-like signal, a
    glottal-ish harmonic series (F0 110-160 Hz, gliding) shaped by three
    formant bumps, amplitude-modulated into ~4 Hz syllables, with pauses and a
    little breath noise.  ``silence``: zeros.
    """
    n = int(round(duration * rate))
    t = np.arange(n, dtype=np.float64) / rate
    if kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    elif kind == "speech":
        rng = np.random.default_rng(seed)
        f0 = 135 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        formants = ((700, 130), (1200, 200), (2600, 300))
        x = np.zeros(n)
        for h in range(1, 30):
            fh = h * 135.0
            if fh > 5000:
                break
            w = sum(np.exp(-0.5 * ((fh - fc) / bw) ** 2) for fc, bw in formants) + 0.1
            x += (w / h ** 0.7) * np.sin(h * phase)
        # syllables ~4 Hz, words separated by pauses
        syl = np.clip(np.sin(2 * np.pi * 4.0 * t + 0.3), 0, None) ** 0.6
        word = np.ones(n)
        period = 1.1  # 0.8 s of talk, 0.3 s pause
        word[(t % period) > 0.8] = 0.0
        env = syl * word
        # smooth edges
        k = max(1, int(0.01 * rate))
        env = np.convolve(env, np.ones(k) / k, mode="same")
        x = x * env
        x += 0.01 * rng.standard_normal(n) * (env > 0.05)
        peak = np.abs(x).max() if n else 0
        if peak > 0:
            x = 0.6 * x / peak
    elif kind == "silence":
        x = np.zeros(n)
    else:
        raise ValueError(f"unknown audio kind {kind!r}")
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    return np.repeat(pcm[:, None], channels, axis=1)


def write_wav(path, samples: np.ndarray, rate: int = AUDIO_RATE) -> Path:
    """Write int16 samples (n,) or (n, channels) as a 16-bit PCM wav."""
    samples = np.asarray(samples, dtype=np.int16)
    if samples.ndim == 1:
        samples = samples[:, None]
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples).astype("<i2").tobytes())
    return path


# --------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------
_YUV420_CODECS = {"libx264", "h264", "libopenh264", "mpeg1video", "mpeg2video",
                  "mpeg4", "libxvid", "libvpx-vp9", "libvpx", "libaom-av1",
                  "libsvtav1", "libx265"}


def _even(v: int) -> int:
    return v + (v & 1)


def _video_codec_args(codec: str, fps: float, gop: int | None, pix_fmt: str | None = None) -> list[str]:
    args = ["-c:v", codec]
    if pix_fmt:
        args += ["-pix_fmt", pix_fmt]
    elif codec in _YUV420_CODECS:
        args += ["-pix_fmt", "yuv420p"]
    elif codec == "mjpeg":
        args += ["-pix_fmt", "yuvj420p"]
    if codec == "libx264":
        args += ["-preset", "veryfast", "-crf", "18"]
    elif codec in ("mpeg1video", "mpeg2video", "mpeg4", "mjpeg", "libxvid"):
        args += ["-q:v", "2"]
    if gop:
        args += ["-g", str(gop)]
    return args


def _default_audio_codec(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".mpg", ".mpeg", ".vob"):
        return "mp2"
    if ext in (".webm",):
        return "libopus"
    if ext in (".mkv", ".mov", ".avi", ".nut"):
        return "pcm_s16le"
    return "aac"  # mp4, m4a, ts, ...


def face_video(path, n_frames: int = 30, fps: float = 25, size: tuple[int, int] = (320, 240),
               audio: str | None = "tone", codec: str = "libx264",
               audio_codec: str | None = None, background: str = "gradient",
               speed: int = 2, gop: int | None = None, extra_args: Sequence[str] = (),
               frames: Sequence[np.ndarray] | None = None, pix_fmt: str | None = None) -> Path:
    """A video of the moving face, ``n_frames`` at constant ``fps``.

    ``size`` is (width, height); rounded up to even for yuv420p codecs.
    ``audio``: "tone" (440 Hz), "speech", "silence" or None (no audio stream);
    44.1 kHz stereo, exactly n_frames/fps seconds before encoding.
    ``audio_codec``: default by extension (aac for .mp4/.m4a/.ts, pcm_s16le for
    .mkv/.mov/.avi, mp2 for .mpg).  ``gop``: keyframe interval.
    ``frames``: use these RGB frames instead of the moving face.
    ``pix_fmt``: the encoder's pixel format (default yuv420p, or yuvj420p for mjpeg); when
    given, sizes are not rounded (e.g. ``yuv444p`` for odd sizes, ``gray``, ``yuv420p10le``).
    """
    path = Path(path)
    width, height = size
    if pix_fmt is None and (codec in _YUV420_CODECS or codec == "mjpeg"):
        width, height = _even(width), _even(height)
    if frames is None:
        frames = list(face_frames(n_frames, (width, height), speed=speed,
                                  background=background))
    else:
        frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
        height, width = frames[0].shape[:2]
        n_frames = len(frames)
    raw = b"".join(f.tobytes() for f in frames)

    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-framerate", str(fps), "-i", "pipe:0"]
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        if audio is not None:
            wav = write_wav(Path(tmp) / "a.wav", make_audio(audio, n_frames / float(fps)))
            args += ["-i", str(wav), "-map", "0:v:0", "-map", "1:a:0"]
            acodec = audio_codec or _default_audio_codec(path)
            args += ["-c:a", acodec]
            if not acodec.startswith("pcm"):
                args += ["-b:a", "128k"]
        args += _video_codec_args(codec, fps, gop, pix_fmt)
        args += list(extra_args)
        args += [str(path)]
        _run_ffmpeg(args, stdin_bytes=raw)
    return path


def silent_video(path, **kw) -> Path:
    """A face video with no audio stream at all."""
    kw["audio"] = None
    return face_video(path, **kw)


def vfr_video(path, n_frames: int = 30, durations: Sequence[float] = (Fraction(1, 30), Fraction(1, 15)),
              size: tuple[int, int] = (320, 240), codec: str = "libx264",
              audio: str | None = None, speed: int = 2) -> tuple[Path, list[float]]:
    """Genuinely variable-frame-rate video written with PyAV, explicit pts.

    Frame i lasts ``durations[i % len(durations)]`` seconds (default alternating
    1/30 and 1/15 s, like videoretalking/face_1.mp4).  Returns ``(path, ts)``
    with ``ts`` the true presentation times in seconds (``ts[0] == 0.0``).
    The encoder time base is 1/lcm(denominators of durations) (1/30 by default),
    so every timestamp is exact; MP4 stores it with timescale 15360.  (Matroska
    rounds timestamps to 1 ms.)  With ``audio`` ("tone"/"speech") a track
    lasting the total duration is muxed in afterwards with ffmpeg (video stream
    copied, timestamps preserved).
    """
    import math

    import av

    path = Path(path)
    width, height = _even(size[0]), _even(size[1])
    durs = [Fraction(d).limit_denominator(100000) for d in durations]
    den = 1
    for d in durs:
        den = den * d.denominator // math.gcd(den, d.denominator)
    tb = Fraction(1, den)
    pts, t = [], Fraction(0)
    for i in range(n_frames):
        pts.append(int(t / tb))
        t += durs[i % len(durs)]
    total = float(t)
    ts = [float(p * tb) for p in pts]
    # nominal rate = the fastest frame rate in the pattern (like ffmpeg's r_frame_rate)
    nominal = max(1 / d for d in durs)

    def _write(target: Path) -> None:
        with av.open(str(target), "w") as out:
            st = out.add_stream(codec, rate=nominal)
            st.width, st.height = width, height
            st.pix_fmt = "yuv420p"
            st.codec_context.time_base = tb
            if codec == "libx264":
                st.options = {"preset": "veryfast", "crf": "18"}
            for p, img in zip(pts, face_frames(n_frames, (width, height), speed=speed)):
                fr = av.VideoFrame.from_ndarray(img, format="rgb24")
                fr.pts = p
                fr.time_base = tb
                for pkt in st.encode(fr):
                    out.mux(pkt)
            for pkt in st.encode(None):
                out.mux(pkt)

    if audio is None:
        _write(path)
        return path, ts
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        vid = Path(tmp) / ("v" + path.suffix)
        _write(vid)
        wav = write_wav(Path(tmp) / "a.wav", make_audio(audio, total))
        _run_ffmpeg(["-i", vid, "-i", wav, "-map", "0:v:0", "-map", "1:a:0",
                     "-c:v", "copy", "-c:a", _default_audio_codec(path),
                     str(path)])
    return path, ts


def _rot_upright_to_stored(img: np.ndarray, rotation: int) -> np.ndarray:
    # Display matrix rotation R is counter-clockwise: displayed = rot90(stored, R/90).
    # So stored = rot90(upright, -R/90).
    return np.ascontiguousarray(np.rot90(img, k=-(rotation // 90) % 4))


def rotated_video(path, rotation: int = 90, n_frames: int = 30, fps: float = 25,
                  size: tuple[int, int] = (320, 240), audio: str | None = "tone",
                  codec: str = "libx264", upright: bool = True, **kw) -> Path:
    """A face video with display-matrix rotation metadata (``rotation`` degrees
    counter-clockwise, as ffmpeg's ``-display_rotation`` / PyAV's
    ``frame.rotation``; PyAV reports 270 as -90).

    With ``upright=True`` (default, like a phone recording) the *stored* pixels
    are the face turned by -rotation, so the face is upright only after applying
    the rotation: ``np.rot90(frame.to_ndarray(format="rgb24"), k=frame.rotation // 90)``.
    ``size`` is the displayed (width, height).  With ``upright=False`` the
    stored pixels are the upright face and only the metadata is added.
    """
    rotation = int(rotation)
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90")
    path = Path(path)
    width, height = _even(size[0]), _even(size[1])
    frames = list(face_frames(n_frames, (width, height), speed=kw.pop("speed", 2)))
    if upright:
        frames = [_rot_upright_to_stored(f, rotation) for f in frames]
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        tmpv = Path(tmp) / ("plain" + path.suffix)
        face_video(tmpv, fps=fps, audio=audio, codec=codec, frames=frames, **kw)
        _run_ffmpeg(["-display_rotation:v:0", str(rotation), "-i", tmpv,
                     "-map", "0", "-c", "copy", str(path)])
    return path


def audio_only(path, duration: float = 1.0, audio: str = "speech",
               rate: int = AUDIO_RATE, channels: int = AUDIO_CHANNELS,
               codec: str | None = None) -> Path:
    """Audio-only file.  ``.wav`` is written directly (16-bit PCM); other
    extensions go through ffmpeg (``.m4a``/``.mp4``/``.aac`` -> AAC,
    ``.mp3`` -> libmp3lame, ``.flac``, ``.ogg``/``.opus`` -> libopus)."""
    path = Path(path)
    samples = make_audio(audio, duration, rate, channels)
    ext = path.suffix.lower()
    if ext == ".wav" and codec in (None, "pcm_s16le"):
        return write_wav(path, samples, rate)
    if codec is None:
        codec = {".mp3": "libmp3lame", ".flac": "flac", ".ogg": "libopus",
                 ".opus": "libopus", ".mka": "pcm_s16le"}.get(ext, "aac")
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        wav = write_wav(Path(tmp) / "a.wav", samples, rate)
        args = ["-i", wav, "-vn", "-c:a", codec]
        if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
            args += ["-ar", "48000"]
        _run_ffmpeg(args + [str(path)])
    return path


# --------------------------------------------------------------------------
# broken files
# --------------------------------------------------------------------------
def zero_byte(path) -> Path:
    """An empty file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def text_as_mp4(path, text: str = "this is not a video, just some text\n" * 20) -> Path:
    """A plain-text file (typically named *.mp4)."""
    path = Path(path)
    path.write_text(text)
    return path


def truncated_video(path, n_frames: int = 50, fraction: float = 0.5, fps: float = 25,
                    size: tuple[int, int] = (320, 240), audio: str | None = "tone",
                    codec: str = "libx264", gop: int = 5,
                    mp4_layout: str = "fragmented") -> Path:
    """A valid video cut to ``fraction`` of its bytes, so that its first part
    still decodes.  Use .mkv / .ts / .webm (PyAV decodes the prefix and stops
    quietly) or .mp4/.mov, written per ``mp4_layout``: "fragmented" (moov
    first, a fragment per keyframe; ``stream.frames == 0``) or "faststart"
    (moov first with the full sample table, so ``stream.frames`` still says
    ``n_frames``).  For mp4, PyAV's ``container.decode`` yields the prefix
    frames and then raises ``av.InvalidDataError`` on the cut packet.
    """
    path = Path(path)
    extra: list[str] = []
    if path.suffix.lower() in (".mp4", ".m4v", ".mov"):
        if mp4_layout == "fragmented":
            extra = ["-movflags", "frag_keyframe+empty_moov+default_base_moof"]
        elif mp4_layout == "faststart":
            extra = ["-movflags", "+faststart"]
        else:
            raise ValueError(f"unknown mp4_layout {mp4_layout!r}")
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        full = Path(tmp) / ("full" + path.suffix)
        face_video(full, n_frames=n_frames, fps=fps, size=size, audio=audio,
                   codec=codec, gop=gop, extra_args=extra)
        data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """[(type, offset, size)] of the top-level ISO-BMFF boxes."""
    out, off = [], 0
    while off + 8 <= len(data):
        size, typ = struct.unpack(">I4s", data[off:off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
        elif size == 0:
            size = len(data) - off
        out.append((typ.decode("latin-1"), off, size))
        if size < 8:
            break
        off += size
    return out


def mp4_without_moov(path, n_frames: int = 30, **kw) -> Path:
    """A normal (non-faststart) MP4 truncated right before its ``moov`` box:
    ftyp + mdat intact, no index, so it cannot be opened ("moov atom not found")."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        full = Path(tmp) / "full.mp4"
        face_video(full, n_frames=n_frames, **kw)
        data = full.read_bytes()
    boxes = _top_level_boxes(data)
    moov = [off for typ, off, _ in boxes if typ == "moov"]
    if not moov:
        raise RuntimeError(f"no moov box in generated mp4: {boxes}")
    if moov[0] < [off for typ, off, _ in boxes if typ == "mdat"][0]:
        raise RuntimeError("moov before mdat (faststart?)")
    path.write_bytes(data[: moov[0]])
    return path


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def _imwrite(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise RuntimeError(f"cv2.imwrite failed for {path}")


def still_image(path, size: tuple[int, int] = (320, 240), background: str = "gradient") -> Path:
    """A single jpg/png (by extension) of the face, centred."""
    path = Path(path)
    _imwrite(path, face_image(size, background=background))
    return path


def frames_folder(directory, n: int = 10, size: tuple[int, int] = (320, 240),
                  ext: str = ".jpg", start: int = 1, digits: int = 5, speed: int = 2) -> Path:
    """A folder of ``n`` numbered images (00001.jpg, 00002.jpg, ...) of the moving face."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(face_frames(n, size, speed=speed)):
        _imwrite(directory / f"{start + i:0{digits}d}{ext}", img)
    return directory


# --------------------------------------------------------------------------
# hostile but valid videos (tests/test_reliability.py)
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def can_encode(codec: str, pix_fmt: str = "yuv420p") -> bool:
    """Whether this ffmpeg can encode ``codec`` in ``pix_fmt`` (tries a 2-frame 64x64 clip)."""
    with tempfile.TemporaryDirectory(prefix="mediagen_") as tmp:
        try:
            face_video(Path(tmp) / "probe.mkv", n_frames=2, size=(64, 64), audio=None, codec=codec,
                       pix_fmt=pix_fmt)
            return True
        except RuntimeError:
            return False


def odd_size_video(path, size: tuple[int, int] = (33, 17), n_frames: int = 5, fps: float = 25,
                   audio: str | None = None, seed: int = 0) -> Path:
    """A clip of odd (or tiny, e.g. 1x1) frame size: H.264 in 4:4:4 so any size is legal.
    Frames are random noise (no face fits): a detector must find nothing and not crash."""
    rng = np.random.default_rng(seed)
    w, h = size
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_frames)]
    return face_video(path, fps=fps, audio=audio, frames=frames, pix_fmt="yuv444p")


def large_video(path, size: tuple[int, int] = (7680, 4320), n_frames: int = 2, fps: float = 25,
                audio: str | None = None) -> Path:
    """A very large frame size (8K by default) of the face, encoded as fast as x264 can."""
    return face_video(path, n_frames=n_frames, fps=fps, size=size, audio=audio, speed=0,
                      background="plain", extra_args=["-preset", "ultrafast"])


def hevc10_video(path, n_frames: int = 10, fps: float = 25, size: tuple[int, int] = (320, 240),
                 audio: str | None = "tone") -> Path:
    """10-bit HEVC (libx265, yuv420p10le). Check ``can_encode("libx265", "yuv420p10le")`` first."""
    return face_video(path, n_frames=n_frames, fps=fps, size=size, audio=audio, codec="libx265",
                      pix_fmt="yuv420p10le", extra_args=["-x265-params", "log-level=error"])


def gray_video(path, n_frames: int = 10, fps: float = 25, size: tuple[int, int] = (320, 240),
               audio: str | None = "tone") -> Path:
    """A grayscale video: H.264 with pix_fmt gray (4:0:0, High profile) of the grey face."""
    import cv2

    frames = [np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
              for f in face_frames(n_frames, (_even(size[0]), _even(size[1])))]
    return face_video(path, fps=fps, audio=audio, frames=frames, pix_fmt="gray")


def interlaced_video(path, n_frames: int = 10, fps: float = 25, size: tuple[int, int] = (320, 240),
                     audio: str | None = "tone") -> Path:
    """An interlaced H.264 video: pairs of frames woven into top-field-first frames
    (``tinterlace=interleave_top``: half the frame rate) and coded as fields (+ilme+ildct)."""
    return face_video(path, n_frames=n_frames, fps=fps, size=size, audio=audio,
                      extra_args=["-vf", "tinterlace=mode=interleave_top,setfield=tff",
                                  "-flags", "+ilme+ildct", "-x264-params", "interlaced=1"])


def symlink_loop(directory) -> Path:
    """``directory/loop -> directory``: a directory that contains itself."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "loop"
    if not link.is_symlink():
        link.symlink_to(directory.resolve(), target_is_directory=True)
    return directory
