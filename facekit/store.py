"""The HDF5 store: one shard file per video, an index file the user opens, and a reader.

Layout on disk for ``-o feats.h5``::

    feats.h5              the index: root attributes, /index/{key,shard,status,error,mtime_ns},
                          and /videos/<key> as external links into the shards
    feats.h5.d/           the shards: <sha1(key)[:24]>.h5, each holding /videos/<key>

A shard is written under a temporary name (``.<name>.<host>.<pid>.<rand>.tmp``) and renamed
when closed, so a crash (even SIGKILL) loses at most the video in flight and never touches a
finished shard. HDF5 writes go through ``GuardedIO``, which never lets the HDF5 library see a
write error (HDF5 does not survive one: after ENOSPC/EFBIG it crashes on close or at exit):
the first error is kept, later writes are discarded, and the writer raises it as a plain
``OSError`` while the temporary file is removed. The index is rebuilt from the shard directory under a lock and replaced
atomically; the reader also scans the directory, so shards finished after the last index
rebuild are never invisible. Every shard is itself a valid one-video store.

The layout is versioned by ``SCHEMA_VERSION`` (facekit.version); see docs/store.md.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import time
import zlib
from collections import deque
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .version import SCHEMA_VERSION, __version__

GZIP_LEVEL = 4  # h5py's level for compression="gzip" when none is given
COMPRESS_THREADS = 2  # threads gzip-compressing chunks of a shard in the background (both codecs free the GIL)
ISAL_LEVEL = 1  # ISA-L's level for those chunks: on 112 px face crops 1.41x in 0.43 ms a crop (zlib level 1:
#                 1.48x in 1.3 ms); on parsing masks ~48x, 10x faster than zlib level 4 at the same ratio

try:  # python-isal: the same zlib streams (any gzip reader inflates them), a fraction of zlib's CPU
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - isal is a requirement; zlib at the dataset's level then
    _isal_zlib = None

MAX_CHUNKS_IN_FLIGHT = 4 * COMPRESS_THREADS  # per dataset: beyond this, appends wait for the oldest
SHARD_SUFFIX = ".h5"
TMP_SUFFIX = ".tmp"
STATUS_DONE = "done"
STATUS_FAILED = "failed"


def deflate(data, level: int) -> bytes:
    """One zlib stream of ``data`` (what HDF5's gzip filter stores in a chunk): ISA-L at
    ``ISAL_LEVEL`` when python-isal is installed, else zlib at ``level``."""
    if _isal_zlib is not None:
        return _isal_zlib.compress(data, ISAL_LEVEL)
    return zlib.compress(data, level)


class StoreError(Exception):
    """The store cannot be used (bad path, not a facekit store, read-only directory...)."""


class StoreWriteError(OSError):
    """Writing a shard or the index failed (disk full, file size limit, quota, I/O error).

    An ``OSError`` with the errno of the failed write; ``filename`` is the temporary file, which
    has been (or is about to be) removed: nothing was committed."""


# ----------------------------------------------------------------------------- paths

def shards_dir(out: str | os.PathLike) -> Path:
    """Directory of the shards of the store whose index is ``out``."""
    return Path(str(os.fspath(out)) + ".d")


def shard_name(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:24] + SHARD_SUFFIX


def video_path(key: str) -> str:
    """HDF5 path of a video group."""
    return "videos/" + key


def to_attr(value: Any):
    """HDF5-storable form of a Python value: dict/list/tuple/bool-free JSON becomes a string."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None:
        return "null"  # JSON null: read back as None
    if isinstance(value, str):  # file names that are not UTF-8 (surrogates) are stored as \xNN
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def from_attr(value: Any):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value == "null":
        return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def attrs_dict(obj) -> dict:
    return {k: from_attr(v) for k, v in obj.attrs.items()}


def set_attrs(obj, attrs: dict) -> None:
    for k, v in attrs.items():
        obj.attrs[k] = to_attr(v)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(out: str | os.PathLike) -> None:
    """Fail before any work when the store cannot be written (read-only dir, index is a dir...)."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.exists() and out.is_dir():
        raise StoreError(f"{out}: is a directory; give the index file name, e.g. {out}/feats.h5")
    if not parent.exists():
        raise StoreError(f"{out}: directory {parent} does not exist")
    if out.is_file() and not _is_index(out):
        raise StoreError(f"{out}: exists and is not a facekit store; refusing to overwrite it "
                         f"(choose another -o name, or delete the file)")
    d = shards_dir(out)
    try:
        d.mkdir(exist_ok=True)
        probe = d / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StoreError(f"{out}: cannot write the store ({e.strerror or e})") from e


def _is_index(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return from_attr(f.attrs.get("kind", "")) == "index"
    except OSError:
        return False


# ----------------------------------------------------------------------------- writing

class GuardedIO:
    """A file for h5py's ``fileobj`` driver that never reports a write error to HDF5.

    The HDF5 library is not safe after a failed write (disk full, file size limit, quota, I/O
    error): a later flush or close can crash the process. Here the first ``OSError`` of a write
    or truncate is recorded in ``error`` and the file goes into *sink* mode: the bytes of every
    later write are kept in memory (so HDF5 reads back what it believes it wrote) and never reach
    the disk. The owner checks ``error`` after each operation and throws the file away.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        self.pos = 0
        self.size = 0  # logical end of file
        self.error: OSError | None = None
        self._overlay: list[tuple[int, bytes]] = []  # sink mode: writes that never reached the disk

    def sink(self, error: OSError | None = None) -> None:
        """Stop writing to the disk (``error``: why; None for a deliberate abort)."""
        if error is not None and self.error is None:
            self.error = error
        if self.error is None:
            self.error = OSError(errno.ECANCELED, "write cancelled", self.path)
            self.error.cancelled = True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        mv = memoryview(buf).cast("B")
        n = len(mv)
        data = os.pread(self.fd, n, self.pos) if self.pos < self.size else b""
        mv[: len(data)] = data
        if len(data) < n:
            mv[len(data):] = bytes(n - len(data))
        a, b = self.pos, self.pos + n
        for off, chunk in self._overlay:  # in write order: later writes win
            lo, hi = max(a, off), min(b, off + len(chunk))
            if lo < hi:
                mv[lo - a: hi - a] = chunk[lo - off: hi - off]
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self.pos)
        buf = bytearray(n)
        self.readinto(buf)
        return bytes(buf)

    def write(self, buf) -> int:
        mv = memoryview(buf).cast("B")
        n = len(mv)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self.fd, mv[done:], self.pos + done)
            except OSError as e:
                self.sink(e)
        if self.error is not None:
            self._overlay.append((self.pos, bytes(mv)))
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                self.sink(e)
        self.size = size
        return size

    def flush(self) -> None:
        pass

    def fsync(self) -> None:
        if self.error is None:
            try:
                os.fsync(self.fd)
            except OSError as e:
                self.sink(e)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._overlay.clear()

    def raise_error(self) -> None:
        if self.error is not None and not getattr(self.error, "cancelled", False):
            e = self.error
            raise StoreWriteError(e.errno, e.strerror or str(e), self.path)


