"""Scanners: list raw media trees into one table, resolving every file to an identity.

The walk is the same for every corpus: the first path component under a root names the
identity (a folder, or the stem of a file directly under the root); what names an identity and
what the path below the identity folder says about a file (its source video, its language) is
the corpus's (:class:`avdata.corpora.base.Corpus`: ``identity_index``, ``file_fields``; the
layouts of each corpus are in its module and docs/corpora.md). Without a corpus the scanners
read VoxCeleb1's layouts.

The table has one row per file: ``modality, name, vox_id, source_id, rel_path, path, size,
mtime_ns, language``, sorted by (modality, vox_id, rel_path) so every later stage sees one
fixed order. ``source_id`` is the source video (YouTube id) when the layout has one, else the
file stem; seen-heard hold-outs and tuple constraints work on it. ``language`` is the file's
language where the layout names one (MAV-Celeb), else empty.

Nothing here opens media: a scanner only reports what it can see from the tree
(unknown identities, empty folders, zero-byte files, entries named like media that are
not regular files: FIFOs, folders, dangling symlinks; folders it cannot list; files outside
the corpus's layout). Decoding errors are found by the extractors and recorded there.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from avdata.errors import InputError

AUDIO_EXTS = (".wav", ".flac", ".m4a")
FACE_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4",)
MODALITY_EXTS = {"audio": AUDIO_EXTS, "face": FACE_EXTS, "video": VIDEO_EXTS}
# size and mtime_ns (from the scan) fingerprint a file for the shard done markers
COLUMNS = ["modality", "name", "vox_id", "source_id", "rel_path", "path", "size", "mtime_ns", "language"]
_VOX_ID = re.compile(r"^id\d+$")
_PINS_AUDIO_STEM = re.compile(r"^(?P<ytid>.+)_(?P<num>\d+)$")


@dataclass
class ScanResult:
    media: pd.DataFrame
    problems: list[dict] = field(default_factory=list)  # {"path", "reason"}

    def extend(self, other: "ScanResult") -> "ScanResult":
        media = pd.concat([self.media, other.media], ignore_index=True)
        return ScanResult(sort_media(media), self.problems + other.problems)


def sort_media(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["modality", "vox_id", "rel_path"], kind="mergesort").reset_index(drop=True)


class IdentityIndex:
    """Resolves a folder or file stem to (name, vox_id) using the meta table: by the id, by the
    name, or by another id of the identity (``aliases``: VoxCeleb2's VGGFace2 ids)."""

    def __init__(self, meta: pd.DataFrame, aliases: dict[str, str] | None = None, any_id: bool = False):
        self.by_id = dict(zip(meta["vox_id"], meta["name"]))
        self.by_name = dict(zip(meta["name"], meta["vox_id"]))
        self.aliases = aliases or {}
        self.any_id = any_id  # ids need not look like idNNNNN (MAV-Celeb's id0001, VGGFace2's n000001)

    def resolve(self, token: str) -> tuple[str, str] | None:
        if (self.any_id or _VOX_ID.match(token)) and token in self.by_id:
            return self.by_id[token], token
        if token in self.by_name:
            return token, self.by_name[token]
        if token in self.aliases:
            vox_id = self.aliases[token]
            return self.by_id[vox_id], vox_id
        return None

    def unknown(self, token: str, files: int | None = None) -> str:
        """Why ``token`` names no identity (one phrase)."""
        skipped = f" ({files} files skipped)" if files is not None else ""
        return f"unknown identity {token!r}: not in the meta file{skipped}"


def flat_source_id(file_name: str, modality: str) -> str:
    """Source video of a file lying directly in its identity folder (or a flat NAME.wav): a
    PINs-list voice name ``YTID_0000001.wav`` names its video, any other file is its own."""
    stem = Path(file_name).stem
    m = _PINS_AUDIO_STEM.match(stem)
    if modality == "audio" and m:  # NAME/YTID_0000001.wav
        return m.group("ytid")
    return stem


def _not_a_file(path: Path) -> str | None:
    """Why an entry with a media name is not a readable regular file (None: it is one)."""
    try:
        st = path.stat()  # follows symlinks
    except FileNotFoundError:
        return "dangling symlink (its target does not exist)" if path.is_symlink() else "file not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a media file"
    kind = (
        "FIFO"
        if stat.S_ISFIFO(st.st_mode)
        else "socket"
        if stat.S_ISSOCK(st.st_mode)
        else "device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "special file"
    )
    return f"not a regular file ({kind})"


def _media_below(directory: Path, exts: tuple[str, ...], problems: list[dict]) -> list[Path]:
    """Media files below ``directory`` (symlinked folders are not followed). Entries named like
    media that are not readable regular files (FIFOs, folders, dangling links) and folders that
    cannot be listed become problems, so nothing is skipped without a record."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        problems.append({"path": str(directory), "reason": f"cannot read folder ({exc.strerror or exc})"})
        return []
    files = []
    for entry in entries:
        p = Path(entry.path)
        is_media_name = p.suffix.lower() in exts
        try:
            real_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            real_dir = False
        if is_media_name:
            reason = _not_a_file(p)
            if reason is None:
                files.append(p)
            else:
                problems.append({"path": str(p), "reason": reason})
        if real_dir:
            files.extend(_media_below(p, exts, problems))
    return files


def _default_corpus():
    from avdata.corpora import get_corpus

    return get_corpus("voxceleb1")


def scan_tree(root: str | Path, meta: pd.DataFrame, modality: str, corpus=None) -> ScanResult:
    """List every ``modality`` file under ``root`` in ``corpus``'s layout (default VoxCeleb1's)."""
    corpus = corpus or _default_corpus()
    if modality not in MODALITY_EXTS:
        raise ValueError(f"unknown modality {modality!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, f"{modality} root is not a directory")
    exts = MODALITY_EXTS[modality]
    index = corpus.identity_index(meta)
    rows, problems = [], []

    def add(path: Path, ident: tuple[str, str], below: tuple[str, ...]):
        fields = corpus.file_fields(below, modality)
        if isinstance(fields, str):  # not in the corpus's layout
            problems.append({"path": str(path), "reason": fields})
            return
        st = path.stat()
        if st.st_size == 0:
            problems.append({"path": str(path), "reason": "empty file (0 bytes)"})
            return
        rows.append(
            (
                modality,
                ident[0],
                ident[1],
                fields["source_id"],
                path.relative_to(root).as_posix(),
                str(path),
                int(st.st_size),
                int(st.st_mtime_ns),
                fields.get("language", ""),
            )
        )

    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(root, f"cannot read {modality} root ({exc.strerror or exc})") from None
    for entry in top:
        p = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # an identity folder may be a symlink
        except OSError:
            is_dir = False
        if not is_dir:
            if p.suffix.lower() not in exts:
                continue
            reason = _not_a_file(p)
            ident = index.resolve(p.stem)  # flat layout: NAME.wav
            if reason is not None:
                problems.append({"path": str(p), "reason": reason})
            elif ident is None:
                problems.append({"path": str(p), "reason": index.unknown(p.stem)})
            else:
                add(p, ident, (p.name,))
            continue
        inner: list[dict] = []
        files = sorted(_media_below(p, exts, inner))
        problems.extend(inner)
        ident = index.resolve(entry.name)
        if not files:
            if not inner:
                problems.append({"path": str(p), "reason": f"empty folder: no {'/'.join(exts)} files"})
        elif ident is None:
            problems.append({"path": str(p), "reason": index.unknown(entry.name, len(files))})
        else:
            for f in files:
                add(f, ident, f.relative_to(p).parts)
    media = pd.DataFrame(rows, columns=COLUMNS)
    return ScanResult(sort_media(media), problems)


def scan_all(
    meta: pd.DataFrame,
    audio: str | Path | None = None,
    faces: str | Path | None = None,
    videos: str | Path | None = None,
    corpus=None,
) -> ScanResult:
    """Scan every given root into one table (in ``corpus``'s layout, default VoxCeleb1's)."""
    result = ScanResult(pd.DataFrame(columns=COLUMNS), [])
    for modality, root in (("audio", audio), ("face", faces), ("video", videos)):
        if root is not None:
            result = result.extend(scan_tree(root, meta, modality, corpus))
    return result
