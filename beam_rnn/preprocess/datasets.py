"""Locating the IMDB corpus: a local copy, the cache, or a verified download.

The main job trains on IMDB by default.  `resolve_imdb` turns "wherever IMDB is on
this machine" into an `ImdbSource` (a file pattern plus a corpus format that the
corpus reader understands), trying in order:

1. an explicit path (the ``--imdb`` flag) or the ``BEAM_RNN_IMDB`` env var: a CSV
   file with ``id,label,...,text`` columns or an ``aclImdb`` directory tree;
2. an ``aclImdb/train`` tree extracted into the cache by an earlier run;
3. a download of the official tarball, checked against a pinned sha256 and
   extracted safely into the cache.

This module is stdlib-only on purpose: it runs in the launcher before any heavy
framework is imported, and a missing dataset should fail fast with a readable
message instead of after TensorFlow and Beam have spent seconds starting up.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib

from beam_rnn.core.constants import (
    ACLIMDB_GROUP_COLUMN,
    CACHE_ENV_VAR,
    FORMAT_ACLIMDB,
    FORMAT_CSV,
    IMDB_ENV_VAR,
    IMDB_SHA256,
    IMDB_URL,
)
from beam_rnn.core.errors import InputError

__all__ = [
    "DatasetError",
    "ImdbSource",
    "default_cache_dir",
    "resolve_imdb",
    "safe_extract",
    "sha256_file",
]

# Where the extracted tree lives inside the cache, and the file whose presence
# says "extraction finished".  The marker is written only after the tree has been
# renamed into place, so a crash at any earlier point leaves no marker and the
# tree is treated as absent (and replaced) on the next run.
_EXTRACTED_DIRNAME = "aclImdb"
_MARKER_NAME = ".beam_rnn_complete"
_DEFAULT_TARBALL_NAME = "aclImdb_v1.tar.gz"
_CHUNK_SIZE = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Columns every IMDB CSV must carry for the reader to build (id, text, label)
# documents; extra columns (rating, dlwp_subdir) are ignored downstream.
_REQUIRED_CSV_COLUMNS = ("label", "text")


class DatasetError(InputError):
    """The requested dataset could not be located, downloaded or unpacked."""


@dataclasses.dataclass(frozen=True)
class ImdbSource:
    """Where the IMDB training data is and how to read it.

    Attributes:
        pattern: A CSV file path (format ``csv``) or the ``train`` directory of an
            aclImdb tree, i.e. the directory holding ``pos/`` and ``neg/``
            (format ``aclimdb``).  Always an absolute local path.
        format: One of `beam_rnn.core.constants.FORMAT_CSV` or
            `beam_rnn.core.constants.FORMAT_ACLIMDB`.
        description: One human-readable line saying where the data came from, for
            logs and the model card.
        group_column: What to split by so that the reviews of one film stay on one
            side (``movie``: the CSV's column, or the film from an aclImdb tree's
            ``urls_*.txt``), or None when the copy does not name films.
    """

    pattern: str
    format: str
    description: str
    group_column: str | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.group_column is None and self.format == FORMAT_ACLIMDB and all(
                os.path.isfile(os.path.join(self.pattern, f"urls_{p}.txt")) for p in ("pos", "neg")):
            object.__setattr__(self, "group_column", ACLIMDB_GROUP_COLUMN)


def default_cache_dir() -> str:
    """Returns the cache directory: ``$BEAM_RNN_CACHE`` or ``~/.cache/beam_rnn``.

    Returns:
        An absolute path; it is not created here.
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "beam_rnn")


