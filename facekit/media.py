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
import threading
import queue
from dataclasses import dataclass, field, asdict
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16_000  # Hz, audio delivered to every audio stage
DEFAULT_BATCH_SIZE = 32  # frames per batch
DECODE_THREADS = 4  # FFmpeg frame threads per video being decoded (see iter_frames)
DEFAULT_FRAME_RATE = 30.0  # frames/s assumed for folders of image frames

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .mpe .m2v .ts .mts .m2ts .wmv .flv .3gp .ogv .vob .dv .mxf".split()
)
IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .bmp .tif .tiff .webp".split())
AUDIO_EXTENSIONS = frozenset(".wav .flac .mp3 .m4a .aac .ogg .opus .wma".split())  # audio-only runs


class MediaError(Exception):
    """A media file cannot be used. ``str(err)`` is one line: ``"<path>: <cause>"``."""

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = " ".join(str(cause).split())  # one line, always
        super().__init__(f"{self.path}: {self.cause}")


@dataclass
class MediaInfo:
    """What ``probe`` learns from a file's headers (and, for the rotation, its first video frame).

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
    #: per-face arrays of this batch, filled by the face stages in order (name -> [N, ...]; display
    #: pixels; ``faces["frame"]`` holds frame rows of the whole video, see facekit.stages)
    faces: dict = field(default_factory=dict)
    #: results computed ahead of the stages, in a background thread (stage name -> its own value;
    #: see ``Stage.prepare``)
    prepared: dict = field(default_factory=dict)


def to_display(xy, scale: float):
    """Processed-image pixel coordinates -> display pixels, for an image resized by ``scale``.

    Pixel centres are at integer coordinates (OpenCV's convention), so the mapping is
    ``(p + 0.5) / scale - 0.5``, not ``p / scale`` (which is off by half a pixel per scale step).
    """
    return (xy + 0.5) / scale - 0.5


def to_processed(xy, scale: float):
    """Display pixels -> pixels of the image resized by ``scale`` (inverse of ``to_display``)."""
    return (xy + 0.5) * scale - 0.5


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

    names = [n for n in os.listdir(folder)
             if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not n.startswith(".")]  # ._00001.jpg (macOS)
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
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file")
    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        hint = _sniff(path)
        raise MediaError(path, f"not a readable media file ({_av_reason(e)}{'; ' + hint if hint else ''})") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise MediaError(path, f"cannot open: {e}") from e


def _av_reason(e: Exception) -> str:
    """FFmpeg's message for an error, without the errno and file-name decorations."""
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(":")[0].strip() if "Errno" in msg else msg


def _sniff(path: str) -> str:
    """A likelier cause than FFmpeg's generic "Invalid data" for a file it cannot open ("" if none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if head[4:8] in (b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip"):  # ISO-BMFF (mp4/mov)
                boxes, off, size_total = [], 0, os.fstat(f.fileno()).st_size
                while off + 8 <= size_total and len(boxes) < 1000:
                    f.seek(off)
                    hdr = f.read(16)
                    size, typ = int.from_bytes(hdr[:4], "big"), hdr[4:8]
                    if size == 1 and len(hdr) == 16:
                        size = int.from_bytes(hdr[8:16], "big")
                    elif size == 0:
                        size = size_total - off
                    boxes.append(typ)
                    if size < 8:
                        break
                    off += size
                if b"moov" not in boxes:
                    return "MP4/MOV without a moov atom: the recording was not finalized or the file is cut"
                if off > size_total:
                    return "MP4/MOV truncated"
                return ""
    except OSError:
        return ""
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a multi-byte character cut at the end
                return ""
        return "looks like a text file"
    return ""


def _seconds(pts: int, time_base, origin: Fraction) -> float:
    """``pts * time_base - origin`` in seconds, computed exactly and rounded once."""
    return float(pts * Fraction(time_base) - origin)


def _frame_rotation(frame) -> int:
    """Clockwise degrees to display a decoded frame upright.

    PyAV exposes the display matrix only on decoded frames: ``frame.rotation`` is the
    counter-clockwise angle in [-180, 180] (90, -180, -90 for ffmpeg's 90/180/270).
    """
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(-rot / 90.0) * 90) % 360


def _fps(rate) -> float | None:
    if rate is None:
        return None
    try:
        v = float(rate)
    except (TypeError, ZeroDivisionError):
        return None
    return v if v > 0 and math.isfinite(v) else None


def probe(path: str | os.PathLike, frame_rate: float = DEFAULT_FRAME_RATE) -> MediaInfo:
    """Read a media file's (or a folder of frames') properties from its headers.

    Only the first video frame is decoded: PyAV exposes the display matrix (``rotation``) on
    decoded frames only. Images are read whole (their size).

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
    max_side: downscale so that the longer side is at most this many pixels (None or 0: never;
      frames are never upscaled). ``FrameBatch.scale`` says by how much.
    frame_rate: the rate of a folder of frames (frame i is at ``i / frame_rate`` s).
    warnings: a damaged or truncated video is not an error once at least one frame decodes:
      corrupt packets (a truncated MP4's cut packet) and corrupt frames are skipped, a decode
      error ends the stream, and the frames decoded so far are kept; when this list is given one
      message is appended (also when the stream ends well before the duration its MP4/Matroska
      header declares). With no good frame at all it raises MediaError.
    Memory is bounded by one batch. Each batch's arrays are freshly allocated (safe to keep).
    """
    path = os.fspath(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 or None, got {fps}")
    if max_side is not None and max_side < 0:
        raise ValueError(f"max_side must be >= 1 (or 0/None: no downscaling), got {max_side}")
    info = info or probe(path, frame_rate=frame_rate)
    if not info.has_video:
        raise MediaError(path, "no video stream" + (" (audio-only file)" if info.has_audio else ""))
    sampler = _FpsSampler(fps)
    out_w, out_h, scale = _target_size(info.width, info.height, max_side)
    rgb_buf: np.ndarray | None = None  # filled in place: one copy per frame, no np.stack
    buf_t: list[float] = []
    buf_i: list[int] = []

    def flush():
        k = len(buf_t)
        rgb = rgb_buf if k == len(rgb_buf) else rgb_buf[:k].copy()  # don't pin a mostly-empty buffer
        b = FrameBatch(rgb, np.asarray(buf_t, np.float64), np.asarray(buf_i, np.int64), scale)
        buf_t.clear(), buf_i.clear()
        return b

    for i, t, rgb in _decode(path, info, out_w, out_h, frame_rate, warnings):
        if not sampler.keep(t):
            continue
        if rgb_buf is None:
            rgb_buf = np.empty((batch_size, out_h, out_w, 3), np.uint8)
        rgb_buf[len(buf_t)] = rgb
        buf_t.append(t)
        buf_i.append(i)
        if len(buf_t) >= batch_size:
            yield flush()
            rgb_buf = None
    if buf_t:
        yield flush()


def _decode(path, info: MediaInfo, out_w, out_h, frame_rate, warnings):
    """Yield (index, t_sec, rgb[out_h, out_w, 3]) for every decoded frame.

    ``rgb`` may be a view into a buffer reused for the next frame: copy it before advancing.
    """
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
    from av.video.reformatter import VideoReformatter

    container = _open_av(path)
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"  # frame threading: ~2x faster, but it hides decode errors (see below)
        # a fixed count, not FFmpeg's guess from the machine's CPUs (every CPU, in every worker): the
        # pictures FFmpeg conceals in a damaged stream depend on the thread count, so the frames of a
        # broken video are now the same on any machine and with any --workers (clean streams decode
        # the same with any count)
        vs.codec_context.thread_count = DECODE_THREADS
        origin = Fraction(container.start_time or 0, 1_000_000)
        rot = info.rotation
        # the decoder's frame size before rotation
        dec_w, dec_h = (out_h, out_w) if rot in (90, 270) else (out_w, out_h)
        resize = (dec_w, dec_h) != (int(vs.codec_context.width or 0), int(vs.codec_context.height or 0))
        # one reformatter for the whole stream: a frame's own .reformat() builds a new swscale
        # context (and thread pool) per frame
        reformatter = VideoReformatter()
        k_rot = {0: 0, 90: -1, 180: 2, 270: 1}[rot]  # np.rot90 turns counter-clockwise for k > 0
        n = 0
        last_t = -math.inf
        problems: list[str] = []
        bad_packets: list = []  # times (s) of corrupt packets skipped
        bad_frames = 0

        def frames_of(packets):
            nonlocal bad_frames
            for packet in packets:
                if packet.is_corrupt:
                    # with frame threading a cut packet does not raise: the demuxer's corrupt flag
                    # is how a truncated MP4 shows. Skip it (ffmpeg's -fflags discardcorrupt).
                    bad_packets.append(_seconds(packet.pts, packet.time_base, origin)
                                       if packet.pts is not None else None)
                    continue
                for frame in packet.decode():  # demux ends with an empty packet: drains the decoder
                    if frame.is_corrupt:  # e.g. decoded from a missing reference
                        bad_frames += 1
                        continue
                    yield frame

        try:
            for frame in frames_of(container.demux(vs)):
                if frame.pts is not None and frame.time_base is not None:
                    t = _seconds(frame.pts, frame.time_base, origin)
                else:  # no timestamp: continue the stream's nominal rate
                    t = last_t + 1.0 / (info.fps_nominal or frame_rate) if n else 0.0
                if frame.width != dec_w or frame.height != dec_h or resize:
                    rgb = reformatter.reformat(frame, width=dec_w, height=dec_h, format="rgb24",
                                               interpolation="AREA").to_ndarray()
                else:
                    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                yield n, t, (np.rot90(rgb, k=k_rot) if k_rot else rgb)
                last_t = t
                n += 1
        except (av.error.FFmpegError, ValueError) as e:
            if n == 0:
                raise MediaError(path, f"cannot decode video ({_av_reason(e)})") from e
            problems.append(f"decoding stopped by an error ({_av_reason(e)})")
        if bad_packets:
            first = next((x for x in bad_packets if x is not None), None)
            problems.append(f"skipped {len(bad_packets)} corrupt packet(s)"
                            + (f", the first at {first:.2f} s" if first is not None else ""))
        if bad_frames:
            problems.append(f"dropped {bad_frames} corrupt frame(s)")
        if n == 0:
            raise MediaError(path, "video stream holds no decodable frame"
                             + (f" ({'; '.join(problems)})" if problems else ""))
        if not problems:
            declared = _declared_video_end(container, vs, origin)
            period = 1.0 / (info.fps_avg or info.fps_nominal or frame_rate)
            if declared is not None and declared - (last_t + period) > max(0.5, 3 * period, 0.05 * declared):
                problems.append(f"the video ends at {last_t + period:.2f} s but the container "
                                f"declares {declared:.2f} s")
        if problems and warnings is not None:
            warnings.append(f"video truncated or damaged: {'; '.join(problems)}; kept {n} decodable frames")
    finally:
        container.close()


def _declared_video_end(container, vs, origin: Fraction) -> float | None:
    """End time (s, from the container start) the headers declare for the video stream, when they are
    trustworthy (MP4/MOV sample tables, Matroska DURATION tags); None otherwise (MPEG-PS/TS durations
    are estimates from the bit rate)."""
    fmt = container.format.name or ""
    if "mov" in fmt or "mp4" in fmt:
        if vs.duration and vs.time_base:
            start = Fraction(vs.start_time or 0) * Fraction(vs.time_base) - origin
            return float(start + vs.duration * Fraction(vs.time_base))
    elif "matroska" in fmt or "webm" in fmt:
        tag = next((v for k, v in (vs.metadata or {}).items() if k.upper() == "DURATION"), None)
        try:
            h, m, sec = str(tag).split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec) - float(origin)
        except (ValueError, TypeError):
            return None
    return None


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, warnings: list | None = None
               ) -> tuple[np.ndarray, float]:
    """Decode the first audio stream to mono float32 at ``sample_rate`` Hz.

    Returns (samples [S] float32 in [-1, 1], start_sec): ``start_sec`` is the time of the first
    sample relative to the container start (the video clock's origin). Resampling and down-mix
    are done by FFmpeg's swresample; the down-mix is the mean of the channels. Raises MediaError
    when there is no audio stream. A damaged or truncated stream keeps its decodable prefix (a
    message is appended to ``warnings`` when given); with nothing decodable it raises MediaError.
    """
    import av

    path = os.fspath(path)
    if os.path.isdir(path):
        raise MediaError(path, "no audio stream (a folder of image frames)")
    container = _open_av(path)
    try:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        origin = Fraction(container.start_time or 0, 1_000_000)
        # rematrix_maxval=1: the down-mix is the mean of the channels (as `ffmpeg -ac 1` to s16,
        # what whisper.load_audio uses); swresample's float default is (L+R)/sqrt(2).
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate,
                                      options={"rematrix_maxval": "1.0"})
        chunks: list[np.ndarray] = []
        start_sec = None
        problem = None
        bad_packets = 0
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:  # e.g. the cut packet at the end of a truncated file
                    bad_packets += 1
                    continue
                for frame in packet.decode():
                    if start_sec is None and frame.pts is not None and frame.time_base is not None:
                        start_sec = _seconds(frame.pts, frame.time_base, origin)
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as e:
            if not chunks:
                raise MediaError(path, f"cannot decode audio ({_av_reason(e)})") from e
            problem = f"decoding stopped by an error ({_av_reason(e)})"
        if bad_packets:
            problem = "; ".join(filter(None, [problem, f"skipped {bad_packets} corrupt packet(s)"]))
        if problem is not None and warnings is not None:
            warnings.append(f"audio truncated or damaged: {problem}; kept {len(chunks) and sum(map(len, chunks))}"
                            f" samples")
        for out in resampler.resample(None):  # flush the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
        samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
        return samples, float(start_sec or 0.0)
    finally:
        container.close()


def prefetch(iterable, depth: int = 2):
    """Run an iterator in a background thread, ``depth`` items ahead (decode overlaps inference).

    Exceptions raised by the iterator are re-raised in the consumer. When the consumer stops early
    (``close()``, ``break`` then garbage collection), the worker stops and closes the source iterator
    (e.g. ``iter_frames``, which then closes its file).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()
    source = iter(iterable)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for item in source:
                if not put(item) or stop.is_set():  # (no new item once the consumer has stopped)
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - nothing left to report it to
                    pass

    th = threading.Thread(target=worker, daemon=True, name="facekit-prefetch")
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
        # let the worker finish the item it is on (at most one batch of work): nothing of this
        # iterator may still run when the consumer moves on (e.g. stages start the next video)
        if th is not threading.current_thread():
            th.join()
