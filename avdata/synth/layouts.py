"""The synthetic corpus in the layout of each corpus recipe (avdata.corpora), so that every recipe
is tested end to end: ``avdata synth OUT --layout NAME``.

The media are those of the VoxCeleb1 layout (the same people, videos, clips and photos), moved
into the other layout after they are written; what each layout adds:

* ``voxceleb2``: ``aac/idNNNNN/YTID/NNNNN.m4a`` (each wav encoded to AAC in MP4 by the
  imageio-ffmpeg binary, bit-exact flags, one thread), ``mp4/`` as is, the photos as VGGFace2's
  ``vggface2/nNNNNNN/NNNN_NN.jpg``, ``vox2_meta.csv`` (the release's header, spaces before the
  commas and after the last field) and
  ``identity_meta.csv`` (VGGFace2's; Flag 0 for the test identities). Test (Set ``test``, Flag 0):
  the C-E names, the matching rule's test identities. The VGGFace2 id is not the
  VoxCeleb2 number (``id10001`` -> ``n000101``), as in the release: the recipe must join by it;
* ``vggface2``: only ``vggface2/`` and ``identity_meta.csv``;
* ``mavceleb``: ``voices/idNNNN/LANGUAGE/YTID/NNNNN.wav`` and ``faces/idNNNN/LANGUAGE/YTID/
  NNNNNNN.jpg``, an identity's videos alternately English and Urdu (its first video English), a
  meta file ``v1_meta.csv`` (``ids,name,gender``), FAME's lists ``lists/English_train.txt`` and
  ``lists/Urdu_train.txt`` (one voice-face pair per video of the F-Z identities: the train
  identities) and, as the release has them, the unlabelled test files of the other identities in
  ``voices/LANGUAGE/``, ``faces/LANGUAGE/`` with ``lists/LANGUAGE_test.txt`` (``ID voice face``;
  each line its own numbered copies). The test trials: per test video of a language, its voice
  with its own face (label 1) and with the face of the next test identity's video in that language
  (label 0), in a fixed hash order; their answers, hidden in the release, are written here as
  ``lists/keys/LANGUAGE_test.txt`` (``ID LABEL`` in the list's order, the layout of the ground truth
  the baseline's test.py reads), so the FAME recipe is scored end to end (docs/fame.md). The
  synthetic voices have no language: heard and unheard differ only in which videos they are;
* ``csv``: ``media/NAME/YTID/FILE`` and ``corpus.csv`` (``path,identity,modality,gender,
  nationality,split``; the split by the name-initial rule).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from avdata.errors import InputError
from avdata.io import atomic_write_bytes, atomic_write_text

LAYOUTS = ("voxceleb1", "voxceleb2", "vggface2", "mavceleb", "csv")
VOX2_HEADER = "VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set "
VGGFACE2_HEADER = "Class_ID, Name, Sample_Num, Flag, Gender"
MAV_LANGUAGES = ("English", "Urdu")
# what each layout leaves in OUT (a re-run clears them all)
LAYOUT_PATHS = (
    "wav",
    "faces",
    "mp4",
    "aac",
    "vggface2",
    "voices",
    "lists",
    "media",
    "vox1_meta.csv",
    "identity_splits.txt",
    "vox2_meta.csv",
    "identity_meta.csv",
    "v1_meta.csv",
    "corpus.csv",
    "faces.voxceleb1",
)


def vggface2_id(vox_id: str) -> str:
    """The synthetic identity's VGGFace2 id: ``id10001`` -> ``n000101`` (not the vox number)."""
    return f"n{int(vox_id[2:]) - 9900:06d}"