def sha256_file(path: str) -> str:
    """Computes the sha256 of a file, reading it in chunks.

    Args:
        path: The file to hash.

    Returns:
        The lowercase hex digest.

    Raises:
        OSError: If the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------


def _is_absolute_name(name: str) -> bool:
    """Whether a tar name or link target is absolute on POSIX or Windows."""
    return (
        name.startswith("/")
        or name.startswith("\\")
        or re.match(r"^[A-Za-z]:", name) is not None
    )


def _normalized_parts(name: str) -> list[str]:
    """Splits a tar name into components, treating backslashes as separators too.

    Backslashes are literal characters on POSIX, but a name such as
    ``..\\evil.txt`` would escape if the archive were ever extracted on Windows, so
    it is judged as if it used slashes.
    """
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _escapes(relpath: str) -> bool:
    """Whether a normalized relative POSIX path points outside its root."""
    return relpath == ".." or relpath.startswith("../")


def _check_member(member: tarfile.TarInfo, symlink_names: set[str]) -> None:
    """Rejects a member that could write or point outside the target directory.

    This runs over the whole archive before anything is written, so a hostile
    archive leaves no trace.  It is stricter than `tarfile.data_filter` (which
    silently strips leading slashes instead of refusing absolute names): an IMDB
    tarball never needs any of the rejected constructs, so seeing one means the
    file is not what it claims to be.

    Args:
        member: The tar entry to check.
        symlink_names: Normalized names of the symlinks seen so far in the
            archive; updated in place when `member` is a symlink.

    Raises:
        DatasetError: If the member is unsafe.
    """
    name = member.name
    if not name or "\x00" in name:
        raise DatasetError(f"unsafe tar member with an empty or NUL name: {name!r}")
    if _is_absolute_name(name):
        raise DatasetError(f"unsafe tar member with an absolute path: {name!r}")
    parts = _normalized_parts(name)
    if ".." in parts:
        raise DatasetError(f"unsafe tar member escaping the target directory: {name!r}")
    if member.ischr() or member.isblk() or member.isfifo():
        raise DatasetError(f"unsafe tar member (device or fifo): {name!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DatasetError(f"unsupported tar member type {member.type!r}: {name!r}")

    normalized = "/".join(parts)
    # A member written *through* an earlier symlink (``a -> .`` then ``a/b -> ..``)
    # can escape even though each name looks harmless on its own; IMDB has no
    # symlinks at all, so refusing any path below one is cheap and closes that hole
    # for the fallback path, which has no realpath-based check of its own.
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in symlink_names:
            raise DatasetError(f"unsafe tar member below a symlink: {name!r}")

    if member.issym() or member.islnk():
        target = member.linkname
        if not target or _is_absolute_name(target):
            raise DatasetError(
                f"unsafe tar link {name!r} -> {target!r}: absolute or empty target"
            )
        target = target.replace("\\", "/")
        # Symlink targets are relative to the link's directory; hard link targets
        # name another archive member, i.e. are relative to the archive root.
        base = posixpath.dirname(normalized) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if _escapes(resolved):
            raise DatasetError(
                f"unsafe tar link {name!r} -> {member.linkname!r} points outside "
                "the target directory"
            )
        link_parts = _normalized_parts(resolved)
        for i in range(1, len(link_parts) + 1):
            if "/".join(link_parts[:i]) in symlink_names:
                raise DatasetError(
                    f"unsafe tar link {name!r} -> {member.linkname!r} goes through "
                    "a symlink"
                )
        if member.issym():
            symlink_names.add(normalized)


def _sanitized_for_fallback(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Drops setuid/setgid/sticky and group/other write bits, like the data filter."""
    if member.isfile() or member.isdir():
        member.mode &= 0o755
    return member


