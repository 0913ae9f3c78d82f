"""Names read from shared directories, checked before anything is opened.

Shard and tuple directories are shared between labs, so every name read from them
(``sizes.json`` keys, manifest entries, tar member names) is untrusted. A name is only
ever a plain relative path inside its directory, opened by avmatch itself with ``open``:
never a URL (webdataset's ``gopen`` runs ``pipe:CMD`` names as shell commands and fetches
``http:``/``s3:``... names), never absolute, never through ``..``, and never through a
symlink that leads out of the directory. A bad name is refused with one line that names
it and says why (:class:`UnsafeShardError`).
"""

from __future__ import annotations

import re
from pathlib import Path

from avdata.errors import UnsafeInputError

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
    if leads_outside(root, path):
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
