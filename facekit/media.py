"""Media I/O: probe, stream video frames in bounded batches, decode audio.

Decoding goes through PyAV (FFmpeg's libraries shipped in the ``av`` wheel), so no system
``ffmpeg``/``ffprobe`` is needed. Frames are timed from the stream itself: container frame
counts and nominal rates are reported but never trusted (MPEG-1 stores no frame count, a
variable-frame-rate clip may claim 30 fps and average 22).

Conventions
- Frames are RGB ``uint8`` arrays ``[B, H, W, 3]`` in display orientation (rotation metadata
  applied), optionally downscaled so that ``max(H, W) <= max_side``.
- ``t_sec`` is the presentation time in seconds, relative to the container start, float64.
- Audio is mono float32 at ``SAMPLE_RATE`` Hz, resampled and down-mixed by FFmpeg (swresample).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import queue
from dataclasses import dataclass, field, asdict
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16_000  # Hz, audio delivered to every audio stage
DEFAULT_BATCH_SIZE = 32  # frames per batch
DEFAULT_FRAME_RATE = 30.0  # frames/s assumed for folders of image frames

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .mpe .m2v .ts .mts .m2ts .wmv .flv .3gp .ogv .vob .dv .mxf".split()
)
IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .bmp .tif .tiff .webp".split())


class MediaError(Exception):
    """A media file cannot be used. ``str(err)`` is one line: ``"<path>: <cause>"``."""

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = " ".join(str(cause).split())  # one line, always
        super().__init__(f"{self.path}: {self.cause}")


@dataclass
class MediaInfo:
    """What ``probe`` learns from a file's headers (nothing is decoded).

    ``width``/``height`` are display size (after rotation). ``n_frames`` is the container's
    claim (None when absent) and ``fps_nominal``/``fps_avg`` are the stream's nominal
    (r_frame_rate) and average rates; count frames by decoding when you need the truth.
    """

    path: str
    kind: str  # "video", "image", "frames" (folder of image frames) or "audio"
    format: str = ""
    duration_sec: float | None = None
    has_video: bool = False
    video_codec: str = ""
    width: int = 0
    height: int = 0
    rotation: int = 0  # degrees the stored frames are rotated clockwise to display upright
    fps_nominal: float | None = None
    fps_avg: float | None = None
    n_frames: int | None = None
    pix_fmt: str = ""
    has_audio: bool = False
    audio_codec: str = ""
    audio_rate: int | None = None
    audio_channels: int | None = None
    frame_files: list[str] = field(default_factory=list, repr=False)

    def to_attrs(self) -> dict:
        """Flat dict for HDF5 attributes (None -> absent)."""
        d = asdict(self)
        d.pop("frame_files")
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class FrameBatch:
    """A batch of decoded frames.

    rgb: uint8 [B, H, W, 3]; t_sec: float64 [B]; index: int64 [B] (position of each frame in
    the decoded stream, counting frames skipped by ``fps`` sampling); scale: processed size /
    display size (multiply processed pixel coordinates by ``1/scale`` to get display pixels).
    """

    rgb: np.ndarray
    t_sec: np.ndarray
    index: np.ndarray
    scale: float


def ffmpeg_exe() -> str:
    """Path of an ffmpeg binary: the system one when present, else the one imageio-ffmpeg ships."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - base dependency
        raise RuntimeError("no ffmpeg found: install ffmpeg or `pip install imageio-ffmpeg`") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def media_kind(path: str | os.PathLike) -> str | None:
    """``"video"``, ``"image"`` or ``"frames"`` from the path alone; None when not media."""
    p = Path(path)
    if p.is_dir():
        return "frames"
    ext = p.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def list_frame_files(folder: str | os.PathLike) -> list[str]:
    """Image files of a folder of frames, in natural order (``2.jpg`` before ``10.jpg``)."""
    import re

    def natural(name: str):
        return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]

    names = [n for n in os.listdir(folder) if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return [os.path.join(folder, n) for n in sorted(names, key=natural)]


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError(path, "no such file")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")


def _open_av(path: str):
    import av

    _check_readable(path)
    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise MediaError(path, f"not a readable media file ({_av_reason(e)})") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise MediaError(path, f"cannot open: {e}") from e


def _av_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(":")[0].strip() if "Errno" in msg else msg


def _frame_rotation(frame) -> int:
    """Clockwise degrees to display a decoded frame upright.

    PyAV exposes the display matrix only on decoded frames: ``frame.rotation`` is the
    counter-clockwise angle in [-180, 180] (90, -180, -90 for ffmpeg's 90/180/270).
    """
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(-rot / 90.0) * 90) % 360