def safe_extract(tar_path: str, dest_dir: str) -> None:
    """Extracts a tar archive without letting any member land outside `dest_dir`.

    Every member is checked before anything is written (absolute names, ``..``
    components, links pointing outside or through symlinks, devices and fifos are
    all refused).  Extraction then uses ``filter="data"`` when this Python has
    `tarfile.data_filter` (3.11.4+, 3.12+) as a second, realpath-based line of
    defence; older interpreters rely on the pre-check plus a mode sanitizer.

    Args:
        tar_path: The archive; any compression `tarfile` can autodetect.
        dest_dir: Directory to extract into; created if missing.  Pass an empty
            directory: if extraction fails half-way, a directory created by this
            call is removed, but an existing one may keep partial content.

    Raises:
        DatasetError: If the archive is unreadable, corrupt or contains an unsafe
            member.  An unsafe member is detected before any file is written.
    """
    created = not os.path.exists(dest_dir)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            symlink_names: set[str] = set()
            for member in members:
                _check_member(member, symlink_names)
            os.makedirs(dest_dir, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest_dir, members=members, filter="data")
            else:
                tar.extractall(
                    dest_dir, members=[_sanitized_for_fallback(m) for m in members]
                )
    except DatasetError:
        _remove_if_created(dest_dir, created)
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        # tarfile.FilterError (a TarError) lands here too: the data filter caught
        # something the pre-check let through, e.g. a link resolved via realpath.
        _remove_if_created(dest_dir, created)
        raise DatasetError(f"cannot extract {tar_path}: {e}") from e


def _remove_if_created(path: str, created: bool) -> None:
    """Removes a directory this module created, ignoring errors during cleanup."""
    if created and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# Local copies
# --------------------------------------------------------------------------


def _local_hint() -> str:
    """The advice shared by every "IMDB not available" message."""
    return (
        f"Pass --imdb PATH or set {IMDB_ENV_VAR}=PATH to a local copy: either a CSV "
        "file with id,label,text columns (for example ../shared/data/imdb/train.csv) "
        "or an aclImdb directory tree (one containing train/pos and train/neg)."
    )


def _has_pos_neg(directory: str) -> bool:
    """Whether `directory` holds the ``pos`` and ``neg`` class folders."""
    return os.path.isdir(os.path.join(directory, "pos")) and os.path.isdir(
        os.path.join(directory, "neg")
    )


def _find_train_dir(directory: str) -> str | None:
    """Finds the aclImdb ``train`` directory at or directly under `directory`.

    Accepts the aclImdb root (``train/pos``), the train directory itself
    (``pos``/``neg``), or the directory an archive was extracted into
    (``aclImdb/train/pos``).  Both classes are required because a tree with only
    ``pos`` would silently train a one-class model.

    Returns:
        The train directory, or None if `directory` is none of those.
    """
    for candidate in (
        os.path.join(directory, "train"),
        directory,
        os.path.join(directory, _EXTRACTED_DIRNAME, "train"),
    ):
        if _has_pos_neg(candidate):
            return candidate
    return None


def _check_csv_header(path: str, origin: str) -> list[str]:
    """Fails early if the CSV cannot be read or lacks the label/text columns; returns its columns.

    Raises:
        DatasetError: If the file is unreadable or a required column is missing.
    """
    try:
        # utf-8-sig so a BOM written by spreadsheet tools does not hide "id".
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"IMDB CSV from {origin} is unreadable: {path}: {e}") from e
    columns = [c.strip() for c in header or []]
    missing = [c for c in _REQUIRED_CSV_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"IMDB CSV from {origin} ({path}) lacks column(s) {', '.join(missing)}; "
            f"its header is {columns!r}, expected id,label,text columns "
            "(e.g. id,label,rating,dlwp_subdir,text)."
        )
    return columns


def _resolve_local(path: str, origin: str) -> ImdbSource:
    """Turns a user-supplied path into an `ImdbSource`.

    Args:
        path: The path from the flag or the env var.
        origin: How the path was given ("--imdb" or "$BEAM_RNN_IMDB"), so errors
            point at the setting the user must fix.

    Raises:
        DatasetError: If the path is missing or neither a CSV file nor an aclImdb
            tree.
    """
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        raise DatasetError(
            f"IMDB path from {origin} does not exist: {path!r}. " + _local_hint()
        )
    if os.path.isfile(full):
        if not full.lower().endswith(".csv"):
            raise DatasetError(
                f"IMDB path from {origin} is a file but not a .csv file: {path!r}. "
                + _local_hint()
            )
        columns = _check_csv_header(full, origin)
        group = ACLIMDB_GROUP_COLUMN if ACLIMDB_GROUP_COLUMN in columns else None
        return ImdbSource(full, FORMAT_CSV, f"IMDB CSV from {origin}: {full}", group_column=group)
    if os.path.isdir(full):
        train_dir = _find_train_dir(full)
        if train_dir is None:
            raise DatasetError(
                f"IMDB directory from {origin} is not an aclImdb tree: {path!r} has "
                "no train/pos and train/neg (nor pos/neg, nor aclImdb/train/pos and "
                "aclImdb/train/neg). " + _local_hint()
            )
        return ImdbSource(
            train_dir, FORMAT_ACLIMDB, f"IMDB aclImdb tree from {origin}: {train_dir}"
        )
    raise DatasetError(
        f"IMDB path from {origin} is neither a file nor a directory: {path!r}. "
        + _local_hint()
    )