def create_h5(path: str | os.PathLike) -> tuple[h5py.File, GuardedIO]:
    """A new HDF5 file at ``path`` written through a ``GuardedIO`` (check ``io.error``)."""
    io = GuardedIO(path)
    try:
        f = h5py.File(io, "w", libver="latest")
    except BaseException:
        io.close()
        raise
    io.raise_error()
    return f, io


class VideoWriter:
    """Writes one video's group into a new shard; ``commit()`` renames it into place.

    Datasets are created with ``create`` (fixed or growable) and grown with ``append``.
    """

    def __init__(self, out: str | os.PathLike, key: str):
        self.out = Path(out)
        self.key = key
        self.dir = shards_dir(out)
        self.final = self.dir / shard_name(key)
        host = _host()
        self.tmp = self.dir / f".{self.final.name}.{host}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        self.file = None
        self.io = None
        try:
            self.file, self.io = create_h5(self.tmp)
            set_attrs(self.file, {"facekit_version": __version__, "schema_version": SCHEMA_VERSION,
                                  "kind": "shard"})
            self._group = self.file.create_group(video_path(key))
            self._group.attrs["key"] = key
            self._compressors: dict[str, _ChunkCompressor] = {}
            self._pool = None
            self.check()
        except BaseException:
            self.abort()
            raise
        self.filtered: dict = {}  # set when --max-faces/--primary dropped faces (see engine)

    @property
    def group(self) -> h5py.Group:
        """The video's group, every row appended so far written (background compression done)."""
        self.flush()
        return self._group

    def flush(self) -> None:
        """Finish the chunks being compressed in the background and write the rows still waiting."""
        for c in self._compressors.values():
            c.flush()
        self.check()

    def check(self) -> None:
        """Raise the write error that happened since the file was created (as OSError), if any."""
        if self.io is not None:
            self.io.raise_error()

    def create(self, name: str, shape_tail=(), dtype="f4", data=None, growable=True, attrs=None,
               compression=None, chunk_rows=None, compression_opts=None):
        """Create dataset ``name`` (relative to the video group); growable along axis 0.
        ``compression_opts``: the gzip level (default ``GZIP_LEVEL``)."""
        if data is not None:
            data = np.asarray(data)
            dtype, shape_tail = data.dtype, data.shape[1:]
        shape = (0, *shape_tail) if data is None else data.shape
        kw = {}
        if growable:
            rows = chunk_rows or max(1, min(4096, (1 << 16) // max(1, int(np.prod(shape_tail or (1,))) * np.dtype(dtype).itemsize)))
            kw = dict(maxshape=(None, *shape_tail), chunks=(rows, *shape_tail))
        if compression:
            kw["compression"] = compression
            if compression_opts is not None:
                kw["compression_opts"] = compression_opts
        ds = self._group.create_dataset(name, shape=shape, dtype=dtype, data=data, **kw)
        if attrs:
            set_attrs(ds, attrs)
        if growable and _ChunkCompressor.handles(ds):
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="facekit-gzip")
            self._compressors[name] = _ChunkCompressor(ds, self._pool)
        self.check()
        return ds

    def append(self, name: str, rows) -> None:
        """Append ``rows`` along axis 0. Rows of a gzip-compressed dataset are compressed a whole
        chunk at a time in background threads (the caller goes on meanwhile; ``group`` and
        ``commit`` wait for them)."""
        rows = np.asarray(rows)
        if rows.shape[0] == 0:
            return
        comp = self._compressors.get(name)
        if comp is not None:
            if rows.shape[1:] != comp.ds.shape[1:]:  # (h5py's own write would refuse it)
                raise ValueError(f"{name}: rows of shape {rows.shape[1:]} do not fit the dataset's {comp.ds.shape[1:]}")
            comp.append(rows)
        else:
            ds = self._group[name]
            n = ds.shape[0]
            ds.resize(n + rows.shape[0], axis=0)
            ds[n:] = rows
        self.check()

    def commit(self, attrs: dict) -> Path:
        """Write the video's attributes, close, fsync and atomically rename into place.

        Raises OSError (the temporary file removed, nothing renamed) when any write failed."""
        try:
            set_attrs(self.group, attrs)  # (waits for the background compression)
            self._stop_pool()
            self.file.flush()
            self.check()
            self.file.close()
            self.io.fsync()
            self.check()
        except BaseException:
            self.abort()
            raise
        self.io.close()
        try:
            os.replace(self.tmp, self.final)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.dir)
        return self.final

    def _stop_pool(self, cancel: bool = False) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        self._compressors = {}
        if pool is not None:
            pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def abort(self) -> None:
        """Throw the temporary file away (nothing more reaches the disk). Never raises."""
        self._stop_pool(cancel=True)
        if self.io is not None:
            self.io.sink()
        try:
            if self.file is not None:
                self.file.close()
        except Exception:  # noqa: BLE001 - best effort on an already-broken file
            pass
        if self.io is not None:
            self.io.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class _ChunkCompressor:
    """Appends to a growable gzip dataset, compressed off the calling thread.

    Whole chunks are gzip-compressed (``deflate``: a zlib stream, what HDF5's deflate filter writes and
    reads) in a thread pool and written in order with ``write_direct_chunk``; rows that do not fill
    a chunk wait for the next append, or ``flush``, which writes them the ordinary way (HDF5
    compresses that last partial chunk itself). Readers see an ordinary gzip dataset."""

    def __init__(self, ds: h5py.Dataset, pool):
        self.ds, self.pool = ds, pool
        self.rows = ds.chunks[0]
        self.waiting: list[np.ndarray] = []  # rows not yet in a chunk being compressed
        self.n_waiting = 0
        self.in_flight: deque = deque()  # (first row, future of the compressed bytes), in row order
        self.n_rows = ds.shape[0]  # rows written or in flight
        self.level = int(ds.compression_opts)  # the dataset's gzip level

    @staticmethod
    def handles(ds: h5py.Dataset) -> bool:
        return (ds.compression == "gzip" and not ds.shuffle
                and not ds.fletcher32 and ds.scaleoffset is None and ds.chunks is not None
                and all(c == s for c, s in zip(ds.chunks[1:], ds.shape[1:])))

    def append(self, rows: np.ndarray) -> None:
        rows = np.array(rows, dtype=self.ds.dtype, order="C")  # a copy: the caller may reuse its array
        if self.n_rows % self.rows and not self.waiting:  # realign after a flush mid-chunk
            k = min(len(rows), self.rows - self.n_rows % self.rows)
            self._write_plain(rows[:k])
            rows = rows[k:]
        if len(rows):
            self.waiting.append(rows)
            self.n_waiting += len(rows)
        if self.n_waiting >= self.rows:
            rows = np.concatenate(self.waiting) if len(self.waiting) > 1 else self.waiting[0]
            full = len(rows) // self.rows * self.rows
            for i in range(0, full, self.rows):
                chunk = rows[i:i + self.rows]
                self.in_flight.append((self.n_rows, self.pool.submit(deflate, chunk, self.level)))
                self.n_rows += self.rows
            rest = rows[full:]
            self.waiting, self.n_waiting = ([rest] if len(rest) else []), len(rest)
        self._write_done(wait=False)
        while len(self.in_flight) > MAX_CHUNKS_IN_FLIGHT:  # back-pressure: memory stays bounded
            self._write_oldest()

    def _write_done(self, wait: bool) -> None:
        while self.in_flight and (wait or self.in_flight[0][1].done()):
            self._write_oldest()

    def _write_oldest(self) -> None:
        row, fut = self.in_flight.popleft()
        data = fut.result()
        if self.ds.shape[0] < row + self.rows:
            self.ds.resize(row + self.rows, axis=0)
        self.ds.id.write_direct_chunk((row, *(0,) * (self.ds.ndim - 1)), data)

    def _write_plain(self, rows: np.ndarray) -> None:
        self._write_done(wait=True)
        n = self.ds.shape[0]
        self.ds.resize(n + len(rows), axis=0)
        self.ds[n:] = rows
        self.n_rows = n + len(rows)

    def flush(self) -> None:
        self._write_done(wait=True)
        if self.n_waiting:
            rows = np.concatenate(self.waiting)
            self.waiting, self.n_waiting = [], 0
            self._write_plain(rows)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_failure(out: str | os.PathLike, key: str, attrs: dict) -> Path:
    """Record a failed video as a shard holding only the video group's attributes."""
    w = VideoWriter(out, key)
    return w.commit({**attrs, "status": STATUS_FAILED})


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def clean_stale_temps(out: str | os.PathLike) -> int:
    """Remove temporary shards, and temporary index files next to ``out``, left by dead processes
    of this host (or older than a week). Returns how many."""
    d = shards_dir(out)
    if not d.is_dir():
        return 0
    host = _host()
    n = 0
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        index_temps = [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]
    except OSError:
        index_temps = []
    for p in list(d.iterdir()) + index_temps:
        if not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)):
            continue
        parts = p.name[: -len(TMP_SUFFIX)].split(".")
        try:
            p_host, p_pid = parts[-3], int(parts[-2])
        except (IndexError, ValueError):
            continue
        try:
            stale = (p_host == host and not _pid_alive(p_pid)) or (time.time() - p.stat().st_mtime > 7 * 86400)
        except OSError:  # removed meanwhile (by its own process, or another run cleaning up)
            continue
        if stale:
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
    return n


