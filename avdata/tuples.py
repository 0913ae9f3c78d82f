"""make-tuples: fixed, checkable evaluation and training tuples drawn from shards.

Protocols (see docs/tuples.md):

* matching — one query of one modality, its positive (other modality, same identity)
  and k-1 negatives (other modality, k-1 distinct other identities), the positive
  at a uniformly drawn position, which is the label. k = 2 ("binary"): one positive
  pair per identity and ``negatives_per_positive`` tuples with one negative each
  (942 train identities x 15 = 14,130); k > 2 ("multi-way"): ``sets_per_identity``
  tuples per identity (153 test identities x 50 = 7,650).
* verification — balanced (voice, face) pairs: per identity ``pairs_per_identity``
  positive and as many negative pairs.
* retrieval — every item of the split as a query against all items of the other
  modality (a query list and a gallery list per direction).

Every draw for one identity uses its own stream ``default_rng([seed, crc32(...)])``
keyed by task, split, direction, k and identity, so outputs are byte-identical for
the same shards and seed, and adding an identity does not reshuffle the others.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from avdata.reader import index_items, read_member

TASKS = ("matching", "verification", "retrieval")
DIRECTIONS = {"a2v": ("audio", "face"), "v2a": ("face", "audio")}
ATTRIBUTES = ("gender", "nationality")


@dataclass(frozen=True)
class TupleConfig:
    task: str
    split: str
    direction: str = "a2v"        # verification pairs are always (voice, face): "a2v"
    k: int = 2
    seed: int = 0
    negatives_per_positive: int = 15
    positives_per_identity: int = 1   # k = 2: (query, positive) pairs per identity, each with its negatives
    sets_per_identity: int = 50
    pairs_per_identity: int = 10
    constrain: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        c = "" if not self.constrain else "_" + "+".join(self.constrain)
        if self.task == "matching":
            return f"matching_{self.split}_{self.direction}_k{self.k}{c}"
        if self.task == "verification":
            return f"verification_{self.split}{c}"
        return f"retrieval_{self.split}_{self.direction}"


def _rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, parts)).encode())])


@dataclass
class Pool:
    """The items of one split, grouped by identity and modality."""

    items: pd.DataFrame
    attrs: dict[str, dict]                 # vox_id -> {"gender", "nationality"}
    by_id: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # modality -> vox_id -> keys

    def __post_init__(self):
        for modality in ("audio", "face"):
            sub = self.items[self.items["modality"] == modality]
            self.by_id[modality] = {v: sorted(g["key"]) for v, g in sub.groupby("vox_id", sort=True)}

    def identities_with(self, *modalities: str) -> list[str]:
        ids = set.intersection(*(set(self.by_id[m]) for m in modalities))
        return sorted(ids)

    def negatives_for(self, vox_id: str, modality: str, constrain: tuple[str, ...]) -> list[str]:
        """Other identities with items of ``modality`` sharing the constrained attributes."""
        want = {a: self.attrs.get(vox_id, {}).get(a) for a in constrain}
        return [v for v in self.by_id[modality] if v != vox_id
                and all(self.attrs.get(v, {}).get(a) == want[a] for a in constrain)]


def load_pool(shards: str | Path, split: str, items: pd.DataFrame | None = None) -> Pool:
    shards = Path(shards)
    items = index_items(shards) if items is None else items
    split_items = items[items["split"] == split].reset_index(drop=True)
    if split_items.empty:
        present = sorted(items["split"].unique())
        raise ValueError(f"{shards}: no samples in split {split!r}; splits present: {present}")
    ids = pd.read_csv(shards / "splits.csv", dtype=str, keep_default_na=False)
    attrs = {r["vox_id"]: {a: r.get(a, "") for a in ATTRIBUTES} for r in ids.to_dict("records")}
    return Pool(split_items, attrs)


def _tuple(cfg: TupleConfig, n: int, query: str, q_id: str, gallery: list[str], g_ids: list[str], label: int) -> dict:
    return {"tuple_id": f"{cfg.name}-{n:07d}", "task": cfg.task, "split": cfg.split, "direction": cfg.direction,
            "query": query, "query_identity": q_id, "gallery": gallery, "gallery_identities": g_ids, "label": int(label)}


def draw_matching(pool: Pool, cfg: TupleConfig) -> tuple[list[dict], list[dict]]:
    q_mod, g_mod = DIRECTIONS[cfg.direction]
    tuples, skipped = [], []
    for vox_id in pool.identities_with(q_mod, g_mod):
        rng = _rng(cfg.seed, cfg.task, cfg.split, cfg.direction, cfg.k, "+".join(cfg.constrain), vox_id)
        candidates = pool.negatives_for(vox_id, g_mod, cfg.constrain)
        if len(candidates) < cfg.k - 1:
            skipped.append({"identity": vox_id, "reason": f"{len(candidates)} eligible negative identities < k-1 = {cfg.k - 1}"})
            continue
        q_keys, p_keys = pool.by_id[q_mod][vox_id], pool.by_id[g_mod][vox_id]
        if cfg.k == 2:
            # positives_per_identity (query, positive) pairs (1: the paper's protocol), each with
            # negatives_per_positive tuples whose negatives come from distinct identities while
            # there are enough of them
            draws = []
            for _ in range(cfg.positives_per_identity):
                query, positive = q_keys[rng.integers(len(q_keys))], p_keys[rng.integers(len(p_keys))]
                replace = len(candidates) < cfg.negatives_per_positive
                neg_ids = rng.choice(candidates, cfg.negatives_per_positive, replace=replace)
                draws += [(query, positive, [n]) for n in neg_ids]
        else:
            draws = []
            for _ in range(cfg.sets_per_identity):
                query, positive = q_keys[rng.integers(len(q_keys))], p_keys[rng.integers(len(p_keys))]
                draws.append((query, positive, list(rng.choice(candidates, cfg.k - 1, replace=False))))
        for query, positive, neg_ids in draws:
            negs = [pool.by_id[g_mod][n][rng.integers(len(pool.by_id[g_mod][n]))] for n in neg_ids]
            pos = int(rng.integers(cfg.k))
            gallery = negs[:pos] + [positive] + negs[pos:]
            g_ids = list(neg_ids[:pos]) + [vox_id] + list(neg_ids[pos:])
            tuples.append(_tuple(cfg, len(tuples), query, vox_id, gallery, [str(g) for g in g_ids], pos))
    return tuples, skipped


def draw_verification(pool: Pool, cfg: TupleConfig) -> tuple[list[dict], list[dict]]:
    tuples, skipped = [], []
    for vox_id in pool.identities_with("audio", "face"):
        rng = _rng(cfg.seed, cfg.task, cfg.split, "+".join(cfg.constrain), vox_id)
        candidates = pool.negatives_for(vox_id, "face", cfg.constrain)
        if not candidates:
            skipped.append({"identity": vox_id, "reason": "no eligible negative identity"})
            continue
        voices, faces = pool.by_id["audio"][vox_id], pool.by_id["face"][vox_id]
        for _ in range(cfg.pairs_per_identity):
            v = voices[rng.integers(len(voices))]
            tuples.append(_tuple(cfg, len(tuples), v, vox_id, [faces[rng.integers(len(faces))]], [vox_id], 1))
            other = candidates[rng.integers(len(candidates))]
            of = pool.by_id["face"][other]
            v = voices[rng.integers(len(voices))]
            tuples.append(_tuple(cfg, len(tuples), v, vox_id, [of[rng.integers(len(of))]], [other], 0))
    return tuples, skipped


def retrieval_lists(pool: Pool, cfg: TupleConfig) -> tuple[list[dict], list[dict]]:
    """Queries (one per item of the query modality) and the gallery (all items of the other)."""
    q_mod, g_mod = DIRECTIONS[cfg.direction]
    items = pool.items
    gallery = [{"key": k, "identity": v} for k, v in
               items[items["modality"] == g_mod][["key", "vox_id"]].itertuples(index=False)]
    n_rel = items[items["modality"] == g_mod].groupby("vox_id").size().to_dict()
    queries = [{"tuple_id": f"{cfg.name}-{i:07d}", "task": "retrieval", "split": cfg.split, "direction": cfg.direction,
                "query": k, "query_identity": v, "relevant": int(n_rel.get(v, 0))}
               for i, (k, v) in enumerate(items[items["modality"] == q_mod][["key", "vox_id"]].itertuples(index=False))]
    return queries, gallery


# ---------------------------------------------------------------- outputs

def _dump_jsonl(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tuple_shards(tuples: list[dict], items: pd.DataFrame, shards_root: Path, out: Path, name: str,
                       per_shard: int) -> dict[str, dict]:
    """Training tuple shards: each sample carries the query's and every gallery member's
    array bytes (copied as stored, no re-encoding), so training reads sequentially."""
    loc = items.set_index("key")[["tar", "data_ext", "data_offset", "data_size"]].to_dict("index")
    written = {}
    for s in range(math.ceil(len(tuples) / per_shard)):
        rel = f"shards/{name}-{s:06d}.tar"
        final = out / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        chunk = tuples[s * per_shard:(s + 1) * per_shard]
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for t in chunk:
                key = t["tuple_id"]
                members = [("cls", str(t["label"]).encode()),
                           ("json", json.dumps(t, sort_keys=True, separators=(",", ":")).encode())]
                for role, item in [("q", t["query"])] + [(f"g{i}", g) for i, g in enumerate(t["gallery"])]:
                    m = loc[item]
                    members.append((f"{role}.{m['data_ext']}", read_member(shards_root / m["tar"], m["data_offset"], m["data_size"])))
                for ext, data in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
                    tar.addfile(info, io.BytesIO(data))
        tmp.replace(final)
        written[rel] = {"sha256": _sha256(final), "tuples": len(chunk)}
    return written


def make_tuples(shards: str | Path, out: str | Path, configs: list[TupleConfig], tuple_shards: bool = False,
                tuples_per_shard: int = 500, items: pd.DataFrame | None = None) -> dict:
    """Draw every config's tuples, write index files (and tuple shards), update DIR/manifest.json.
    ``items`` (from index_items) saves re-reading the shards when the caller has it."""
    shards, out = Path(shards), Path(out)
    items = index_items(shards) if items is None else items
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "kind": "avmatch.tuples", "format_version": 1, "files": {}, "shards": {}}
    manifest["source_shards_manifest_sha256"] = _sha256(shards / "manifest.json")
    pools: dict[str, Pool] = {}
    summary = {}
    for cfg in configs:
        pool = pools.setdefault(cfg.split, load_pool(shards, cfg.split, items))
        entry = {"config": asdict(cfg) | {"constrain": list(cfg.constrain)}}
        if cfg.task == "retrieval":
            queries, gallery = retrieval_lists(pool, cfg)
            rel_q, rel_g = f"index/{cfg.name}_queries.jsonl", f"index/{cfg.name}_gallery.jsonl"
            manifest["files"][rel_q] = entry | {"sha256": _dump_jsonl(queries, out / rel_q), "tuples": len(queries),
                                                "gallery": rel_g}
            manifest["files"][rel_g] = {"config": entry["config"], "sha256": _dump_jsonl(gallery, out / rel_g),
                                        "items": len(gallery)}
            summary[cfg.name] = {"queries": len(queries), "gallery": len(gallery)}
            continue
        draw = draw_matching if cfg.task == "matching" else draw_verification
        tuples, skipped = draw(pool, cfg)
        rel = f"index/{cfg.name}.jsonl"
        manifest["files"][rel] = entry | {"sha256": _dump_jsonl(tuples, out / rel), "tuples": len(tuples),
                                          "identities": len({t["query_identity"] for t in tuples}),
                                          "skipped_identities": skipped}
        if tuple_shards:
            manifest["shards"].update(write_tuple_shards(tuples, items, shards, out, cfg.name, tuples_per_shard))
        summary[cfg.name] = {"tuples": len(tuples), "identities": manifest["files"][rel]["identities"],
                             "skipped_identities": len(skipped)}
    sizes = {k: v["tuples"] for k, v in sorted(manifest["shards"].items())}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return summary


# ---------------------------------------------------------------- checks

def check_tuples(out: str | Path, shards: str | Path, max_reports: int = 20,
                 items: pd.DataFrame | None = None) -> list[str]:
    """Every rule a tuple list must satisfy; returns one line per broken rule (empty: all hold)."""
    out, shards = Path(out), Path(shards)
    manifest = json.loads((out / "manifest.json").read_text())
    items = (index_items(shards) if items is None else items).set_index("key")
    ids = pd.read_csv(shards / "splits.csv", dtype=str, keep_default_na=False)
    attrs = {r["vox_id"]: r for r in ids.to_dict("records")}
    problems: list[str] = []

    def report(rel: str, tid: str, msg: str):
        if len(problems) < max_reports:
            problems.append(f"{rel}: {tid}: {msg}")

    for rel, entry in sorted(manifest["files"].items()):
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in the manifest but missing")
            continue
        if _sha256(path) != entry["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (edited after make-tuples?)")
        cfg = entry["config"]
        if "gallery" not in entry and cfg["task"] == "retrieval":
            continue  # a gallery list, checked with its queries
        rows = [json.loads(l) for l in path.read_text().splitlines()]
        task = cfg["task"]
        q_mod, g_mod = DIRECTIONS[cfg["direction"]]
        labels = []
        for t in rows:
            tid, split = t["tuple_id"], t.get("split", cfg["split"])
            members = [(t["query"], q_mod)] + [(g, g_mod) for g in t.get("gallery", [])]
            for key, mod in members:
                if key not in items.index:
                    report(rel, tid, f"key {key} not in the shards")
                    continue
                it = items.loc[key]
                if it["modality"] != mod:
                    report(rel, tid, f"key {key} is {it['modality']}, expected {mod}")
                if it["split"] != split:
                    report(rel, tid, f"key {key} is in split {it['split']}, tuple is in {split} (crosses splits)")
            if task == "retrieval":
                continue
            q_id, g_ids, label = t["query_identity"], t["gallery_identities"], t["label"]
            if t["query"] in items.index and items.loc[t["query"], "vox_id"] != q_id:
                report(rel, tid, "query identity does not match its key")
            for g, gid in zip(t["gallery"], g_ids):
                if g in items.index and items.loc[g, "vox_id"] != gid:
                    report(rel, tid, f"gallery identity of {g} does not match its key")
            if len(set(g_ids)) != len(g_ids):
                report(rel, tid, "an identity repeats inside the tuple")
            labels.append(label)
            if task == "matching":
                if len(g_ids) != cfg["k"]:
                    report(rel, tid, f"{len(g_ids)} gallery items, expected k={cfg['k']}")
                    continue
                if g_ids[label] != q_id:
                    report(rel, tid, "positive does not share the query's identity")
                negatives = [g for i, g in enumerate(g_ids) if i != label]
            else:
                if (g_ids[0] == q_id) != (label == 1):
                    report(rel, tid, f"label {label} contradicts the pair's identities")
                negatives = [g for g in g_ids if label == 0]
            if q_id in negatives:
                report(rel, tid, "a negative shares the query's identity")
            for a in cfg.get("constrain", []):
                for n in negatives:
                    if attrs.get(n, {}).get(a) != attrs.get(q_id, {}).get(a):
                        report(rel, tid, f"negative {n} breaks the {a} constraint")
        if task == "retrieval":
            split = cfg["split"]
            want_q = set(items[(items["split"] == split) & (items["modality"] == q_mod)].index)
            if {t["query"] for t in rows} != want_q or len(rows) != len(want_q):
                problems.append(f"{rel}: queries are not exactly the {len(want_q)} {q_mod} items of {split}")
            gallery = [json.loads(l)["key"] for l in (out / entry["gallery"]).read_text().splitlines()]
            want_g = set(items[(items["split"] == split) & (items["modality"] == g_mod)].index)
            if set(gallery) != want_g or len(gallery) != len(want_g):
                problems.append(f"{entry['gallery']}: gallery is not exactly the {len(want_g)} {g_mod} items of {split}")
            continue
        if "imported_from" not in cfg:  # an official list is as balanced as its authors made it
            problems.extend(f"{rel}: {m}" for m in label_balance_problems(labels, task, cfg["k"]))
    return problems


def label_balance_problems(labels: list[int], task: str, k: int) -> list[str]:
    """Matching: each position's share within 4 binomial standard deviations (and
    0.05) of 1/k. Verification: exactly as many positive as negative pairs."""
    n = len(labels)
    if n == 0:
        return []
    if task == "verification":
        pos = sum(labels)
        return [] if 2 * pos == n else [f"labels unbalanced: {pos} positive / {n - pos} negative pairs"]
    counts = np.bincount(labels, minlength=k)
    p = 1.0 / k
    tol = max(0.05, 4 * math.sqrt(p * (1 - p) / n))
    return [f"label position {i} has share {c / n:.3f}, expected {p:.3f} +- {tol:.3f}"
            for i, c in enumerate(counts) if abs(c / n - p) > tol]


# ---------------------------------------------------------------- official lists

def import_veriflist(list_path: str | Path, shards: str | Path, out: str | Path) -> dict:
    """Map an official Learnable-PINs verification list onto shard keys.

    Format: ``id,voice-speaker-id,face-speaker-id,label,voice-path,face-path`` with voice
    paths ``NAME/YTID_0000001.wav`` and face paths ``NAME/YTID/0006000.jpg``. A voice maps
    to the first spectrogram window of the clip of that identity, source video and clip
    number; a face to the aligned face of that identity and path. Pairs that cannot be
    mapped are counted by reason, never fatal. Writes ``index/verification_imported_STEM.jsonl``.
    """
    list_path, shards, out = Path(list_path), Path(shards), Path(out)
    try:
        rows = pd.read_csv(list_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, FileNotFoundError) as exc:
        raise ValueError(f"{list_path}: not a readable verification list ({type(exc).__name__})") from None
    cols = ["id", "voice-speaker-id", "face-speaker-id", "label", "voice-path", "face-path"]
    if list(rows.columns) != cols:
        raise ValueError(f"{list_path}: header {list(rows.columns)} is not {cols}")
    items = index_items(shards)
    vox_of = dict(zip(items["key"], items["vox_id"]))
    voice_index, face_index = {}, {}
    for key, split, modality, name, source in zip(items["key"], items["split"], items["modality"], items["name"],
                                                  items["source"]):
        if modality == "audio" and key.endswith("_w0"):
            parts = source.split("/")
            if len(parts) >= 2 and parts[-1].split(".")[0].isdigit():
                voice_index[(name, parts[-2], int(parts[-1].split(".")[0]))] = (key, split)
        elif modality == "face":
            parts = source.split("/")
            face_index[(name, "/".join(parts[-2:]))] = (key, split)
    names_in_shards = set(items["name"])
    mapped, reasons = [], {}

    def miss(reason):
        reasons[reason] = reasons.get(reason, 0) + 1

    for r in rows.to_dict("records"):
        v_name, v_file = r["voice-path"].split("/", 1) if "/" in r["voice-path"] else ("", r["voice-path"])
        f_name, f_rest = r["face-path"].split("/", 1) if "/" in r["face-path"] else ("", r["face-path"])
        if v_name not in names_in_shards:
            miss("voice identity not in shards")
            continue
        if f_name not in names_in_shards:
            miss("face identity not in shards")
            continue
        stem = v_file.rsplit(".", 1)[0]
        ytid, _, num = stem.rpartition("_")
        voice = voice_index.get((v_name, ytid, int(num))) if num.isdigit() else None
        face = face_index.get((f_name, f_rest))
        if voice is None:
            miss("voice clip not in shards")
            continue
        if face is None:
            miss("face image not in shards (missing or rejected)")
            continue
        if voice[1] != face[1]:
            miss("voice and face in different splits")
            continue
        label = int(r["label"])
        mapped.append({"tuple_id": f"veriflist-{list_path.stem}-{int(r['id']):07d}", "task": "verification",
                       "split": voice[1], "direction": "a2v", "query": voice[0], "query_identity": vox_of[voice[0]],
                       "gallery": [face[0]], "gallery_identities": [vox_of[face[0]]], "label": label})
    rel = f"index/verification_imported_{list_path.stem}.jsonl"
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "kind": "avmatch.tuples", "format_version": 1, "files": {}, "shards": {}}
    split = mapped[0]["split"] if mapped else ""
    manifest["files"][rel] = {"config": {"task": "verification", "split": split, "direction": "a2v", "k": 1,
                                         "imported_from": list_path.name, "imported_sha256": _sha256(list_path),
                                         "constrain": []},
                              "sha256": _dump_jsonl(mapped, out / rel), "tuples": len(mapped),
                              "unmapped": dict(sorted(reasons.items()))}
    manifest.setdefault("source_shards_manifest_sha256", _sha256(shards / "manifest.json"))
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return {"pairs": len(rows), "mapped": len(mapped), "unmapped": dict(sorted(reasons.items())), "index": str(out / rel)}