# --------------------------------------------------------------------------
# Cache and download
# --------------------------------------------------------------------------


def _cached_source(cache_dir: str) -> ImdbSource | None:
    """Returns the completed extraction in `cache_dir`, if there is one."""
    root = os.path.join(cache_dir, _EXTRACTED_DIRNAME)
    train_dir = os.path.join(root, "train")
    complete = os.path.isfile(os.path.join(root, _MARKER_NAME))
    if not (complete and _has_pos_neg(train_dir)):
        return None
    return ImdbSource(train_dir, FORMAT_ACLIMDB, f"IMDB aclImdb tree cached in {root}")


def _tarball_name(url: str) -> str:
    """The cache file name for the tarball at `url` (its basename, sanitized)."""
    base = posixpath.basename(urllib.parse.urlparse(url).path)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base or _DEFAULT_TARBALL_NAME


def _download(url: str, dest: str, expected: str, timeout: float) -> None:
    """Downloads `url` to `dest`, verifying the sha256 while streaming.

    The bytes go to a uniquely named ``.part`` file next to `dest` and are renamed
    into place only once the digest matches, so `dest` either does not exist or
    holds exactly the expected archive, even with concurrent runs or a crash.

    Raises:
        DatasetError: On a checksum mismatch (the partial file is deleted).
        urllib.error.URLError, OSError, ValueError: If the transfer fails; the
            caller turns these into the "not available" message.
    """
    fd, part = tempfile.mkstemp(
        prefix=os.path.basename(dest) + ".", suffix=".part", dir=os.path.dirname(dest)
    )
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            url, timeout=timeout
        ) as response:
            for chunk in iter(lambda: response.read(_CHUNK_SIZE), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise DatasetError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got "
                f"{actual}. The download was deleted; it may be corrupt or the "
                "file may have changed upstream. " + _local_hint()
            )
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.remove(part)


def _install_tree(tarball: str, cache_dir: str, sha256: str, url: str) -> ImdbSource:
    """Extracts a verified tarball into the cache and marks it complete.

    Extraction happens in a private temporary directory inside the cache (same
    filesystem, so the final rename is atomic); only a tree that extracted fully
    and contains ``aclImdb/train/{pos,neg}`` is moved into place.

    Raises:
        DatasetError: If the archive is unsafe, corrupt or not an aclImdb tarball.
    """
    final_root = os.path.join(cache_dir, _EXTRACTED_DIRNAME)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=cache_dir)
    try:
        safe_extract(tarball, tmp)
        extracted_root = os.path.join(tmp, _EXTRACTED_DIRNAME)
        if not _has_pos_neg(os.path.join(extracted_root, "train")):
            raise DatasetError(
                f"{url} is not an aclImdb archive: no aclImdb/train/pos and "
                "aclImdb/train/neg inside. " + _local_hint()
            )
        if os.path.lexists(final_root):
            # No marker (else we would not be here): a leftover from a crash between
            # rename and marker, or a tree some other tool put there.  Move it aside
            # first so the rename below stays a single atomic step.
            stale = tempfile.mkdtemp(prefix=".stale-", dir=cache_dir)
            os.replace(final_root, os.path.join(stale, _EXTRACTED_DIRNAME))
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(extracted_root, final_root)
        except OSError:
            # A concurrent run may have installed its tree in the meantime; its
            # copy is as good as ours once it is marked complete.
            cached = _cached_source(cache_dir)
            if cached is not None:
                return cached
            raise
        marker_tmp = os.path.join(final_root, _MARKER_NAME + ".tmp")
        with open(marker_tmp, "w", encoding="utf-8") as f:
            json.dump({"url": url, "sha256": sha256}, f)
        os.replace(marker_tmp, os.path.join(final_root, _MARKER_NAME))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    train_dir = os.path.join(final_root, "train")
    return ImdbSource(
        train_dir,
        FORMAT_ACLIMDB,
        f"IMDB aclImdb tree downloaded from {url} (sha256 {sha256}) into {final_root}",
    )


