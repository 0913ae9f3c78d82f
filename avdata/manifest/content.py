"""What a shard holds, beyond its bytes: the record `manifest verify` compares when bytes differ.

A shard's sha256 is exact, and on one machine the build is byte-identical. Another CPU
architecture (aarch64), another libjpeg or another FFT library moves spectrogram floats in
their last bits, so every audio shard's sha256 changes although the data is the same. Each
shard entry of a manifest therefore also records its ``content``:

* ``samples_sha256`` -- sha256 over every sample's key, member names and its *exact* members
  (``.cls`` and ``.json``: labels, sources and, for faces, the integer crop rectangle);
  arrays (``.npy`` / ``.jpg``) enter by name only. Equal means: the same samples, in the same
  order, cut from the same places.
* ``array_hashes`` -- base64 of 4 bytes of sha256 per sample over its array members' bytes
  (so verify can count the samples whose arrays differ).
* ``digests`` (item shards only) -- base64 of 4 float16 values per sample summarising its
  array: a spectrogram's mean dB in 4 frequency bands (56 bins each), or a decoded face's
  mean R, G, B and the standard deviation of its grey levels.

`compare` calls two shards *equivalent* when ``samples_sha256`` is equal and every digest
value is within :data:`TOLERANCE` of the recorded one; else *different*. The tolerances
(docs/reproducibility.md): 0.1 dB is larger than float16's spacing at 64-80 dB (0.0625) plus
float noise in a band mean (below 1e-3 dB: a last-bit change of the resampled waveform moves a
dB value by about 1e-5 dB, at most about 0.01 dB at the -80 dB floor), and a real recipe
change (top_db, n_fft, resampling rule) moves band means by whole dB; 1.0 grey level is
float16's spacing at 128-255 (0.125) plus the +-1 level a different JPEG decoder's IDCT
rounding may give a pixel, averaged, while a moved crop shifts means by several levels.

Tuple shards copy item arrays byte for byte, so they record no digests: a tuple shard whose
exact members are equal is equivalent when its item shards are (verify them).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import numpy as np

ARRAY_EXTS = frozenset({"npy", "jpg"})
HASH_BYTES = 4
DIGEST_VALUES = 4
TOLERANCE = {"audio": 0.1, "face": 1.0}  # dB per band mean; grey levels per channel mean / std
UNIT = {"audio": "dB (band mean)", "face": "grey levels (channel mean or std)"}


def array_digest(ext: str, data: bytes) -> np.ndarray:
    """4 float64 values summarising one array member (see the module doc)."""
    from avdata.reader import decode_jpg, decode_npy

    if ext == "npy":
        spec = decode_npy(data).astype(np.float64)
        if spec.ndim != 2 or spec.shape[0] < DIGEST_VALUES:
            raise ValueError(f"a spectrogram of shape {spec.shape}")
        return np.array([b.mean() for b in np.array_split(spec, DIGEST_VALUES, axis=0)])
    face = decode_jpg(data).astype(np.float64)
    return np.array([*face.reshape(-1, 3).mean(axis=0), face.mean(axis=2).std()])


class ContentRecorder:
    """Accumulates the ``content`` record of one shard, sample by sample, as it is written
    or read back; ``digests`` for item shards only."""

    def __init__(self, digests: bool):
        self.digests = digests
        self._exact = hashlib.sha256()
        self._hashes = bytearray()
        self._values: list[np.ndarray] = []

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """One sample: (ext, bytes) members in tar order."""
        arrays = hashlib.sha256()
        self._exact.update(f"{key}\n".encode())
        for ext, data in members:  # ext: "npy", "json", ... or, in tuple shards, "q.npy", "g0.jpg"
            is_array = ext.rsplit(".", 1)[-1] in ARRAY_EXTS
            self._exact.update(f"{ext}\t{-1 if is_array else len(data)}\n".encode())
            if is_array:
                arrays.update(data)
                if self.digests:
                    self._values.append(array_digest(ext.rsplit(".", 1)[-1], data))
            else:
                self._exact.update(data)
        self._hashes += arrays.digest()[:HASH_BYTES]

    def result(self) -> dict:
        out = {
            "samples_sha256": self._exact.hexdigest(),
            "array_hashes": base64.b64encode(bytes(self._hashes)).decode("ascii"),
        }
        if self.digests:
            values = np.array(self._values, dtype="<f2").reshape(-1, DIGEST_VALUES)
            out["digests"] = base64.b64encode(values.tobytes()).decode("ascii")
        return out


def shard_content(tar_path, digests: bool) -> dict:
    """The ``content`` record of a tar on disk (members checked as every reader checks them)."""
    from avdata.reader import iter_tar_samples

    recorder = ContentRecorder(digests)
    for sample in iter_tar_samples(tar_path):
        recorder.add(sample["__key__"], [(k, v) for k, v in sample.items() if not k.startswith("__")])
    return recorder.result()


@dataclass
class Comparison:
    equivalent: bool
    samples: int  # samples in the shard
    differing: int  # samples whose array bytes differ
    largest: float | None  # largest digest difference (None without digests)
    reason: str = ""  # why not equivalent
    modality: str | None = None  # "audio" / "face" for item shards; None for tuple shards

    def describe(self) -> str:
        if not self.equivalent:
            return f"different: {self.reason}"
        text = f"float noise in {self.differing} of {self.samples} samples"
        if self.largest is not None and self.modality in UNIT:
            text += f", largest difference {self.largest:.3g} {UNIT[self.modality]}"
        return text


def shard_modality(name: str) -> str | None:
    """ "audio" / "face" for an item shard's name (SPLIT/MODALITY-N.tar), None otherwise."""
    return next((m for m in UNIT if f"/{m}-" in name), None)