def encode_m4a(wav: Path, m4a: Path) -> None:
    """AAC in MP4 from a wav, reproducibly (bit-exact flags, one thread, no metadata)."""
    import imageio_ffmpeg

    tmp = m4a.with_name(m4a.name + ".tmp.m4a")
    m4a.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(wav),
        "-map_metadata",
        "-1",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-threads",
        "1",
        "-fflags",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-f",
        "mp4",
        str(tmp),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise InputError(wav, f"ffmpeg could not encode AAC: {res.stderr.strip()[-200:]}")
    atomic_write_bytes(m4a, tmp.read_bytes())
    tmp.unlink()


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.replace(dst)


def _photos(faces: Path, at) -> list[tuple[str, Path]]:
    """An identity's photos (YTID, path) in the VoxCeleb1 faces folder ``faces``, sorted."""
    folder = faces / at.name
    return sorted((p.parent.name, p) for p in folder.rglob("*.jpg")) if folder.is_dir() else []


def _test_identity(at) -> bool:
    """FAME's hidden test identities here: the A-E names (the matching rule's val and test)."""
    from avdata.corpora.voxceleb1 import matching_split

    return matching_split(at.name) != "train"


def _release_test(at) -> bool:
    """VoxCeleb2's Set test / VGGFace2's Flag 0 here: the C-E names (the matching rule's test)."""
    from avdata.corpora.voxceleb1 import matching_split

    return matching_split(at.name) == "test"


def _write_vggface2(out: Path, people) -> None:
    rows = [VGGFACE2_HEADER]
    for at in people:
        photos = _photos(out / "faces", at)
        for i, (_, path) in enumerate(photos, 1):
            _move(path, out / "vggface2" / vggface2_id(at.vox_id) / f"{i:04d}_01.jpg")
        flag = 0 if _release_test(at) else 1
        rows.append(f'{vggface2_id(at.vox_id)}, "{at.name}", {len(photos)}, {flag}, {at.gender}')
    atomic_write_text(out / "identity_meta.csv", "\n".join(rows) + "\n")
    shutil.rmtree(out / "faces", ignore_errors=True)


def _voxceleb2(out: Path, people) -> None:
    for wav in sorted((out / "wav").rglob("*.wav")):
        rel = wav.relative_to(out / "wav")
        encode_m4a(wav, (out / "aac" / rel).with_suffix(".m4a"))
    shutil.rmtree(out / "wav", ignore_errors=True)
    rows = [VOX2_HEADER] + [
        f"{at.vox_id} ,{vggface2_id(at.vox_id)} ,{at.gender} ,{'test' if _release_test(at) else 'dev'} "
        for at in people
    ]
    atomic_write_text(out / "vox2_meta.csv", "\n".join(rows) + "\n")
    _write_vggface2(out, people)


def _mavceleb(out: Path, people) -> None:
    vox1_faces = out / "faces.voxceleb1"  # the new faces/ is MAV-Celeb's
    (out / "faces").rename(vox1_faces)
    mav_id = {at.vox_id: f"id{i + 1:04d}" for i, at in enumerate(people)}
    rows = ["ids,name,gender"] + [
        f"{mav_id[at.vox_id]},{at.name.replace('_', ' ')},{'Male' if at.gender == 'm' else 'Female'}"
        for at in people
    ]
    atomic_write_text(out / "v1_meta.csv", "\n".join(rows) + "\n")
    lists = {f"{lang}_train": [] for lang in MAV_LANGUAGES}
    test_videos: dict[str, list[tuple[str, str, str]]] = {lang: [] for lang in MAV_LANGUAGES}
    for at in people:
        ident = mav_id[at.vox_id]
        wavs = sorted((p.parent.name, p) for p in (out / "wav" / at.vox_id).rglob("*.wav"))
        photos = _photos(vox1_faces, at)
        videos = sorted({y for y, _ in wavs} | {y for y, _ in photos})
        language = {y: MAV_LANGUAGES[i % 2] for i, y in enumerate(videos)}
        moved: dict[str, dict[str, list[str]]] = {}
        for kind, files, root in (("voice", wavs, "voices"), ("face", photos, "faces")):
            for y, path in files:
                rel = f"{ident}/{language[y]}/{y}/{path.name}"
                _move(path, out / root / rel)
                moved.setdefault(y, {}).setdefault(kind, []).append(rel)
        for y in videos:
            pair = moved.get(y, {})
            if not (pair.get("voice") and pair.get("face")):
                continue
            lang = language[y]
            if not _test_identity(at):
                lists[f"{lang}_train"].append(f"{pair['voice'][0]} {pair['face'][0]}")
            else:
                test_videos[lang].append((ident, pair["voice"][0], pair["face"][0]))
    for lang, videos in test_videos.items():
        lines, key = _fame_test_trials(out, lang, videos)
        lists[f"{lang}_test"] = lines
        atomic_write_text(out / "lists" / "keys" / f"{lang}_test.txt", "".join(k + "\n" for k in key))
    for name, lines in lists.items():
        atomic_write_text(out / "lists" / f"{name}.txt", "".join(line + "\n" for line in lines))
    for sub in ("wav", "faces.voxceleb1", "mp4"):
        shutil.rmtree(out / sub, ignore_errors=True)


