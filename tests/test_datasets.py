"""Tests for beam_rnn.preprocess.datasets: local IMDB copies, the cache, download and safe extraction."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from beam_rnn.preprocess import datasets
from beam_rnn.core.constants import CACHE_ENV_VAR, FORMAT_ACLIMDB, FORMAT_CSV, IMDB_ENV_VAR
from beam_rnn.preprocess.datasets import (
    DatasetError,
    ImdbSource,
    resolve_imdb,
    safe_extract,
    sha256_file,
)

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

_TREE_FILES = {
    "aclImdb/train/pos/0_9.txt": b"A wonderful film.",
    "aclImdb/train/neg/1_2.txt": b"A dreadful film.",
    "aclImdb/test/pos/2_8.txt": b"Held-out review.",
    "aclImdb/test/neg/3_1.txt": b"Held-out bad review.",
    "aclImdb/train/unsup/4_0.txt": b"Unlabeled review.",
}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    tar.addfile(info)


def _make_imdb_tarball(path: Path, extra=None) -> Path:
    """Writes a tiny aclImdb_v1-style .tar.gz; `extra(tar)` may add hostile members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for d in ("aclImdb", "aclImdb/train", "aclImdb/test", "aclImdb/train/unsup"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in _TREE_FILES.items():
            _add_bytes(tar, name, data)
        if extra is not None:
            extra(tar)
    return path


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused, fails instantly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/aclImdb_v1.tar.gz"


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by base class
        pass


class _Server:
    """A loopback HTTP server over one directory, counting requests."""

    def __init__(self, directory: Path):
        self.requests = 0
        outer = self

        class Handler(_QuietHandler):
            def do_GET(self):
                outer.requests += 1
                super().do_GET()

        self._httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
        )
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll interval keeps shutdown() (called by every test) near-instant.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self._stopped = False

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    # Never read or write the developer's real cache or IMDB setting.
    monkeypatch.delenv(IMDB_ENV_VAR, raising=False)
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def www(tmp_path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    return d


@pytest.fixture
def server(www):
    srv = _Server(www)
    yield srv
    srv.stop()


@pytest.fixture
def imdb_tarball(www) -> Path:
    return _make_imdb_tarball(www / "aclImdb_v1.tar.gz")


@pytest.fixture(params=["data_filter", "manual_fallback"])
def extract_mode(request, monkeypatch):
    """Runs a test with tarfile's data filter and again with the pre-3.11.4 fallback."""
    if request.param == "manual_fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile.data_filter")
    return request.param


# --------------------------------------------------------------------------
# Download, verify, extract, cache
# --------------------------------------------------------------------------


