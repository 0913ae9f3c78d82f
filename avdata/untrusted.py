"""Names read from shared directories, checked before anything is opened.

Shard and tuple directories are shared between labs, so every name read from them
(``sizes.json`` keys, manifest entries, tar member names) is untrusted. A name is only
ever a plain relative path inside its directory, opened by avmatch itself with ``open``:
never a URL (webdataset's ``gopen`` runs ``pipe:CMD`` names as shell commands and fetches
``http:``/``s3:``... names), never absolute, never through ``..``, and never through a
symlink that leads out of the directory. A bad name is refused with one line that names
it and says why (:class:`UnsafeShardError`).

Every file read from such a directory (``manifest.json``, ``sizes.json``, ``splits.csv``,
``rejects.jsonl``, index lists, an export's ``config.json``) is opened through
:func:`open_inside` / :func:`read_inside`: its name resolved inside the directory, then opened
without blocking and kept only if it is a regular file (a FIFO, device, socket or directory is
refused, so nothing waits forever on a FIFO or reads /dev/zero), no larger than a cap where its
size is not otherwise bounded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

from avdata.errors import InputError, UnsafeInputError

# caps on files whose size nothing else bounds (each far above what avmatch writes at the paper's
# scale: a VoxCeleb1 shard manifest is a few kB, an index list tens of MB)
MAX_METADATA_BYTES = (
    64 << 20
)  # manifest.json, sizes.json, splits.csv, config.json (rejects.jsonl is streamed)
MAX_INDEX_BYTES = 1 << 30  # one index list (JSON lines) of a tuple directory

# a URL scheme ("pipe:", "http:", "s3:", "file:", a Windows drive "C:") at the start of a name
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# what avmatch itself ever writes in a name: split, tuple-list and shard names
_PLAIN = re.compile(r"[A-Za-z0-9_+.-]")


class UnsafeShardError(UnsafeInputError, ValueError):
    """A shard or tuple directory whose content is refused before anything in it is used
    (pickle-type or non-file members, names that leave the directory or are URLs, counts
    that contradict its own sizes.json). Also a ValueError, so callers written for the
    earlier ValueError-based class keep catching it."""


def name_problem(name) -> str | None:
    """Why ``name`` is not a plain relative path (one short phrase), or None if it is."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if "\x00" in name or any(ord(c) < 32 for c in name):
        return "contains control characters"
    if name.startswith("pipe:"):
        return "a pipe: URL (webdataset would run it as a shell command)"
    if _SCHEME.match(name):
        return "a URL scheme, not a relative path"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component leaves the directory"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' path component"
    bad = sorted({c for c in name.replace("/", "") if not _PLAIN.match(c)})
    if bad:
        return f"characters outside [A-Za-z0-9_+.-/]: {''.join(bad)!r}"
    return None


def resolve_inside(root: str | Path, name, where: str) -> Path:
    """``root / name`` after checking that ``name`` is a plain relative path and that the
    resolved path (symlinks followed) stays inside ``root``. ``where`` says where the name
    was read (e.g. ``DIR/sizes.json``) for the error line. The returned path is
    ``root / name`` as given (not resolved), so logs keep the user's spelling."""
    problem = name_problem(name)
    if problem:
        raise UnsafeShardError(f"{where}: refusing the name {name!r}: {problem}")
    root = Path(root)
    path = root / name
    try:
        outside = leads_outside(root, path)
    except (RuntimeError, OSError) as exc:  # a loop: RuntimeError on Python < 3.13, ELOOP after
        why = (
            "a symlink loop"
            if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP
            else f"cannot be examined ({exc.strerror or exc})"
        )
        raise UnsafeShardError(f"{where}: refusing the name {name!r}: {why}") from None
    if outside:
        raise UnsafeShardError(f"{where}: refusing the name {name!r}: a symlink leads outside {root}")
    return path


def leads_outside(root: str | Path, path: str | Path) -> bool:
    """Whether ``path``, with every symlink followed, lies outside ``root`` (also resolved).
    Raises RuntimeError on a symlink loop, OSError where a component cannot be examined."""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    return real != real_root and real_root not in real.parents


def check_local_path(path: str | Path, where: str = "shard") -> Path:
    """A path handed to a reader directly (no directory to stay inside): refuse anything
    that looks like a URL, so a caller passing webdataset-style URLs gets a one-line error
    rather than a download or a shell command."""
    text = str(path)
    if _SCHEME.match(text):
        raise UnsafeShardError(f"{where} {text!r}: a URL, not a local file; avmatch reads local files only")
    return Path(path)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


@contextlib.contextmanager
def open_regular(
    path: str | Path, max_bytes: int | None = None, missing: str = "file not found", shown: str | Path = ""
):
    """``path`` opened for binary reading, if it is a regular file of at most ``max_bytes``.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a FIFO never
    blocks and a device, socket or directory is refused before a byte is read (one line,
    :class:`UnsafeShardError`); a missing file is an :class:`InputError` whose reason is
    ``missing``. ``shown``: the name the error lines give (default ``path``)."""
    shown = shown or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise InputError(shown, missing) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # opening a socket
            raise UnsafeShardError(f"{shown}: refusing a socket, not a regular file") from None
        raise InputError(shown, f"cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeShardError(f"{shown}: refusing {kind}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnsafeShardError(
                f"{shown}: refusing a file of {_mib(st.st_size)}, above the {_mib(max_bytes)} cap for it"
            )
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def _read_capped(f, max_bytes: int, shown) -> bytes:
    data = f.read(max_bytes + 1)  # the cap holds even for a file that grows while it is read
    if len(data) > max_bytes:
        raise UnsafeShardError(f"{shown}: refusing a file above the {_mib(max_bytes)} cap for it")
    return data


def read_regular(path: str | Path, max_bytes: int, missing: str = "file not found", shown="") -> bytes:
    """The bytes of ``path`` (:func:`open_regular`), at most ``max_bytes``."""
    with open_regular(path, max_bytes, missing, shown) as f:
        return _read_capped(f, max_bytes, shown or path)


@contextlib.contextmanager
def open_inside(
    root: str | Path, name: str, where: str = "", max_bytes: int | None = None, missing: str = "missing"
):
    """``root / name`` opened for binary reading: ``name`` checked and resolved inside ``root``
    (:func:`resolve_inside`; ``where`` says where the name was read, default ``root``), then the
    resolved path opened by :func:`open_regular`. The one way avmatch opens a file of a
    directory it did not write; error lines name ``root / name``."""
    path = resolve_inside(root, name, where or str(root))
    with open_regular(os.path.realpath(path), max_bytes, missing, shown=path) as f:
        yield f


def read_inside(
    root: str | Path,
    name: str,
    where: str = "",
    max_bytes: int = MAX_METADATA_BYTES,
    missing: str = "missing",
) -> bytes:
    """The bytes of ``root / name`` (:func:`open_inside`), at most ``max_bytes``."""
    with open_inside(root, name, where, max_bytes, missing) as f:
        return _read_capped(f, max_bytes, Path(root) / name)