def summary(comparisons) -> str:
    """``equivalent (float noise in N samples of K shards, largest difference ...)`` of
    equivalent comparisons."""
    comparisons = list(comparisons)
    text = f"equivalent (float noise in {sum(c.differing for c in comparisons)} samples of {len(comparisons)} shards"
    largest = {}
    for c in comparisons:
        if c.largest is not None and c.modality in UNIT:
            largest[UNIT[c.modality]] = max(largest.get(UNIT[c.modality], 0.0), c.largest)
    if largest:
        text += ", largest difference " + ", ".join(f"{v:.3g} {u}" for u, v in sorted(largest.items()))
    return text + ")"


def _decode(record: dict, field: str, width: int, dtype: str):
    try:
        raw = base64.b64decode(str(record.get(field, "")), validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) % width:
        return None
    return np.frombuffer(raw, dtype=dtype).reshape(-1, width // np.dtype(dtype).itemsize)


def compare(expected: dict | None, actual: dict, modality: str | None) -> Comparison:
    """Compare a recorded ``content`` (the committed manifest's) with one read from disk."""
    result = _compare(expected, actual, modality)
    result.modality = modality
    return result


def _compare(expected: dict | None, actual: dict, modality: str | None) -> Comparison:
    hashes_a = _decode(actual, "array_hashes", HASH_BYTES, "u1")
    n = 0 if hashes_a is None else len(hashes_a)
    if not isinstance(expected, dict) or "samples_sha256" not in expected:
        return Comparison(False, n, n, None, "the manifest records no content to compare with")
    if expected.get("samples_sha256") != actual.get("samples_sha256"):
        return Comparison(
            False, n, n, None, "sample keys, labels or metadata (e.g. face crop rectangles) differ"
        )
    hashes_e = _decode(expected, "array_hashes", HASH_BYTES, "u1")
    if hashes_e is None or hashes_a is None or hashes_e.shape != hashes_a.shape:
        return Comparison(False, n, n, None, "the recorded array hashes are malformed")
    differing = int(np.any(hashes_e != hashes_a, axis=1).sum())
    if "digests" not in expected:
        return Comparison(True, n, differing, None)
    width = DIGEST_VALUES * 2
    de, da = _decode(expected, "digests", width, "<f2"), _decode(actual, "digests", width, "<f2")
    if de is None or da is None or de.shape != da.shape:
        return Comparison(False, n, differing, None, "the recorded digests are malformed")
    gap = np.abs(de.astype(np.float64) - da.astype(np.float64))
    largest = float(gap.max()) if gap.size else 0.0
    tolerance = TOLERANCE.get(modality or "", 0.0)
    if not largest <= tolerance:  # also NaN
        worst = int(np.argmax(gap.max(axis=1)))
        return Comparison(
            False,
            n,
            differing,
            largest,
            f"sample {worst}'s array summary moved by {largest:.3g} "
            f"(tolerance {tolerance} {UNIT.get(modality or '', '')})",
        )
    return Comparison(True, n, differing, largest)