def _rotate(rgb: np.ndarray, cw_degrees: int) -> np.ndarray:
    if cw_degrees == 0:
        return rgb
    k = {90: -1, 180: 2, 270: 1}[cw_degrees]  # np.rot90 turns counter-clockwise for k > 0
    return np.ascontiguousarray(np.rot90(rgb, k=k, axes=(0, 1)))


def _fps(rate) -> float | None:
    if rate is None:
        return None
    try:
        v = float(rate)
    except (TypeError, ZeroDivisionError):
        return None
    return v if v > 0 and math.isfinite(v) else None


def probe(path: str | os.PathLike, frame_rate: float = DEFAULT_FRAME_RATE) -> MediaInfo:
    """Read a media file's (or a folder of frames') properties without decoding it.

    Raises MediaError for missing, empty, unreadable or non-media files and for files with
    neither a video nor an audio stream.
    """
    path = os.fspath(path)
    kind = media_kind(path)
    if kind == "frames":
        if not os.path.isdir(path):
            raise MediaError(path, "no such directory")
        files = list_frame_files(path)
        if not files:
            raise MediaError(path, "folder holds no image frames")
        h, w = _read_image(files[0]).shape[:2]
        return MediaInfo(
            path=path, kind="frames", format="image2", has_video=True, video_codec="image",
            width=w, height=h, fps_nominal=frame_rate, fps_avg=frame_rate, n_frames=len(files),
            duration_sec=len(files) / frame_rate, frame_files=files,
        )
    if kind == "image":
        img = _read_image(path)
        h, w = img.shape[:2]
        return MediaInfo(path=path, kind="image", format="image", has_video=True, video_codec="image",
                         width=w, height=h, n_frames=1, duration_sec=0.0)

    container = _open_av(path)
    try:
        info = MediaInfo(path=path, kind="video", format=container.format.name or "")
        if container.duration is not None:
            info.duration_sec = container.duration / 1_000_000  # AV_TIME_BASE
        if container.streams.video:
            vs = container.streams.video[0]
            cc = vs.codec_context
            info.has_video = True
            info.video_codec = cc.name or ""
            info.pix_fmt = str(cc.pix_fmt or "")
            info.fps_nominal = _fps(vs.guessed_rate) or _fps(vs.base_rate)  # MPEG-1: base_rate is the field rate
            info.fps_avg = _fps(vs.average_rate)
            info.n_frames = int(vs.frames) or None
            info.rotation = _stream_rotation_av(container, vs)
            w, h = int(cc.width or 0), int(cc.height or 0)
            info.width, info.height = (h, w) if info.rotation in (90, 270) else (w, h)
            if info.duration_sec is None and vs.duration is not None and vs.time_base:
                info.duration_sec = float(vs.duration * vs.time_base)
        if container.streams.audio:
            a = container.streams.audio[0]
            info.has_audio = True
            info.audio_codec = a.codec_context.name or ""
            info.audio_rate = int(a.rate or a.codec_context.sample_rate or 0) or None
            info.audio_channels = int(a.codec_context.channels or 0) or None
        if not info.has_video and info.has_audio:
            info.kind = "audio"
        if not info.has_video and not info.has_audio:
            raise MediaError(path, "no video or audio stream")
        return info
    finally:
        container.close()


def _stream_rotation_av(container, stream) -> int:
    """Rotation from the first decoded frame's display matrix (PyAV has no stream-level reader)."""
    try:
        for frame in container.decode(stream):
            return _frame_rotation(frame)
    except Exception:
        return 0
    return 0


def _read_image(path: str) -> np.ndarray:
    import cv2

    _check_readable(path)
    data = np.fromfile(path, dtype=np.uint8)  # unicode-safe, unlike cv2.imread
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError(path, "not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int, float]:
    if not max_side or max(w, h) <= max_side:
        return w, h, 1.0
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s)), s


