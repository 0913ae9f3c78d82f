"""Frozen encoders' CPU throughput (items/s per core) against AML's CNN forward pass, and the
feature store's size. One process, one torch thread, the same real items for every encoder:

  voices  the real VoxCeleb1 utterances of ../shared/data/media/voice/voxceleb1_named (decoded
          once, before timing): resemblyzer embeds the whole clip (preprocess_wav: volume + VAD,
          mel, LSTM over 1.6 s partials); AML's AudioBranch forwards the clip's first 224x125
          spectrogram window (computed once, before timing); ecapa (random weights, saved to a
          file and loaded as a weights file: the cost depends on shapes, not values) embeds the
          whole clip (80 log-mel fbank, mean norm, ECAPA-TDNN)
  faces   the real photos of ../shared/data/media/faces/facenet_pytorch/test_images aligned once by
          avdata's FaceAligner (224 crops), repeated to --faces items: dlib (HOG gate, 5 points, face
          chip, ResNet), facenet_vggface2 (random weights: the cost does not depend on them; resize,
          InceptionResnetV1), AML's VisualBranch (normalise + forward)

AML runs in batches of --batch-size (as evaluate and training do); the frozen encoders one item at
a time (as the feature store runs them). Median of --repeats. The store size is measured on stores
built by build_feature_store from the synthetic corpus's shards (--identities).

    .venv/bin/python bench/encoders.py [--faces 40] [--repeats 3] [--batch-size 64] [--identities 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "media"


def timed(fn, n_items: int, repeats: int) -> float:
    """Median items/s of fn() over repeats (after one warm-up call)."""
    fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(n_items / (time.perf_counter() - t))
    return statistics.median(rates)


def batched(forward, x: torch.Tensor, batch: int):
    def run():
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                forward(x[i : i + batch])

    return run


def store_sizes(identities: int) -> dict:
    from _corpus import synth_shards

    from avtrain.encoders.store import build_feature_store

    out = {}
    with tempfile.TemporaryDirectory() as d:
        shards = synth_shards(Path(d), identities)
        for name, root in (("resemblyzer", Path(d) / "corpus" / "wav"), ("dlib", None)):
            built = build_feature_store(shards, name, audio_root=root)
            files = {p.name: p.stat().st_size for p in built.store.iterdir()}
            items = built.counts["items"]
            out[name] = {
                "items": items,
                "embedded": built.counts["embedded"],
                "bytes": sum(files.values()),
                "bytes_per_item": round(sum(files.values()) / max(items, 1), 1),
                "files": files,
            }
        shard_bytes = {
            m: sum(p.stat().st_size for p in shards.glob(f"*/{m}-*.tar")) for m in ("audio", "face")
        }
        out["item_shards_bytes"] = shard_bytes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--no-store", action="store_true", help="skip the store-size measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from avdata.audio import spectrogram
    from avdata.faces import FaceAligner
    from avdata.media import decode_audio
    from avtrain.encoders import load_encoder
    from avtrain.methods.encoders import AudioBranch, VisualBranch, normalise_audio, normalise_face

    wavs = sorted((SHARED / "voice" / "voxceleb1_named").glob("*.wav"))
    waves = [decode_audio(w) for w in wavs]
    seconds = sum(len(w) for w in waves) / 16000
    specs = torch.stack([normalise_audio(spectrogram(w, 16000)) for w in waves])
    aligner = FaceAligner()
    photos = sorted((SHARED / "faces" / "facenet_pytorch" / "test_images").glob("*/1.jpg"))
    real = np.stack([aligner.align_path(p).face for p in photos])
    crops = np.stack([real[i % len(real)] for i in range(args.faces)])

    resemblyzer = load_encoder("resemblyzer")
    dlib = load_encoder("dlib")
    with tempfile.TemporaryDirectory() as d:
        from facenet_pytorch import InceptionResnetV1

        torch.manual_seed(0)
        weights = Path(d) / "random.pt"
        torch.save(InceptionResnetV1().state_dict(), weights)
        facenet = load_encoder("facenet_vggface2", weights=weights)
        from avtrain.encoders.ecapa import ECAPATDNN

        torch.manual_seed(0)
        ecapa_weights = Path(d) / "ecapa_random.pt"
        torch.save(ECAPATDNN().state_dict(), ecapa_weights)
        ecapa = load_encoder("ecapa", weights=ecapa_weights)
    torch.manual_seed(0)
    audio_branch, visual_branch = AudioBranch().eval(), VisualBranch().eval()

    rates = {
        "voice": {
            "resemblyzer": timed(
                lambda: [resemblyzer.embed_audio(w) for w in waves], len(waves), args.repeats
            ),
            "ecapa": timed(lambda: [ecapa.embed_audio(w) for w in waves], len(waves), args.repeats),
            "aml_audio_branch": timed(
                batched(audio_branch, specs, args.batch_size), len(waves), max(args.repeats, 10)
            ),
        },
        "face": {
            "dlib": timed(lambda: dlib.embed_faces(crops), len(crops), args.repeats),
            "facenet_vggface2": timed(lambda: facenet.embed_faces(crops), len(crops), args.repeats),
            "aml_visual_branch": timed(
                batched(lambda x: visual_branch(normalise_face(x)), torch.from_numpy(crops), args.batch_size),
                len(crops),
                args.repeats,
            ),
        },
    }
    result = {
        "threads": 1,
        "voice_items": len(waves),
        "voice_seconds_total": round(seconds, 1),
        "face_items": len(crops),
        "items_per_s": {m: {k: round(v, 2) for k, v in r.items()} for m, r in rates.items()},
        "aml_over_encoder": {
            "resemblyzer": round(rates["voice"]["aml_audio_branch"] / rates["voice"]["resemblyzer"], 1),
            "ecapa": round(rates["voice"]["aml_audio_branch"] / rates["voice"]["ecapa"], 1),
            "dlib": round(rates["face"]["aml_visual_branch"] / rates["face"]["dlib"], 1),
            "facenet_vggface2": round(
                rates["face"]["aml_visual_branch"] / rates["face"]["facenet_vggface2"], 1
            ),
        },
        "resemblyzer_x_real_time": round(rates["voice"]["resemblyzer"] * seconds / len(waves), 1),
        "ecapa_x_real_time": round(rates["voice"]["ecapa"] * seconds / len(waves), 1),
    }
    if not args.no_store:
        result["store"] = store_sizes(args.identities)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