def test_download_verify_extract(server, imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    src = resolve_imdb(
        cache_dir=str(cache),
        url=server.url("aclImdb_v1.tar.gz"),
        sha256=sha256_file(str(imdb_tarball)),
        timeout=5,
    )
    assert isinstance(src, ImdbSource)
    assert src.format == FORMAT_ACLIMDB
    assert src.pattern == str(cache / "aclImdb" / "train")
    assert (cache / "aclImdb" / "train" / "pos" / "0_9.txt").read_bytes() == b"A wonderful film."
    assert (cache / "aclImdb" / "train" / "neg" / "1_2.txt").read_bytes() == b"A dreadful film."
    assert (cache / "aclImdb" / "test" / "pos" / "2_8.txt").is_file()
    assert (cache / "aclImdb" / "train" / "unsup").is_dir()
    assert "downloaded" in src.description
    assert server.requests == 1
    # The verified tarball stays; no partial files or temp extraction dirs remain.
    assert (cache / "aclImdb_v1.tar.gz").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["aclImdb", "aclImdb_v1.tar.gz"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        src.pattern = "x"  # type: ignore[misc]


def test_second_call_uses_cache_without_server(server, imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    kwargs = dict(
        cache_dir=str(cache),
        url=server.url("aclImdb_v1.tar.gz"),
        sha256=sha256_file(str(imdb_tarball)),
        timeout=5,
    )
    first = resolve_imdb(**kwargs)
    server.stop()
    second = resolve_imdb(**kwargs)
    assert second.pattern == first.pattern
    assert second.format == FORMAT_ACLIMDB
    assert "cached" in second.description
    assert server.requests == 1


def test_cached_tarball_is_reextracted_without_download(server, imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    kwargs = dict(
        cache_dir=str(cache),
        url=server.url("aclImdb_v1.tar.gz"),
        sha256=sha256_file(str(imdb_tarball)),
        timeout=5,
    )
    resolve_imdb(**kwargs)
    server.stop()
    # Lose the extracted tree but keep the tarball: no network needed to rebuild it.
    shutil.rmtree(cache / "aclImdb")
    src = resolve_imdb(**kwargs)
    assert Path(src.pattern, "pos", "0_9.txt").is_file()
    assert server.requests == 1


def test_half_extracted_tree_without_marker_is_ignored(server, imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    # A tree that looks complete but has no completion marker (crash mid-install).
    for label in ("pos", "neg"):
        (cache / "aclImdb" / "train" / label).mkdir(parents=True)
    (cache / "aclImdb" / "train" / "pos" / "stale.txt").write_text("stale")
    with pytest.raises(DatasetError):
        resolve_imdb(cache_dir=str(cache), download=False)
    src = resolve_imdb(
        cache_dir=str(cache),
        url=server.url("aclImdb_v1.tar.gz"),
        sha256=sha256_file(str(imdb_tarball)),
        timeout=5,
    )
    assert not Path(src.pattern, "pos", "stale.txt").exists()
    assert Path(src.pattern, "pos", "0_9.txt").is_file()
    assert (cache / "aclImdb" / ".beam_rnn_complete").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["aclImdb", "aclImdb_v1.tar.gz"]


def test_file_url(imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    src = resolve_imdb(
        cache_dir=str(cache),
        url=imdb_tarball.as_uri(),
        sha256=sha256_file(str(imdb_tarball)),
    )
    assert src.format == FORMAT_ACLIMDB
    assert src.pattern == str(cache / "aclImdb" / "train")
    assert Path(src.pattern, "neg", "1_2.txt").is_file()


def test_cache_dir_from_env_and_home_default(imdb_tarball, tmp_path, monkeypatch):
    sha = sha256_file(str(imdb_tarball))
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "envcache"))
    src = resolve_imdb(url=imdb_tarball.as_uri(), sha256=sha)
    assert src.pattern == str(tmp_path / "envcache" / "aclImdb" / "train")

    monkeypatch.delenv(CACHE_ENV_VAR)
    assert datasets.default_cache_dir() == str(tmp_path / "home" / ".cache" / "beam_rnn")
    src = resolve_imdb(url=imdb_tarball.as_uri(), sha256=sha)
    assert src.pattern == str(tmp_path / "home" / ".cache" / "beam_rnn" / "aclImdb" / "train")


def test_wrong_checksum(server, imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    wrong = "0" * 64
    actual = sha256_file(str(imdb_tarball))
    with pytest.raises(DatasetError) as exc:
        resolve_imdb(
            cache_dir=str(cache), url=server.url("aclImdb_v1.tar.gz"), sha256=wrong, timeout=5
        )
    msg = str(exc.value)
    assert wrong in msg and actual in msg
    # Nothing usable or partial is left behind.
    assert not (cache / "aclImdb").exists()
    assert not list(cache.glob("*.part"))
    assert not (cache / "aclImdb_v1.tar.gz").exists()
    assert _files_under(cache) == set()


def test_corrupted_cached_tarball_is_redownloaded(server, imdb_tarball, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "aclImdb_v1.tar.gz").write_bytes(b"truncated garbage")
    src = resolve_imdb(
        cache_dir=str(cache),
        url=server.url("aclImdb_v1.tar.gz"),
        sha256=sha256_file(str(imdb_tarball)),
        timeout=5,
    )
    assert server.requests == 1
    assert sha256_file(str(cache / "aclImdb_v1.tar.gz")) == sha256_file(str(imdb_tarball))
    assert Path(src.pattern, "pos", "0_9.txt").is_file()


def test_non_imdb_archive_is_rejected(www, tmp_path):
    tar_path = www / "other.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        _add_bytes(tar, "something/else.txt", b"x")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="not an aclImdb archive"):
        resolve_imdb(cache_dir=str(cache), url=tar_path.as_uri(), sha256=sha256_file(str(tar_path)))
    assert _files_under(cache) == set()


def test_unreachable_url_with_empty_cache(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as exc:
        resolve_imdb(cache_dir=str(cache), url=_closed_port_url(), sha256="a" * 64, timeout=5)
    msg = str(exc.value)
    assert "--imdb" in msg
    assert IMDB_ENV_VAR in msg
    assert "CSV" in msg and "aclImdb" in msg
    assert not list(cache.glob("*.part"))


def test_download_disabled_with_empty_cache(tmp_path):
    with pytest.raises(DatasetError) as exc:
        resolve_imdb(cache_dir=str(tmp_path / "cache"), download=False)
    assert "--imdb" in str(exc.value) and IMDB_ENV_VAR in str(exc.value)
    assert not (tmp_path / "cache").exists()


def test_http_404_is_unavailable(server, tmp_path):
    with pytest.raises(DatasetError, match="--imdb"):
        resolve_imdb(
            cache_dir=str(tmp_path / "cache"),
            url=server.url("missing.tar.gz"),
            sha256="b" * 64,
            timeout=5,
        )


def test_invalid_expected_sha256(tmp_path, imdb_tarball):
    with pytest.raises(DatasetError, match="invalid expected sha256"):
        resolve_imdb(cache_dir=str(tmp_path / "cache"), url=imdb_tarball.as_uri(), sha256="abc")


# --------------------------------------------------------------------------
# Hostile archives
# --------------------------------------------------------------------------


def _evil_dotdot(tar):
    _add_bytes(tar, "../evil.txt", b"pwned")


def _evil_nested_dotdot(tar):
    _add_bytes(tar, "aclImdb/train/../../../evil.txt", b"pwned")


def _evil_symlink_etc(tar):
    _add_special(tar, "aclImdb/train/etc", tarfile.SYMTYPE, "/etc")


def _evil_relative_symlink(tar):
    _add_special(tar, "aclImdb/up", tarfile.SYMTYPE, "../../..")


def _evil_symlink_then_write(tar):
    # The second member looks innocent but would be written through the symlink.
    _add_special(tar, "aclImdb/escape", tarfile.SYMTYPE, "..")
    _add_bytes(tar, "aclImdb/escape/evil.txt", b"pwned")


def _evil_chained_symlinks(tar):
    # Each link stays inside on paper; together they point one level up.
    _add_special(tar, "aclImdb/a", tarfile.SYMTYPE, ".")
    _add_special(tar, "aclImdb/a/b", tarfile.SYMTYPE, "../..")


def _evil_hardlink(tar):
    _add_special(tar, "aclImdb/passwd", tarfile.LNKTYPE, "../../etc/passwd")


def _evil_absolute_hardlink(tar):
    _add_special(tar, "aclImdb/passwd", tarfile.LNKTYPE, "/etc/passwd")


def _evil_device(tar):
    info = tarfile.TarInfo("aclImdb/dev_null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    tar.addfile(info)


def _evil_fifo(tar):
    _add_special(tar, "aclImdb/fifo", tarfile.FIFOTYPE)


_HOSTILE = {
    "dotdot": _evil_dotdot,
    "nested_dotdot": _evil_nested_dotdot,
    "symlink_etc": _evil_symlink_etc,
    "relative_symlink": _evil_relative_symlink,
    "symlink_then_write": _evil_symlink_then_write,
    "chained_symlinks": _evil_chained_symlinks,
    "hardlink": _evil_hardlink,
    "absolute_hardlink": _evil_absolute_hardlink,
    "device": _evil_device,
    "fifo": _evil_fifo,
}


@pytest.mark.parametrize("kind", sorted(_HOSTILE))
def test_hostile_tarball_via_resolve(kind, extract_mode, server, www, tmp_path):
    tar_path = _make_imdb_tarball(www / "aclImdb_v1.tar.gz", extra=_HOSTILE[kind])
    cache = tmp_path / "work" / "cache"
    with pytest.raises(DatasetError, match="unsafe"):
        resolve_imdb(
            cache_dir=str(cache),
            url=server.url("aclImdb_v1.tar.gz"),
            sha256=sha256_file(str(tar_path)),
            timeout=5,
        )
    # Nothing extracted in the cache (not even in a temp dir) and nothing outside it.
    assert _files_under(cache) == set()
    assert _files_under(tmp_path / "work") == {"cache"}
    assert not (tmp_path / "evil.txt").exists()


def test_absolute_member_path(extract_mode, tmp_path):
    target = tmp_path / "abs_evil.txt"
    tar_path = _make_imdb_tarball(
        tmp_path / "src" / "evil.tar.gz",
        extra=lambda tar: _add_bytes(tar, str(target), b"pwned"),
    )
    dest = tmp_path / "out" / "dest"
    with pytest.raises(DatasetError, match="absolute"):
        safe_extract(str(tar_path), str(dest))
    assert not target.exists()
    assert not dest.exists()  # created by the call, so removed again
    assert _files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("kind", sorted(_HOSTILE))
def test_safe_extract_rejects_before_writing(kind, extract_mode, tmp_path):
    tar_path = _make_imdb_tarball(tmp_path / "src" / "evil.tar.gz", extra=_HOSTILE[kind])
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(DatasetError):
        safe_extract(str(tar_path), str(dest))
    # Checks run over the whole archive first, so even the good members are absent.
    assert _files_under(tmp_path / "out") == {"dest"}


def test_safe_extract_good_archive(extract_mode, tmp_path):
    tar_path = _make_imdb_tarball(
        tmp_path / "src" / "ok.tar.gz",
        # Links that stay inside are legitimate and must keep working.
        extra=lambda tar: _add_special(tar, "aclImdb/train/latest", tarfile.SYMTYPE, "pos/0_9.txt"),
    )
    dest = tmp_path / "dest"
    safe_extract(str(tar_path), str(dest))
    assert _files_under(dest) >= {k for k in _TREE_FILES}
    assert (dest / "aclImdb" / "train" / "latest").read_bytes() == b"A wonderful film."


def test_safe_extract_strips_setuid(extract_mode, tmp_path):
    tar_path = tmp_path / "suid.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("tool")
        info.size = 1
        info.mode = 0o4777
        tar.addfile(info, io.BytesIO(b"x"))
    safe_extract(str(tar_path), str(tmp_path / "dest"))
    mode = (tmp_path / "dest" / "tool").stat().st_mode
    assert not mode & 0o4000
    assert not mode & 0o022


def test_safe_extract_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(DatasetError, match="cannot extract"):
        safe_extract(str(bad), str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(str(p)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --------------------------------------------------------------------------
# Local copies: --imdb and BEAM_RNN_IMDB
# --------------------------------------------------------------------------


def _write_csv(path: Path, header: str = "id,label,rating,dlwp_subdir,text") -> Path:
    path.write_text(f'{header}\n0,1,9,train,"Great, really."\n1,0,2,train,Bad.\n')
    return path


def test_explicit_csv_path(tmp_path):
    csv_path = _write_csv(tmp_path / "train.csv")
    # The cache must not be consulted (or created) when a path is given.
    src = resolve_imdb(str(csv_path), cache_dir=str(tmp_path / "cache"), url=_closed_port_url())
    assert (src.pattern, src.format) == (str(csv_path), FORMAT_CSV)
    assert "--imdb" in src.description
    assert not (tmp_path / "cache").exists()


def test_relative_csv_path_is_made_absolute(tmp_path, monkeypatch):
    _write_csv(tmp_path / "train.csv")
    monkeypatch.chdir(tmp_path)
    src = resolve_imdb("train.csv")
    assert src.pattern == str(tmp_path / "train.csv")


def test_env_var_csv(tmp_path, monkeypatch):
    csv_path = _write_csv(tmp_path / "train.csv")
    monkeypatch.setenv(IMDB_ENV_VAR, str(csv_path))
    src = resolve_imdb(cache_dir=str(tmp_path / "cache"), download=False)
    assert (src.pattern, src.format) == (str(csv_path), FORMAT_CSV)
    assert IMDB_ENV_VAR in src.description


def test_explicit_path_beats_env_var(tmp_path, monkeypatch):
    flag_csv = _write_csv(tmp_path / "flag.csv")
    monkeypatch.setenv(IMDB_ENV_VAR, str(_write_csv(tmp_path / "env.csv")))
    assert resolve_imdb(str(flag_csv)).pattern == str(flag_csv)


def test_env_var_beats_cache(server, imdb_tarball, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    resolve_imdb(
        cache_dir=str(cache),
        url=server.url("aclImdb_v1.tar.gz"),
        sha256=sha256_file(str(imdb_tarball)),
        timeout=5,
    )
    csv_path = _write_csv(tmp_path / "train.csv")
    monkeypatch.setenv(IMDB_ENV_VAR, str(csv_path))
    assert resolve_imdb(cache_dir=str(cache)).format == FORMAT_CSV


@pytest.mark.parametrize("given", ["parent", "root", "train"])
def test_aclimdb_directory_layouts(given, tmp_path):
    for label in ("pos", "neg"):
        (tmp_path / "data" / "aclImdb" / "train" / label).mkdir(parents=True)
    (tmp_path / "data" / "aclImdb" / "test").mkdir()
    train = tmp_path / "data" / "aclImdb" / "train"
    path = {"parent": tmp_path / "data", "root": train.parent, "train": train}[given]
    src = resolve_imdb(str(path))
    assert (src.pattern, src.format) == (str(train), FORMAT_ACLIMDB)


def test_env_var_aclimdb_directory(tmp_path, monkeypatch):
    for label in ("pos", "neg"):
        (tmp_path / "aclImdb" / "train" / label).mkdir(parents=True)
    monkeypatch.setenv(IMDB_ENV_VAR, str(tmp_path / "aclImdb"))
    src = resolve_imdb(download=False)
    assert (src.pattern, src.format) == (str(tmp_path / "aclImdb" / "train"), FORMAT_ACLIMDB)


def test_explicit_missing_path(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DatasetError, match="does not exist") as exc:
        resolve_imdb(str(missing), cache_dir=str(tmp_path / "cache"))
    assert "--imdb" in str(exc.value)
    assert str(missing) in str(exc.value)


def test_env_var_missing_path_names_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(IMDB_ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match=IMDB_ENV_VAR):
        resolve_imdb(cache_dir=str(tmp_path / "cache"))


def test_wrong_kind_of_file(tmp_path):
    p = tmp_path / "reviews.json"
    p.write_text("[]")
    with pytest.raises(DatasetError, match="not a .csv"):
        resolve_imdb(str(p))


def test_csv_without_text_column(tmp_path):
    p = _write_csv(tmp_path / "bad.csv", header="id,label,review")
    with pytest.raises(DatasetError, match="text"):
        resolve_imdb(str(p))


def test_directory_that_is_not_aclimdb(tmp_path):
    (tmp_path / "d" / "train" / "pos").mkdir(parents=True)  # no neg
    with pytest.raises(DatasetError, match="not an aclImdb tree"):
        resolve_imdb(str(tmp_path / "d"))


# --------------------------------------------------------------------------
# Module hygiene
# --------------------------------------------------------------------------


def test_module_is_stdlib_only():
    code = (
        "import sys, beam_rnn.preprocess.datasets; "
        "bad = [m for m in ('tensorflow', 'apache_beam', 'tensorflow_transform', 'numpy') "
        "if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.data
def test_shared_imdb_csv_resolves():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "train.csv"
    if not shared.is_file():
        pytest.skip("../shared/data/imdb/train.csv is absent")
    src = resolve_imdb(str(shared))
    assert (src.pattern, src.format) == (str(shared), FORMAT_CSV)