# ----------------------------------------------------------------------------- index

@dataclass
class ShardRow:
    key: str
    shard: str  # file name inside the shards dir
    status: str
    error: str
    mtime_ns: int


def _read_shard_row(path: Path) -> ShardRow | None:
    try:
        with h5py.File(path, "r") as f:
            vids = f.get("videos")
            if vids is None:
                return None
            for key in _iter_video_keys(vids):
                g = vids[key]
                return ShardRow(key=key, shard=path.name, status=str(from_attr(g.attrs.get("status", ""))),
                                error=str(from_attr(g.attrs.get("error", ""))), mtime_ns=path.stat().st_mtime_ns)
    except (OSError, KeyError):
        return None
    return None


def _iter_video_keys(group: h5py.Group, prefix: str = "") -> Iterator[str]:
    """Keys of video groups below ``group`` (a video group carries the attribute ``key``)."""
    for name, link in group.items():
        if isinstance(link, h5py.Group):
            if "key" in link.attrs:
                yield prefix + name
            else:
                yield from _iter_video_keys(link, prefix + name + "/")


def _read_index_rows(index: Path) -> dict[str, ShardRow]:
    rows: dict[str, ShardRow] = {}
    if not index.is_file():
        return rows
    try:
        with h5py.File(index, "r") as f:
            if "index" not in f:
                return rows
            ix = f["index"]
            cols = [ix[c].asstr()[()] if c != "mtime_ns" else ix[c][()] for c in ("key", "shard", "status", "error", "mtime_ns")]
            for key, shard, status, error, mt in zip(*cols):
                rows[str(shard)] = ShardRow(str(key), str(shard), str(status), str(error), int(mt))
    except (OSError, KeyError):
        return {}
    return rows


