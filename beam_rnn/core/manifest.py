"""Artifact manifests: file sizes and sha256 of an output directory, checked before work.

A stage that writes an artifact directory (preprocess output, an exported model)
finishes by writing ``manifest.json`` into it::

    {"format": "beam_rnn.manifest/1",
     "files": {"transform_fn/saved_model.pb": {"size": 12345, "sha256": "..."}, ...}}

A stage that reads one calls `verify_manifest` first, for the files it needs, and
stops with one `ArtifactError` line naming the damaged file instead of failing
minutes later inside a pipeline or after an epoch of training.  The manifest is
written last, so a directory without one is an export that did not finish.

Plain Python plus Beam's `FileSystems` (any Beam filesystem, gs:// included): no
TensorFlow, so the NumPy streaming classifier can use it.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from beam_rnn.core.errors import ArtifactError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "beam_rnn.manifest/1"
_READ_BYTES = 8 << 20




def _filesystems():
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

    return FileSystems


def _join(directory: str, relpath: str) -> str:
    return _filesystems().join(directory.rstrip("/"), *relpath.split("/"))


def file_digest(path: str) -> tuple[int, str]:
    """Returns ``(size in bytes, sha256 hex)`` of one file, streamed."""
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel

    digest, size = hashlib.sha256(), 0
    with _filesystems().open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for block in iter(lambda: handle.read(_READ_BYTES), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def list_files(directory: str, *, exclude: Iterable[str] = ()) -> list[str]:
    """Relative paths (``/``-separated) of every file below `directory`, sorted.

    Args:
      directory: Local path or any Beam filesystem URL.
      exclude: Relative prefixes to leave out (e.g. ``"tmp/"``, ``"checkpoints/"``).
    """
    fs = _filesystems()
    root = directory.rstrip("/")
    [result] = fs.match([fs.join(root, "**")])
    prefix = root + "/"
    excluded = tuple(exclude)
    out = []
    for metadata in result.metadata_list:
        path = metadata.path
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix):].lstrip("/")
        if not rel or rel == MANIFEST_FILE or rel.startswith(excluded):
            continue
        out.append(rel)
    return sorted(set(out))


def write_manifest(directory: str, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Writes ``directory/manifest.json`` for every file below it (call it last).

    Args:
      directory: The finished artifact directory.
      exclude: Relative prefixes that are not part of the artifact (scratch,
        checkpoints, logs) and may change or vanish later.

    Returns:
      The manifest written.
    """
    files = {}
    for rel in list_files(directory, exclude=exclude):
        size, sha = file_digest(_join(directory, rel))
        files[rel] = {"size": size, "sha256": sha}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    with _filesystems().create(_join(directory, MANIFEST_FILE)) as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
    return manifest


def read_manifest(directory: str, *, what: str = "artifact") -> Mapping[str, Any]:
    """Reads ``directory/manifest.json``.

    Raises:
      ArtifactError: The directory or its manifest is missing or unreadable.
    """
    fs = _filesystems()
    path = _join(directory, MANIFEST_FILE)
    if not fs.exists(path):
        if not fs.exists(directory.rstrip("/") + "/") and not fs.exists(directory):
            raise ArtifactError(f"{what} directory {directory} does not exist")
        raise ArtifactError(
            f"{what} {directory} has no {MANIFEST_FILE}: it was not completely written "
            "(an interrupted run, or made by an older version); write it again"
        )
    try:
        with fs.open(path) as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is damaged: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(
        manifest.get("files"), dict
    ):
        raise ArtifactError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def verify_manifest(
    directory: str,
    *,
    prefixes: Sequence[str] | None = None,
    required: Sequence[str] = (),
    what: str = "artifact",
) -> Mapping[str, Any]:
    """Checks the files of `directory` against its manifest (size, then sha256).

    Args:
      directory: The artifact directory.
      prefixes: Check only manifest entries whose relative path starts with one
        of these (e.g. ``["saved_model/"]``); None checks every entry.
      required: Relative paths that must be listed in the manifest (the files
        the caller is about to use).
      what: How to name the artifact in messages ("model", "preprocess output").

    Returns:
      The manifest.

    Raises:
      ArtifactError: One line naming the first missing, truncated or altered file.
    """
    fs = _filesystems()
    manifest = read_manifest(directory, what=what)
    files: Mapping[str, Mapping[str, Any]] = manifest["files"]
    for rel in required:
        if rel not in files:
            raise ArtifactError(f"{what} {directory}: {rel} is not part of it (not in {MANIFEST_FILE})")
    selected = [rel for rel in sorted(files) if prefixes is None or rel.startswith(tuple(prefixes))]
    if not selected and prefixes is not None:
        raise ArtifactError(f"{what} {directory}: nothing under {', '.join(prefixes)} in {MANIFEST_FILE}")
    paths = [_join(directory, rel) for rel in selected]
    sizes = {}
    if paths:
        for pattern_result in fs.match(paths):
            for metadata in pattern_result.metadata_list:
                sizes[metadata.path] = metadata.size_in_bytes
    for rel, path in zip(selected, paths):
        expected = files[rel]
        if path not in sizes:
            raise ArtifactError(f"{what} {directory}: {rel} is missing")
        if sizes[path] != expected.get("size"):
            raise ArtifactError(
                f"{what} {directory}: {rel} is damaged ({sizes[path]} bytes, expected {expected.get('size')})"
            )
        _, sha = file_digest(path)
        if sha != expected.get("sha256"):
            raise ArtifactError(f"{what} {directory}: {rel} is damaged (sha256 differs from {MANIFEST_FILE})")
    return manifest