def _not_available(cache_dir: str, reason: str) -> DatasetError:
    """Builds the single "no IMDB anywhere" error the user sees when offline."""
    return DatasetError(
        f"IMDB is not available: no local copy was given, none is cached in "
        f"{cache_dir}, and {reason}. " + _local_hint()
    )


def resolve_imdb(
    path: str | None = None,
    *,
    cache_dir: str | None = None,
    url: str = IMDB_URL,
    sha256: str = IMDB_SHA256,
    download: bool = True,
    timeout: float = 60,
) -> ImdbSource:
    """Finds the IMDB training data, downloading it into the cache if needed.

    Resolution order: `path` (the ``--imdb`` flag), else ``$BEAM_RNN_IMDB``; else a
    completed extraction in the cache; else (if `download`) the tarball at `url`,
    verified against `sha256`, kept in the cache and extracted there.  A verified
    tarball already in the cache is reused instead of downloaded again.

    Args:
        path: A CSV file with ``id,label,...,text`` columns or an aclImdb
            directory (its root, its ``train`` dir, or a dir containing
            ``aclImdb/``).  An explicit path that is unusable is an error; it never
            falls through to the cache.
        cache_dir: Cache directory; defaults to ``$BEAM_RNN_CACHE`` or
            ``~/.cache/beam_rnn``.
        url: Tarball location (``http://``, ``https://`` or ``file://``).
        sha256: Expected hex sha256 of the tarball.
        download: If False, never touch the network (the cache may still be used).
        timeout: Socket timeout in seconds for the download.

    Returns:
        The resolved source.

    Raises:
        DatasetError: If the given path is unusable, the download fails or does
            not match `sha256`, or the archive is unsafe or not an aclImdb tarball.
    """
    if path:
        return _resolve_local(path, "--imdb")
    env_path = os.environ.get(IMDB_ENV_VAR, "").strip()
    if env_path:
        return _resolve_local(env_path, f"${IMDB_ENV_VAR}")

    cache = (
        os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir()
    )
    cached = _cached_source(cache)
    if cached is not None:
        return cached
    if not download:
        raise _not_available(cache, "downloading is disabled")

    expected = (sha256 or "").strip().lower()
    if not _SHA256_RE.match(expected):
        raise DatasetError(f"invalid expected sha256 for {url}: {sha256!r}")
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise _not_available(cache, f"the cache directory cannot be created ({e})") from e

    tarball = os.path.join(cache, _tarball_name(url))
    if os.path.isfile(tarball) and sha256_file(tarball) != expected:
        # A different or damaged archive under the same name: never trust it.
        os.remove(tarball)
    if not os.path.isfile(tarball):
        try:
            _download(url, tarball, expected, timeout)
        except DatasetError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            # URLError covers refused/unresolvable hosts and HTTP errors; OSError
            # covers timeouts, resets and local write failures; ValueError an
            # unsupported URL.  All mean "offline or unreachable" to the user.
            reason = getattr(e, "reason", None) or e
            raise _not_available(cache, f"downloading {url} failed ({reason})") from e

    try:
        return _install_tree(tarball, cache, expected, url)
    except DatasetError:
        # The archive matched the checksum but cannot be used; dropping it keeps
        # the cache free of files no future run could use either.
        if os.path.exists(tarball):
            os.remove(tarball)
        raise