def _fame_test_trials(out: Path, lang: str, videos: list[tuple[str, str, str]]):
    """FAME's unlabelled test list of one language and its key: each test video's voice with its
    own face (1) and with the face of the next video of another identity (0), ordered by a hash
    of the pair (the order never tells the label), each line's files copied to
    ``voices/LANG/NNNNN.wav`` and ``faces/LANG/NNNNN.jpg`` as the release numbers them."""
    import zlib

    trials = []
    for i, (ident, voice, face) in enumerate(videos):
        trials.append((voice, face, 1))
        other = next((v for v in videos[i + 1 :] + videos[:i] if v[0] != ident), None)
        if other is not None:
            trials.append((voice, other[2], 0))
    trials.sort(key=lambda t: (zlib.crc32(f"{t[0]} {t[1]}".encode()), t))
    lines, key = [], []
    for n, (voice_src, face_src, label) in enumerate(trials):
        voice, face = f"voices/{lang}/{n:05d}.wav", f"faces/{lang}/{n:05d}.jpg"
        for src, dst in ((f"voices/{voice_src}", voice), (f"faces/{face_src}", face)):
            (out / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / src, out / dst)
        lines.append(f"t{lang[0]}{n:06d} {voice} {face}")
        key.append(f"t{lang[0]}{n:06d} {label}")
    return lines, key


def _csv(out: Path, people) -> None:
    from avdata.corpora.voxceleb1 import matching_split

    rows = ["path,identity,modality,gender,nationality,split"]
    for at in people:
        files = [("audio", p) for p in sorted((out / "wav" / at.vox_id).rglob("*.wav"))]
        files += [("face", p) for _, p in _photos(out / "faces", at)]
        files += [("video", p) for p in sorted((out / "mp4" / at.vox_id).rglob("*.mp4"))]
        for modality, path in files:
            rel = f"media/{at.name}/{path.parent.name}/{path.name}"
            _move(path, out / rel)
            rows.append(f"{rel},{at.name},{modality},{at.gender},{at.nationality},{matching_split(at.name)}")
    atomic_write_text(out / "corpus.csv", "\n".join(rows) + "\n")
    for sub in ("wav", "faces", "mp4"):
        shutil.rmtree(out / sub, ignore_errors=True)


def relayout(out: Path, layout: str, people) -> None:
    """Move a freshly written VoxCeleb1-layout corpus in OUT into ``layout``."""
    if layout not in LAYOUTS:
        raise InputError(out, f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "voxceleb1":
        return
    for name in ("vox1_meta.csv", "identity_splits.txt"):
        (out / name).unlink(missing_ok=True)
    if layout == "vggface2":
        for sub in ("wav", "mp4"):
            shutil.rmtree(out / sub, ignore_errors=True)
        _write_vggface2(out, people)
    else:
        {"voxceleb2": _voxceleb2, "mavceleb": _mavceleb, "csv": _csv}[layout](out, people)
