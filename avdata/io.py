"""The one owner of how avmatch writes and hashes files.

* hashes: :func:`sha256_file` (streamed), :func:`sha256_bytes`, :func:`sha256_ids` (identity lists);
* tar members with fixed headers (:func:`add_tar_member`);
* canonical JSON / JSONL text;
* atomic writes (:func:`atomic_write_bytes`, :func:`write_json`, :func:`atomic_output` for
  streamed outputs such as tars): every output file is written under a temp name in its own directory,
  fsynced, then renamed over the final name, so a crash or a full disk never leaves a
  truncated file under a final name. A full disk becomes one line:
  ``no space left on device while writing PATH``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path

from avdata.errors import AvmatchError


class DiskFullError(AvmatchError):
    """Writing an output failed for lack of space (or quota)."""


def disk_full(exc: OSError, path: str | Path) -> DiskFullError | None:
    """The one-line DiskFullError for a write to ``path`` that failed for lack of space or
    quota, else None (the OSError is something else)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on device while writing {path}")
    return None


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (bounded memory for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode())


def sha256_ids(ids) -> str:
    """The identity-list hash used everywhere (shard and split manifests): sha256 of the
    sorted ids joined by '\\n', no trailing newline."""
    return sha256_text("\n".join(sorted(ids)))


def canonical_json(obj) -> str:
    """The committed form: sorted keys, indent 1, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=1) + "\n"


def jsonl_text(rows) -> str:
    """One compact JSON object per line, keys sorted."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


TAR_MTIME = 0  # fixed tar header fields: the same bytes on every machine and run


def add_tar_member(tar, name: str, data: bytes) -> None:
    """Add ``data`` as a regular-file member with fixed header fields (mtime 0, mode 0644,
    uid/gid 0, empty owner names): tars written by avmatch are byte-identical everywhere."""
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """A binary file to stream an output into (a tar, say): written under a temp name, fsynced and
    renamed over ``path`` when the block ends; on any error the temp file is removed and ``path``
    is untouched. A full disk is a one-line :class:`DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = disk_full(exc, path)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_output`)."""
    with atomic_output(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    """Canonical JSON (sorted keys, indent 1, trailing newline), written atomically."""
    atomic_write_text(path, canonical_json(obj))


def write_jsonl(path: str | Path, rows) -> None:
    atomic_write_text(path, jsonl_text(rows))
