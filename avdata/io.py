"""The one owner of how avmatch writes and hashes files.

* hashes: :func:`sha256_file` / :func:`sha256_stream` (streamed), :func:`sha256_bytes`,
  :func:`sha256_ids` (identity lists);
* tar members with fixed headers (:func:`add_tar_member`);
* canonical JSON / JSONL text;
* atomic writes (:func:`atomic_write_bytes`, :func:`write_json`, :func:`atomic_output` for
  streamed outputs such as tars): every output file is written under a temp name in its own directory,
  fsynced, then renamed over the final name, so a crash or a full disk never leaves a
  truncated file under a final name. A full disk becomes one line:
  ``no space left on device while writing PATH``;
* logs appended to as a run goes (:func:`appending`), a full disk one line there too;
* one writer per output directory (:func:`directory_lock`, ``DIR/.lock``) and the removal of
  temp files that killed writers left (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

from avdata.errors import AvmatchError


class DiskFullError(AvmatchError):
    """Writing an output failed for lack of space (or quota)."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # the errnos of a full disk or quota


@contextlib.contextmanager
def disk_full_errors(path: str | Path):
    """Turn a full disk met in the block (an OSError with a DISK_FULL errno) into the one-line
    :class:`DiskFullError`: ``no space left on device while writing PATH``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise DiskFullError(f"no space left on device while writing {path}") from None
        raise


class DirectoryLockedError(AvmatchError):
    """Another process holds DIR/.lock."""


LOCK_NAME = ".lock"


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (bounded memory for any size)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f) -> str:
    """sha256 of what is left in the binary file object ``f``, read in 1 MiB blocks."""
    h = hashlib.sha256()
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


class OutputDirError(AvmatchError):
    """An output directory that cannot be made: a dangling symlink, a file, a path below a file."""


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """Refuse, in one line, an output directory that cannot become one: it or a directory above
    it exists and is not a directory (a file, a dangling symlink). Creates nothing, so a command
    can check its --out before any work. ``what`` names it in the line."""
    path = Path(path)
    bad = next((p for p in (path, *path.parents) if os.path.lexists(p) and not p.is_dir()), None)
    if bad is not None:
        if bad.is_symlink() and not bad.exists():
            why = f"a dangling symlink (to {os.readlink(bad)}), not a directory"
        else:
            why = "not a directory"
        raise OutputDirError(f"{what} {path}: {'' if bad == path else f'{bad} is '}{why}")
    return path


def make_output_dir(path: str | Path, what: str = "--out") -> Path:
    """Create the output directory ``path`` and its parents if needed (:func:`check_output_dir`
    first: one line, never a traceback, when it cannot be one)."""
    path = Path(path)
    if path.is_dir():
        return path
    check_output_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None
    return path


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")  # what _tmp_name makes: .NAME.tmpPID


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process: alive; an impossible number: not
    return True


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Remove the temp files (``.NAME.tmpPID``) that writers killed mid-write left in DIRECTORY
    (not below it): those whose PID no longer runs. A live writer's temp file is kept. Call it
    while holding the directory's lock (:func:`directory_lock`). Returns what it removed."""
    removed = []
    for entry in Path(directory).iterdir():
        match = _TMP_NAME.match(entry.name)
        if match and entry.is_file() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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
    make_output_dir(path.parent, f"cannot write {path.name} into")
    tmp = _tmp_name(path)
    with disk_full_errors(path):
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
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


_HELD_LOCK_FDS: set[int] = set()  # descriptors of the DIRECTORY/.lock files this process holds


def close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker, a pool worker): close its copies of the parent's
    lock descriptors. A flock belongs to the open file, which a fork shares: a child still holding
    a copy would keep the lock after its parent is killed, until the child too exits."""
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


@contextlib.contextmanager
def directory_lock(
    directory: str | Path,
    writer: str,
    locked: type[AvmatchError] = DirectoryLockedError,
    failed: type[AvmatchError] = AvmatchError,
):
    """Hold an exclusive lock on DIRECTORY/.lock (``fcntl.flock``, the directory is made if
    missing) while the block runs, yielding its descriptor: a second ``writer`` (e.g. "build")
    into the same directory stops at once with one line (``locked``) naming the directory and
    the holder's pid. The kernel drops the lock when its holder dies, so a killed writer never
    leaves a stale lock; the file itself stays. Any other failure to lock is ``failed``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise failed(f"cannot lock {path} ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise locked(
                f"{directory} is being written by another {writer} (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        raise failed(f"cannot lock {path} ({exc.strerror or exc})") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only for the message; a full disk must not stop the lock
    _HELD_LOCK_FDS.add(fd)
    try:
        yield fd
    finally:
        _HELD_LOCK_FDS.discard(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _Appender:
    def __init__(self, f, path: Path):
        self._f, self.path = f, path

    def write(self, text: str) -> None:
        with disk_full_errors(self.path):
            self._f.write(text)

    def flush(self) -> None:
        with disk_full_errors(self.path):
            self._f.flush()


@contextlib.contextmanager
def appending(path: str | Path):
    """A text file opened for appending (a log written as a run goes: not atomic), whose
    ``write``, ``flush`` and closing turn a full disk into the one-line :class:`DiskFullError`.
    Closed when the block ends; after an error in the block, without raising another over it."""
    path = Path(path)
    with disk_full_errors(path):
        f = open(path, "a", encoding="utf-8")
    try:
        yield _Appender(f, path)
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    with disk_full_errors(path):
        f.close()
