"""What the offline frozen encoders make of the real media in ../shared/data/media (docs/evaluation.md).

* Gender from the voice: Resemblyzer's embeddings of the 10 named VoxCeleb1 utterances
  (voice/voxceleb1_named/NAME.wav), gender from protocols/voxceleb1/vox1_meta.csv; leave-one-out
  nearest centroid (cosine): each voice is classified by the centroids of the other nine.
* Same person vs other person:
  - voices: each utterance cut in two halves; the two halves of one utterance (same person) against
    a half of another person's utterance (Resemblyzer, cosine distance);
  - faces: the people with two files, faces/facenet_pytorch/test_images/NAME/1.jpg and
    test_images_aligned/NAME/1.png, both aligned by avdata's FaceAligner (the Extractor's recipe)
    into 224 crops; dlib's Euclidean distance (its same-person threshold is 0.6) between a person's
    two crops against two different people's crops.
  For each, the AUC of "same person is closer" over every (same, other) pair.
* The two real talking-head videos (video/hdtf_talking/*.mp4, two people, 8 s each):
  - faces: frames sampled and aligned by avdata's Extractor (build-shards' video path, default
    ExtractConfig: 1 frame/s, at most 8), dlib; two frames of one video (same person) against a
    frame of each video (other person);
  - voices: each audio track decoded by avdata's decoder, then as the utterances above (halves,
    Resemblyzer): the two halves of one video against the first half of one video and the
    second half of the other.
  Two people: a sanity check on real video, not a benchmark.

    .venv/bin/python bench/encoders_real.py
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def auc(same: list[float], other: list[float]) -> float:
    """P(a same-person distance < an other-person distance), ties counted half."""
    s, o = np.asarray(same)[:, None], np.asarray(other)[None, :]
    return float(((s < o).sum() + 0.5 * (s == o).sum()) / (s.size * o.size))


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "mean": round(float(np.mean(values)), 3),
        "min": round(float(np.min(values)), 3),
        "max": round(float(np.max(values)), 3),
    }


def voice_gender(resemblyzer, waves: dict[str, np.ndarray]) -> dict:
    with open(DATA / "protocols" / "voxceleb1" / "vox1_meta.csv", newline="") as f:
        gender = {
            row["VGGFace1 ID"].strip(): row["Gender"].strip() for row in csv.DictReader(f, delimiter="\t")
        }
    names = sorted(waves)
    emb = {n: resemblyzer.embed_audio(waves[n]) for n in names}
    correct, rows = 0, []
    for held in names:
        rest = [n for n in names if n != held]
        centroids = {}
        for g in ("m", "f"):
            members = [emb[n] for n in rest if gender[n] == g]
            c = np.mean(members, axis=0)
            centroids[g] = c / np.linalg.norm(c)
        guess = max(centroids, key=lambda g: float(emb[held] @ centroids[g]))
        correct += guess == gender[held]
        rows.append({"name": held, "gender": gender[held], "guess": guess})
    counts = {g: sum(gender[n] == g for n in names) for g in ("m", "f")}
    return {
        "accuracy": correct / len(names),
        "correct": correct,
        "voices": len(names),
        "majority_class_accuracy": max(counts.values()) / len(names),
        "genders": counts,
        "per_voice": rows,
    }


def voice_halves(resemblyzer, waves: dict[str, np.ndarray]) -> dict:
    halves = {}
    for name, wave in waves.items():
        mid = len(wave) // 2
        halves[name] = (resemblyzer.embed_audio(wave[:mid]), resemblyzer.embed_audio(wave[mid:]))
    names = sorted(halves)
    same = [1.0 - float(halves[n][0] @ halves[n][1]) for n in names]
    other = [1.0 - float(halves[a][0] @ halves[b][1]) for a in names for b in names if a != b]
    return {
        "distance": "cosine",
        "same": summary(same),
        "other": summary(other),
        "auc": round(auc(same, other), 3),
    }


def face_pairs(dlib) -> dict:
    from avdata.faces import FaceAligner

    root = DATA / "media" / "faces" / "facenet_pytorch"
    aligner = FaceAligner()
    people = sorted(
        p.parent.name
        for p in root.glob("test_images/*/1.jpg")
        if (root / "test_images_aligned" / p.parent.name / "1.png").exists()
    )
    crops, failed = {}, []
    for name in people:
        pair = []
        for path in (root / "test_images" / name / "1.jpg", root / "test_images_aligned" / name / "1.png"):
            try:
                pair.append(aligner.align_path(path).face)
            except Exception as exc:  # noqa: BLE001 - report, do not stop
                failed.append(f"{path.relative_to(root)}: {exc}")
        if len(pair) == 2:
            crops[name] = pair
    emb = {}
    for name, pair in crops.items():
        out = dlib.embed_faces(np.stack(pair))
        if all(isinstance(e, np.ndarray) for e in out):
            emb[name] = out
        else:
            failed += [f"{name}: {e}" for e in out if not isinstance(e, np.ndarray)]
    names = sorted(emb)
    same = [float(np.linalg.norm(emb[n][0] - emb[n][1])) for n in names]
    other = [
        float(np.linalg.norm(emb[a][i] - emb[b][j]))
        for a, b in combinations(names, 2)
        for i in (0, 1)
        for j in (0, 1)
    ]
    return {"people": names} | dlib_distances(same, other) | {"failed": failed}


def dlib_distances(same: list[float], other: list[float]) -> dict:
    return {
        "distance": "euclidean (dlib's same-person threshold 0.6)",
        "same": summary(same),
        "other": summary(other),
        "auc": round(auc(same, other), 3),
        "same_below_0.6": sum(d < 0.6 for d in same),
        "other_below_0.6": sum(d < 0.6 for d in other),
    }


def video_pairs(resemblyzer, dlib) -> dict:
    from avdata.extract import ExtractConfig, Extractor
    from avdata.media import decode_audio
    from avtrain.encoders import SAMPLE_RATE

    videos = sorted((DATA / "media" / "video" / "hdtf_talking").glob("*.mp4"))
    extractor = Extractor(ExtractConfig())
    faces, waves, failed = {}, {}, []
    for video in videos:
        # the row build-shards hands the Extractor for a video (avdata/ingest.py's columns)
        row = {
            "path": str(video),
            "rel_path": f"{video.stem}/{video.name}",
            "name": video.stem,
            "vox_id": video.stem,
            "source_id": video.stem,
            "modality": "video",
        }
        result = extractor.extract(row, "face")
        failed += [f"{video.name}: {r['reason']}" for r in result.rejects]
        if result.samples:
            out = dlib.embed_faces(np.stack([s.array for s in result.samples]))
            failed += [f"{video.name}: {e}" for e in out if not isinstance(e, np.ndarray)]
            faces[video.stem] = [e for e in out if isinstance(e, np.ndarray)]
        waves[video.stem] = decode_audio(video, SAMPLE_RATE)
    names = sorted(faces)
    same = [float(np.linalg.norm(x - y)) for n in names for x, y in combinations(faces[n], 2)]
    other = [
        float(np.linalg.norm(x - y)) for a, b in combinations(names, 2) for x in faces[a] for y in faces[b]
    ]
    return {
        "videos": [v.name for v in videos],
        "faces_dlib": {"frames": {n: len(faces[n]) for n in names}}
        | dlib_distances(same, other)
        | {"failed": failed},
        "voice_halves_resemblyzer": voice_halves(resemblyzer, waves),
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    import torch

    from avdata.media import decode_audio
    from avtrain.encoders import load_encoder

    torch.set_num_threads(1)
    waves = {
        w.stem: decode_audio(w) for w in sorted((DATA / "media" / "voice" / "voxceleb1_named").glob("*.wav"))
    }
    resemblyzer, dlib = load_encoder("resemblyzer"), load_encoder("dlib")
    print(
        json.dumps(
            {
                "voice_gender_resemblyzer": voice_gender(resemblyzer, waves),
                "voice_halves_resemblyzer": voice_halves(resemblyzer, waves),
                "faces_dlib": face_pairs(dlib),
                "hdtf_videos": video_pairs(resemblyzer, dlib),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