def scan(out: str | os.PathLike, known: dict[str, ShardRow] | None = None) -> list[ShardRow]:
    """Rows for every finished shard in the store's directory, sorted by key.

    Rows of ``known`` whose file is unchanged (same mtime) are reused; other shards are opened.
    """
    d = shards_dir(out)
    known = known if known is not None else _read_index_rows(Path(out))
    rows = []
    if not d.is_dir():
        return rows
    for p in d.iterdir():
        if p.name.startswith(".") or not p.name.endswith(SHARD_SUFFIX):
            continue
        try:
            mt = p.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        r = known.get(p.name)
        if r is None or r.mtime_ns != mt:
            r = _read_shard_row(p)
        if r is not None:
            rows.append(r)
    rows.sort(key=lambda r: r.key)
    return rows


@contextmanager
def _locked(out: Path):
    d = shards_dir(out)
    d.mkdir(exist_ok=True)
    with builtins.open(d / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def rebuild_index(out: str | os.PathLike, root_attrs: dict | None = None) -> list[ShardRow]:
    """Rewrite the index file from the shard directory (under a lock; atomic replace)."""
    out = Path(out)
    with _locked(out):
        old_attrs = {}
        if out.is_file():
            try:
                with h5py.File(out, "r") as f:
                    old_attrs = attrs_dict(f)
            except OSError:
                old_attrs = {}
        rows = scan(out)
        tmp = out.with_name(f".{out.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        io = None
        try:
            f, io = create_h5(tmp)
            with f:
                attrs = {**old_attrs, **(root_attrs or {})}
                attrs.update({"facekit_version": __version__, "schema_version": SCHEMA_VERSION, "kind": "index",
                              "shards_dir": shards_dir(out).name, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                set_attrs(f, attrs)
                ix = f.create_group("index")
                str_dt = h5py.string_dtype()
                for col in ("key", "shard", "status", "error"):
                    ix.create_dataset(col, data=np.array([getattr(r, col) for r in rows], dtype=object), dtype=str_dt)
                ix.create_dataset("mtime_ns", data=np.array([r.mtime_ns for r in rows], dtype=np.int64))
                vids = f.create_group("videos")
                for r in rows:
                    vids[r.key] = h5py.ExternalLink(f"{shards_dir(out).name}/{r.shard}", "/" + video_path(r.key))
            io.raise_error()
            io.fsync()
            io.raise_error()
            io.close()
            os.replace(tmp, out)
        finally:
            if io is not None:
                io.sink()
                io.close()
            if tmp.exists():
                tmp.unlink()
    return rows


# ----------------------------------------------------------------------------- reading

def open(path: str | os.PathLike) -> "Store":  # noqa: A001 - mirrors h5py.File / facekit.open
    """Open a facekit store for reading: the index file (``feats.h5``) or its shards dir."""
    return Store(path)


class Store(Mapping):
    """Read-only view of a store: a mapping ``key -> Video`` (also ``.videos``).

    >>> with facekit.open("feats.h5") as st:
    ...     v = st.videos["clip.mp4"]
    ...     v.frames.t, v.faces.box, v.audio["mel"].data
    """

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if p.is_dir() and p.name.endswith(".d"):
            p = Path(str(p)[:-2])
        if p.suffix == SHARD_SUFFIX and p.parent.name.endswith(".d") and not shards_dir(p).is_dir():
            # a single shard file: a one-video store
            self.path, self._single = p, p
        else:
            self.path, self._single = p, None
        if self._single is None and not p.is_file() and not shards_dir(p).is_dir():
            raise StoreError(f"{p}: no such facekit store")
        self._files: dict[str, h5py.File] = {}
        self._rows = self._load_rows()
        self.attrs = self._root_attrs()
        self.videos = self

    def _load_rows(self) -> dict[str, ShardRow]:
        if self._single is not None:
            r = _read_shard_row(self._single)
            if r is None:
                raise StoreError(f"{self._single}: not a facekit shard")
            return {r.key: r}
        if self.path.is_file():
            try:
                with h5py.File(self.path, "r") as f:
                    if f.attrs.get("kind") not in ("index", b"index"):
                        raise StoreError(f"{self.path}: not a facekit store index")
            except OSError as e:
                raise StoreError(f"{self.path}: cannot open ({e})") from e
        return {r.key: r for r in scan(self.path)}

    def _root_attrs(self) -> dict:
        src = self._single or self.path
        if not src.is_file():
            return {}
        with h5py.File(src, "r") as f:
            return attrs_dict(f)

    def shard_path(self, row: ShardRow) -> Path:
        return self._single if self._single is not None else shards_dir(self.path) / row.shard

    # Mapping interface
    def __getitem__(self, key: str) -> "Video":
        row = self._rows[key]
        f = self._files.get(row.shard)
        if f is None:
            f = self._files[row.shard] = h5py.File(self.shard_path(row), "r")
        return Video(f[video_path(key)], key)

    def __iter__(self):
        return iter(self._rows)

    def __len__(self):
        return len(self._rows)

    def rows(self) -> list[ShardRow]:
        return list(self._rows.values())

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<facekit.Store {self.path} videos={len(self)}>"


class Frames:
    """The frames of a video that were processed: ``t`` [F] float64 seconds, ``index`` [F] int64."""

    def __init__(self, group: h5py.Group | None):
        self.group = group
        self.attrs = attrs_dict(group) if group is not None else {}

    @property
    def t(self) -> np.ndarray:
        return self.group["t"][()] if self.group is not None else np.zeros(0, np.float64)

    @property
    def index(self) -> np.ndarray:
        return self.group["index"][()] if self.group is not None else np.zeros(0, np.int64)

    def __len__(self):
        return 0 if self.group is None else self.group["t"].shape[0]


class Faces:
    """The face table (CSR by frame). Arrays: ``frame`` [N] (row into frames), ``box`` [N,4] xyxy
    pixels, ``score`` [N], ``kps5`` [N,5,2], and any other ``faces/*`` dataset by attribute or key.
    ``faces.in_frame(i)`` gives the rows of frame row ``i``."""

    def __init__(self, group: h5py.Group | None, n_frames: int):
        self.group = group
        self.n_frames = n_frames
        self._offsets = None

    def keys(self):
        """Names of the stored face arrays, nested ones as paths (``embed/sface``)."""
        if self.group is None:
            return []
        out = []
        self.group.visititems(lambda k, v: out.append(k) if isinstance(v, h5py.Dataset) else None)
        return out

    def __getitem__(self, name: str) -> np.ndarray:
        if self.group is None or name not in self.group:
            raise KeyError(f"faces/{name} is not stored")
        return self.group[name][()]

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_") or name in ("group", "n_frames"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def attrs(self, name: str | None = None) -> dict:
        if self.group is None:
            return {}
        return attrs_dict(self.group if name is None else self.group[name])

    def __len__(self):
        return 0 if self.group is None or "frame" not in self.group else self.group["frame"].shape[0]

    def in_frame(self, i: int) -> dict[str, np.ndarray]:
        """All stored face arrays for frame row ``i`` (a dict of arrays with the same length)."""
        if self._offsets is None:
            counts = np.bincount(self["frame"], minlength=self.n_frames) if len(self) else np.zeros(self.n_frames, int)
            self._offsets = np.concatenate([[0], np.cumsum(counts)])
        a, b = self._offsets[i], self._offsets[i + 1]
        return {k: self.group[k][a:b] for k in self.keys()}

    def per_frame_counts(self) -> np.ndarray:
        if not len(self):
            return np.zeros(self.n_frames, np.int64)
        return np.bincount(self["frame"], minlength=self.n_frames)

    def rows_per_frame(self, select: str = "primary", tracks: h5py.Group | None = None) -> np.ndarray:
        """[F] int64: the face row chosen for each frame row, -1 where the frame has none.

        ``select``: ``"primary"`` the face of the primary track (``tracks/primary``, one per
        video), ``"largest"`` the face with the largest box area in each frame (needs no tracking)."""
        rows = np.full(self.n_frames, -1, np.int64)
        if not len(self):
            return rows
        frame = self["frame"]
        if select == "primary":
            if tracks is None or "primary" not in tracks or "track" not in self.keys():
                raise KeyError("select='primary' needs the track stage (tracks/primary); use 'largest'")
            prim = set(tracks["id"][()][tracks["primary"][()] == 1].tolist())
            cand = np.flatnonzero(np.isin(self["track"], list(prim)))
            area = np.zeros(len(frame))
        elif select == "largest":
            box = self["box"]
            area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
            cand = np.arange(len(frame))
        else:
            raise ValueError(f"unknown face selection {select!r} (primary or largest)")
        # among the candidates of each frame keep the largest (the first when equal)
        order = cand[np.lexsort((-area[cand], frame[cand]))]
        first = np.concatenate([[True], frame[order][1:] != frame[order][:-1]]) if len(order) else order
        rows[frame[order[first]]] = order[first]
        return rows

    def per_frame(self, name: str, select: str = "primary", tracks: h5py.Group | None = None) -> np.ndarray:
        """``faces/<name>`` with one row per frame [F, ...] (see ``rows_per_frame``); frames without
        the chosen face are NaN (integer datasets come back as float64 for that)."""
        data = self[name]
        rows = self.rows_per_frame(select, tracks)
        dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.float64
        out = np.full((self.n_frames,) + data.shape[1:], np.nan, dtype=dtype)
        ok = rows >= 0
        out[ok] = data[rows[ok]]
        return out


class AudioStream:
    """One audio feature: ``data`` [T, D] float32, ``t`` [T] seconds (window centres), ``attrs``."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.attrs = attrs_dict(group)

    @property
    def data(self) -> np.ndarray:
        return self.group["data"][()]

    @property
    def t(self) -> np.ndarray:
        return self.group["t"][()]

    def __len__(self):
        return self.group["t"].shape[0]

    @property
    def hop_sec(self) -> float | None:
        """The step between rows in seconds, from the attributes (None when not recorded)."""
        for k in ("hop_sec", "frame_hop_sec"):
            if isinstance(self.attrs.get(k), (int, float)):
                return float(self.attrs[k])
        return None

    def at(self, t, method: str = "nearest") -> np.ndarray:
        """This stream on the times ``t`` [F] seconds (e.g. ``video.frames.t``): [F, D], NaN rows
        outside the stream's coverage. ``method``: nearest, linear or mean (``facekit.clock``)."""
        from . import clock

        return clock.resample(self.data, self.t, t, method, hop=self.hop_sec)


class Video:
    """One video of a store. ``attrs`` holds the source, probe results, status, timings, errors."""

    def __init__(self, group: h5py.Group, key: str):
        self.group = group
        self.key = key
        self.attrs = attrs_dict(group)

    @property
    def status(self) -> str:
        return self.attrs.get("status", "")

    @property
    def error(self) -> str:
        return self.attrs.get("error", "")

    @property
    def frames(self) -> Frames:
        return Frames(self.group.get("frames"))

    @property
    def faces(self) -> Faces:
        return Faces(self.group.get("faces"), len(self.frames))

    @property
    def audio(self) -> dict[str, AudioStream]:
        a = self.group.get("audio")
        return {} if a is None else {k: AudioStream(g) for k, g in a.items()}

    @property
    def tracks(self) -> h5py.Group | None:
        return self.group.get("tracks")

    def clock(self, name: str = "video") -> np.ndarray:
        """Time stamps [T] seconds of a clock: ``"video"`` (``frames/t``) or an audio stream's name."""
        if name == "video":
            return self.frames.t
        if name in self.audio:
            return self.audio[name].t
        raise KeyError(f"no clock {name!r} in {self.key} (video or one of: {', '.join(self.audio) or 'no audio'})")

    def stream(self, name: str, clock: str = "video", method: str = "nearest",
               faces: str = "primary") -> tuple[np.ndarray, np.ndarray]:
        """``(data, t)``: a stream put on a clock.

        ``name``: an audio stream (``"mel"``, ``"whisper"``, ...) or a face dataset
        (``"faces/landmarks"``, ``"faces/embed/sface"``). ``clock``: ``"video"`` (one row per
        frame of ``frames/``), an audio stream's name, or ``"native"`` (the stream's own rows:
        windows for audio, faces for face datasets). ``method``: nearest, linear or mean
        (``facekit.clock``). Face datasets are first reduced to one face per frame (``faces``:
        ``"primary"`` or ``"largest"``), except on the native clock. Rows without data are NaN.
        """
        from . import clock as clock_mod

        if name.startswith("faces/"):
            fname = name[len("faces/"):]
            if clock == "native":
                frame = self.faces["frame"]
                return self.faces[fname], self.frames.t[frame]
            data, t_src, hop = self.faces.per_frame(fname, faces, self.tracks), self.frames.t, None
            if clock == "video":
                return data, t_src
        else:
            if name not in self.audio:
                raise KeyError(f"no stream {name!r} in {self.key}")
            a = self.audio[name]
            data, t_src, hop = a.data, a.t, a.hop_sec
            if clock == "native":
                return data, t_src
        t_dst = self.clock(clock)
        return clock_mod.resample(data, t_src, t_dst, method, hop=hop), t_dst

    def __repr__(self):
        return f"<facekit.Video {self.key!r} status={self.status} frames={len(self.frames)} faces={len(self.faces)}>"