class _FpsSampler:
    """Keeps the first frame at or after each tick of a ``fps`` grid starting at the first frame."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else None
        self.next_t = None

    def keep(self, t: float) -> bool:
        if self.period is None:
            return True
        if self.next_t is None:
            self.t0, self.next_t = t, t
        if t + 1e-6 < self.next_t:
            return False
        k = math.floor((t - self.t0) / self.period + 1e-6) + 1
        self.next_t = self.t0 + k * self.period
        return True


def iter_frames(
    path: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fps: float | None = None,
    max_side: int | None = None,
    frame_rate: float = DEFAULT_FRAME_RATE,
    info: MediaInfo | None = None,
    warnings: list | None = None,
) -> Iterator[FrameBatch]:
    """Stream a video (or image, or folder of frames) as ``FrameBatch``es of at most ``batch_size``.

    fps: keep the first frame at or after each 1/fps tick (sampling by timestamp, not index).
    max_side: downscale so that the longer side is at most this many pixels.
    warnings: when given, a decode error after at least one good frame appends a message here
      and ends the stream (the decodable prefix is kept); with no good frame it raises MediaError.
    Memory is bounded by one batch.
    """
    path = os.fspath(path)
    info = info or probe(path, frame_rate=frame_rate)
    if not info.has_video:
        raise MediaError(path, "no video stream")
    sampler = _FpsSampler(fps)
    out_w, out_h, scale = _target_size(info.width, info.height, max_side)
    buf_rgb: list[np.ndarray] = []
    buf_t: list[float] = []
    buf_i: list[int] = []

    def flush():
        b = FrameBatch(np.stack(buf_rgb), np.asarray(buf_t, np.float64), np.asarray(buf_i, np.int64), scale)
        buf_rgb.clear(), buf_t.clear(), buf_i.clear()
        return b

    for i, t, rgb in _decode(path, info, out_w, out_h, frame_rate, warnings):
        if not sampler.keep(t):
            continue
        buf_rgb.append(rgb)
        buf_t.append(t)
        buf_i.append(i)
        if len(buf_rgb) >= batch_size:
            yield flush()
    if buf_rgb:
        yield flush()


def _decode(path, info: MediaInfo, out_w, out_h, frame_rate, warnings):
    """Yield (index, t_sec, rgb[out_h, out_w, 3]) for every decoded frame."""
    import cv2

    if info.kind in ("image", "frames"):
        files = [path] if info.kind == "image" else info.frame_files
        for i, f in enumerate(files):
            rgb = _read_image(f)
            if rgb.shape[1] != out_w or rgb.shape[0] != out_h:
                rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
            yield i, i / frame_rate, rgb
        return

    import av

    container = _open_av(path)
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        t_origin = (container.start_time or 0) / 1_000_000
        rot = info.rotation
        # the decoder's frame size before rotation
        dec_w, dec_h = (out_h, out_w) if rot in (90, 270) else (out_w, out_h)
        n = 0
        last_t = -math.inf
        try:
            for frame in container.decode(vs):
                if frame.pts is not None and frame.time_base is not None:
                    t = float(frame.pts * frame.time_base) - t_origin
                else:  # no timestamp: continue the stream's nominal rate
                    t = last_t + 1.0 / (info.fps_nominal or frame_rate) if n else 0.0
                if frame.width != dec_w or frame.height != dec_h:
                    rgb = frame.reformat(width=dec_w, height=dec_h, format="rgb24",
                                         interpolation="AREA").to_ndarray()
                else:
                    rgb = frame.to_ndarray(format="rgb24")
                yield n, t, _rotate(rgb, rot)
                last_t = t
                n += 1
        except (av.error.FFmpegError, ValueError) as e:
            if n == 0:
                raise MediaError(path, f"cannot decode video ({_av_reason(e)})") from e
            if warnings is not None:
                warnings.append(f"decoding stopped after {n} frames ({_av_reason(e)}); kept the decodable prefix")
        if n == 0:
            raise MediaError(path, "video stream holds no decodable frame")
    finally:
        container.close()


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, warnings: list | None = None
               ) -> tuple[np.ndarray, float]:
    """Decode the first audio stream to mono float32 at ``sample_rate`` Hz.

    Returns (samples [S] float32 in [-1, 1], start_sec): ``start_sec`` is the time of the first
    sample relative to the container start (the video clock's origin). Resampling and down-mix
    are done by FFmpeg's swresample. Raises MediaError when there is no audio stream.
    """
    import av

    path = os.fspath(path)
    container = _open_av(path)
    try:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        t_origin = (container.start_time or 0) / 1_000_000
        # rematrix_maxval=1: the down-mix is the mean of the channels (as `ffmpeg -ac 1` to s16,
        # what whisper.load_audio uses); swresample's float default is (L+R)/sqrt(2).
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate,
                                      options={"rematrix_maxval": "1.0"})
        chunks: list[np.ndarray] = []
        start_sec = None
        try:
            for frame in container.decode(stream):
                if start_sec is None and frame.pts is not None and frame.time_base is not None:
                    start_sec = float(frame.pts * frame.time_base) - t_origin
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as e:
            if not chunks:
                raise MediaError(path, f"cannot decode audio ({_av_reason(e)})") from e
            if warnings is not None:
                warnings.append(f"audio decoding stopped early ({_av_reason(e)}); kept the decodable prefix")
        for out in resampler.resample(None):  # flush the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
        samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
        return samples, float(start_sec or 0.0)
    finally:
        container.close()


def prefetch(iterable, depth: int = 2):
    """Run an iterator in a background thread, ``depth`` items ahead (decode overlaps inference).

    Exceptions raised by the iterator are re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
