"""avdata command line: thin Click commands that call plain functions in avdata.*."""

from __future__ import annotations

from pathlib import Path

import click

from avdata.cli_base import CONTEXT, user_errors
from avdata.corpora import CORPORA, DEFAULT_CORPUS, protocol_names, protocols_help
from avdata.errors import one_line
from avdata.tasks import TASKS


def fail(msg: str):
    """One-line error, no traceback."""
    raise click.ClickException(msg)


# Options shared by several commands: one definition each. Corpora and protocols come from the
# registry (avdata.corpora), their one owner.
_CORPUS_OPTION = click.option(
    "--corpus",
    type=click.Choice(list(CORPORA)),
    default=DEFAULT_CORPUS,
    help="The corpus recipe that reads --meta and the media: its layouts, meta file and protocols "
    "(docs/corpora.md).",
)
_META_OPTION = click.option(
    "--meta",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="The corpus's meta file: " + "; ".join(f"{c.name}: {c.meta_help}" for c in CORPORA.values()) + ".",
)
_PROTOCOL_HELP = (
    "Identity split (docs/corpora.md). Per corpus, default first: "
    + protocols_help()
    + ". matching: A-B val, C-E test, F-Z train by first letter; pins: Learnable-PINs sets."
)
_PROTOCOL_OPTION = click.option(
    "--protocol", type=click.Choice(protocol_names()), required=True, help=_PROTOCOL_HELP
)
_PROTOCOL_DEFAULT_OPTION = click.option(
    "--protocol",
    type=click.Choice(protocol_names()),
    default=None,
    help=_PROTOCOL_HELP + " [default: the corpus's first]",
)
_PINS_OPTION = click.option(
    "--pins-splits",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Learnable-PINs identity_splits.txt (needed for --protocol pins).",
)
_SPLITS_OPTION = click.option(
    "--splits",
    "splits_path",
    type=click.Path(exists=True),
    default=None,
    help="The protocol's split file: custom, a CSV identity,split; fame, the folder of FAME's "
    "LANGUAGE_train.txt lists (optional: without it a seeded identity split).",
)


def _parse_languages(ctx, param, value: str | None) -> tuple[str, ...]:
    """Click callback: 'English,Urdu' -> ('English', 'Urdu'); else a usage error."""
    if value is None:
        return ()
    langs = tuple(v.strip() for v in value.split(","))
    if len(langs) != 2 or not all(langs) or langs[0] == langs[1]:
        raise click.BadParameter(f"two different languages HEARD,UNHEARD, e.g. English,Urdu; got {value!r}")
    return langs


_LANGUAGES_OPTION = click.option(
    "--languages",
    default=None,
    callback=_parse_languages,
    help="fame: HEARD,UNHEARD, e.g. English,Urdu: train on HEARD, test disjoint identities in both.",
)


def _protocol_options(pins_splits, splits_path, languages, seed: int = 0):
    from avdata.corpora import ProtocolOptions

    return ProtocolOptions(pins_splits=pins_splits, splits=splits_path, languages=languages, seed=seed)


_RUN_TUPLES_OPTION = click.option(  # manifest verify / update
    "--tuples",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="For a training run directory: the tuple directory it trained on (its manifest hash is recorded).",
)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="avmatch")
def main():
    """avdata: build reproducible face-voice datasets from raw media."""


@main.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--identities",
    type=click.IntRange(min=3),
    default=60,
    help="Number of identities (names spread over A-Z so every split is populated).",
)
@click.option(
    "--clips-per-identity", type=click.IntRange(min=1), default=4, help="Voice clips (wav) per identity."
)
@click.option(
    "--faces-per-identity", type=click.IntRange(min=1), default=4, help="Face photos (jpg) per identity."
)
@click.option(
    "--videos/--no-videos", default=False, help="Also write talking-head mp4s (frames + voice track)."
)
@click.option(
    "--layout",
    type=click.Choice(list(CORPORA)),
    default=DEFAULT_CORPUS,
    help="Write the corpus in this corpus recipe's layout (docs/corpora.md; the media are the same).",
)
@click.option(
    "--video-conditions/--no-video-conditions",
    default=True,
    help="Each source video's recording condition (a room tone in its voices, a colour cast in its "
    "faces) marks both modalities, as real videos do; --no-video-conditions writes the corpus of "
    "before issue #23.",
)
@click.option("--seed", type=int, default=0, help="Corpus seed; the same seed gives byte-identical files.")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes (identities in parallel); the files are the same for any value.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@user_errors
def synth_cmd(
    out,
    identities,
    clips_per_identity,
    faces_per_identity,
    videos,
    layout,
    video_conditions,
    seed,
    jobs,
    progress,
):
    """Write the built-in synthetic corpus to OUT in the real VoxCeleb layouts.

    OUT/vox1_meta.csv, OUT/identity_splits.txt (PINs format), OUT/wav/idNNNNN/YTID/NNNNN.wav,
    OUT/faces/NAME/YTID/NNNNNNN.jpg and, with --videos, OUT/mp4/idNNNNN/YTID/NNNNN.mp4.
    Hidden identity attributes shape both voice and face (OUT/attributes.json); each source
    video's recording condition marks its voices and faces. --layout writes the same media in
    another corpus's layout (voxceleb2: aac/ m4a, vggface2/, vox2_meta.csv, identity_meta.csv;
    mavceleb: voices/ faces/ by language, v1_meta.csv, lists/; csv: media/ and corpus.csv).
    """
    from avdata.synth import synth_corpus

    summary = synth_corpus(
        out,
        identities=identities,
        clips_per_identity=clips_per_identity,
        faces_per_identity=faces_per_identity,
        videos=videos,
        seed=seed,
        progress=progress,
        workers=jobs,
        video_conditions=video_conditions,
        layout=layout,
    )
    click.echo(f"{out}: " + ", ".join(f"{k}={v}" for k, v in summary.items() if isinstance(v, int)))


@main.command("splits")
@_CORPUS_OPTION
@_META_OPTION
@_PROTOCOL_OPTION
@_PINS_OPTION
@_SPLITS_OPTION
@_LANGUAGES_OPTION
@click.option(
    "--seed", type=int, default=0, help="Seed of a seeded identity split (csv without a split column)."
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output CSV: name,vox_id,split.")
@user_errors
def splits_cmd(corpus, meta, protocol, pins_splits, splits_path, languages, seed, out):
    """Write the identity split of a protocol as name,vox_id,split."""
    from avdata.corpora import get_corpus
    from avdata.io import atomic_write_text
    from avdata.splits import split_counts

    c = get_corpus(corpus)
    meta_df = c.read_meta(meta)
    df = c.identity_splits(meta_df, protocol, _protocol_options(pins_splits, splits_path, languages, seed))
    atomic_write_text(out, df.to_csv(index=False))
    for problem in meta_df.attrs.get("problems", []) + df.attrs.get("problems", []):
        click.echo(str(problem), err=True)
    for name, reason in df.attrs["unplaced"]:
        click.echo(f"unplaced: {name}: {reason}", err=True)
    counts = split_counts(df)
    click.echo(f"{out}: {len(df)} identities " + " ".join(f"{k}={v}" for k, v in counts.items()))
    for media_split, ident_split in c.protocol(protocol).identity_split_of.items():
        click.echo(f"{media_split} media are carved from {ident_split} identities when shards are built")


def _layout_help(root: str) -> str:
    return "; ".join(f"{c.name}: {c.layouts[root]}" for c in CORPORA.values() if root in c.layouts)


@main.command("build-shards")
@_CORPUS_OPTION
@click.option(
    "--audio",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Audio root. " + _layout_help("audio") + ".",
)
@click.option(
    "--faces",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Face image root. " + _layout_help("faces") + ".",
)
@click.option(
    "--videos",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Video root; feeds both modalities. " + _layout_help("videos") + ".",
)
@_META_OPTION
@_PROTOCOL_DEFAULT_OPTION
@_PINS_OPTION
@_SPLITS_OPTION
@_LANGUAGES_OPTION
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Output directory for SPLIT/{audio,face}-NNNNNN.tar and the manifest.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes; each owns whole shards. Output is identical for any value.",
)
@click.option(
    "--distributor",
    type=click.Choice(["multiprocessing", "dask"]),
    default="multiprocessing",
    help="Who runs the shards: -j local processes, or one Dask task per shard (docs/cluster.md).",
)
@click.option(
    "--scheduler",
    default=None,
    help="Dask scheduler address (tcp://host:8786) or scheduler file to join; without it --distributor dask starts a LocalCluster of -j processes.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    help="Seed of the seen-heard hold-out (pins) and of seeded identity splits.",
)
@click.option("--shard-size", type=click.IntRange(min=1), default=500, help="Input files per shard.")
@click.option(
    "--windows", type=click.IntRange(min=1), default=1, help="Max 125-frame spectrogram windows per clip."
)
@click.option(
    "--face-margin", type=float, default=0.2, help="Margin around the face box, as a fraction of its size."
)
@click.option("--video-fps", type=float, default=1.0, help="Frames per second sampled from videos for faces.")
@click.option(
    "--max-frames-per-video", type=click.IntRange(min=1), default=8, help="Cap on face frames per video."
)
@click.option(
    "--fault-tolerant/--fail-fast",
    default=True,
    help="Record bad inputs in rejects.jsonl and go on, or stop at the first.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (items/s, rejects so far).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="Face detection device: auto = CUDA if present, else CPU; with n GPUs worker i uses cuda:(i mod n). Recorded in the manifest.",
)
@user_errors
def build_shards_cmd(
    corpus,
    audio,
    faces,
    videos,
    meta,
    protocol,
    pins_splits,
    splits_path,
    languages,
    out,
    jobs,
    seed,
    shard_size,
    windows,
    face_margin,
    video_fps,
    max_frames_per_video,
    fault_tolerant,
    progress,
    device,
    distributor,
    scheduler,
):
    """Build identity-split WebDataset shards; re-run the same command to resume.

    OUT is locked while a build runs (OUT/.lock; a second build into it stops at once). A
    shard is kept only if it was built with the same settings from the same input files;
    others are rebuilt, so the manifest always describes the shards on disk.
    """
    from avdata.kernels import pin_build_kernels

    pin_build_kernels()  # before torch loads here or in a worker: the same crops on any AVX2 CPU
    from avdata.corpora import get_corpus
    from avdata.extract import ExtractConfig
    from avdata.shards import BuildConfig, build_shards

    config = BuildConfig(
        protocol=get_corpus(corpus).protocol(protocol).name,
        corpus=corpus,
        languages=languages,
        seed=seed,
        shard_size=shard_size,
        device=device,
        extract=ExtractConfig(
            windows=windows,
            face_margin=face_margin,
            video_fps=video_fps,
            max_frames_per_video=max_frames_per_video,
        ),
    )
    manifest = build_shards(
        out,
        meta,
        audio=audio,
        faces=faces,
        videos=videos,
        pins_splits=pins_splits,
        config=config,
        jobs=jobs,
        fail_fast=not fault_tolerant,
        progress=progress,
        log=lambda line: click.echo(line, err=True),
        distributor=distributor,
        scheduler=scheduler,
        splits=splits_path,
    )
    for split, s in manifest["splits"].items():
        click.echo(
            f"{split}: {s['identities']} identities, {s['samples']['audio']} audio, {s['samples']['face']} face samples"
        )
    for pattern in manifest["patterns"].values():
        click.echo(f"shards: {Path(out) / pattern}")
    click.echo(f"{out}: {len(manifest['shards'])} shards, {manifest['rejects']} rejects (see rejects.jsonl)")


def _parse_k(ctx, param, value: str) -> list[int]:
    """Click callback: '10' -> [10]; '2-10' -> [2..10]; '2,5,10' -> [2, 5, 10]; else a usage error."""
    ks = []
    try:
        for part in value.split(","):
            lo, _, hi = part.partition("-")
            ks.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise click.BadParameter(f"expected 10, a range 2-10 or a list 2,5,10, got {value!r}") from None
    if not ks or min(ks) < 2 or max(ks) > 10:
        raise click.BadParameter(f"k must lie in 2..10, got {value!r}")
    return sorted(set(ks))


@main.command("make-tuples")
@click.option(
    "--shards",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Shard directory from build-shards.",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    required=True,
    help="Evaluation protocol.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    required=True,
    help="Split(s) to draw from, e.g. train, test, seen_heard, unseen_unheard (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Output directory (index/, shards/, sizes.json, manifest.json).",
)
@click.option(
    "--k",
    "k_spec",
    default="2",
    callback=_parse_k,
    help="Matching gallery size: 10, a range 2-10 or a list 2,5,10.",
)
@click.option(
    "--direction",
    type=click.Choice(["a2v", "v2a", "both"]),
    default="both",
    help="a2v: voice query, face gallery; v2a: the reverse.",
)
@click.option(
    "--seed", type=int, default=0, help="Seed of every draw; same shards + seed give identical files."
)
@click.option(
    "--negatives-per-positive",
    type=click.IntRange(min=1),
    default=15,
    help="Matching k=2: tuples (one negative each) per positive pair.",
)
@click.option(
    "--positives-per-identity",
    type=click.IntRange(min=1),
    default=1,
    help="Matching k=2: (query, positive) pairs per identity (the paper: 1).",
)
@click.option(
    "--sets-per-identity", type=click.IntRange(min=1), default=50, help="Matching k>2: tuples per identity."
)
@click.option(
    "--pairs-per-identity",
    type=click.IntRange(min=1),
    default=10,
    help="Verification: positive pairs per identity (as many negatives).",
)
@click.option(
    "--pairs",
    type=click.IntRange(min=2),
    default=None,
    help="Verification: this many pairs in all (even; half positive), spread over the split's identities "
    "as evenly as they allow, instead of --pairs-per-identity. Learnable PINs' training set: "
    "--split train --pairs 423004.",
)
@click.option(
    "--constrain",
    default="",
    help="Negatives share these attributes with the query: gender, nationality or gender,nationality.",
)
@click.option(
    "--positive-source",
    type=click.Choice(["any", "other-video"]),
    default="any",
    help="any: the positive (verification: the same-identity pair) from any of the identity's items, "
    "as the paper drew them; other-video: never from the query's source video, so a model cannot match "
    "the pair by the recording they share (identities with one video are skipped and counted).",
)
@click.option(
    "--negative-source",
    type=click.Choice(["any", "other-video"]),
    default="any",
    help="other-video: no negative from the query's source video either (a video can show two people).",
)
@click.option(
    "--tuple-shards/--no-tuple-shards",
    default=None,
    help="Also write tuple shards carrying every member's arrays [default: on for split train].",
)
@click.option("--tuples-per-shard", type=click.IntRange(min=1), default=500, help="Tuples per tuple shard.")
@click.option(
    "--strict/--no-strict",
    default=False,
    help="Fail when a list comes out empty (e.g. k=10 on a split of 8 identities); otherwise warn.",
)
@user_errors
def make_tuples_cmd(
    shards,
    task,
    splits,
    out,
    k_spec,
    direction,
    seed,
    negatives_per_positive,
    positives_per_identity,
    sets_per_identity,
    pairs_per_identity,
    pairs,
    constrain,
    positive_source,
    negative_source,
    tuple_shards,
    tuples_per_shard,
    strict,
):
    """Draw fixed tuples from shards, write them, then check every rule (as check-tuples)."""
    from avdata.reader import index_items
    from avdata.tuples import (
        ATTRIBUTES,
        TupleConfig,
        check_out_dir,
        check_tuples,
        make_tuples,
        source_manifest_sha256,
    )

    constraint = tuple(c for c in constrain.split(",") if c)
    bad = [c for c in constraint if c not in ATTRIBUTES]
    if bad:
        fail(f"--constrain: unknown attribute(s) {bad}; choose from {list(ATTRIBUTES)}")
    directions = ["a2v", "v2a"] if direction == "both" else [direction]
    ks = k_spec if task == "matching" else [1]
    if task == "verification":
        directions = ["a2v"]  # a pair is (voice, face) whichever way it is scored
    elif pairs is not None:
        fail("--pairs: a verification option (--task verification)")
    configs = [
        TupleConfig(
            task=task,
            split=sp,
            direction=d,
            k=k,
            seed=seed,
            negatives_per_positive=negatives_per_positive,
            positives_per_identity=positives_per_identity,
            sets_per_identity=sets_per_identity,
            pairs_per_identity=pairs_per_identity,
            pairs=pairs,
            constrain=constraint,
            positive_source=positive_source,
            negative_source=negative_source,
        )
        for sp in splits
        for d in directions
        for k in ks
    ]
    with_shards = all(sp == "train" for sp in splits) if tuple_shards is None else tuple_shards
    check_out_dir(shards, out)  # before the (long) indexing: nothing is written into the shards
    source_manifest_sha256(shards)
    items = index_items(shards)  # read the shards' keys once for drawing and checking
    summary = make_tuples(
        shards,
        out,
        configs,
        tuple_shards=with_shards and task != "retrieval",
        tuples_per_shard=tuples_per_shard,
        items=items,
    )
    empty = {}
    for name, counts in summary.items():
        if "empty" in counts:
            empty[name] = counts.pop("empty")
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for name, reason in empty.items():
        click.echo(f"warning: {name} is empty: {reason}", err=True)
    problems = check_tuples(out, shards, items=items)
    if problems:
        for p in problems:
            click.echo(p, err=True)
        fail(f"{out}: {len(problems)} tuple check(s) failed")
    if empty and strict:
        fail(
            f"{out}: {len(empty)} empty list(s) (--strict), e.g. {next(iter(empty))}: {next(iter(empty.values()))}"
        )
    click.echo(
        f"{out}: all tuple checks passed"
        + (f" ({len(empty)} empty list(s), see the warnings)" if empty else "")
    )


@main.command("check-tuples")
@click.argument("dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--shards",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="The shard directory the tuples were drawn from.",
)
@user_errors
def check_tuples_cmd(dir, shards):
    """Check every tuple list and tuple shard in DIR against its shards; exit 1 naming each broken rule.

    Also checks that DIR is safe to train on: sizes.json names only the manifest's shards
    (plain paths inside DIR, with their counts), and every tuple shard's members are plain
    files with safe names and no pickles.
    """
    from avdata.tuples import check_tuples

    problems = check_tuples(dir, shards)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        fail(f"{dir}: {len(problems)} tuple check(s) failed")
    click.echo(f"{dir}: all tuple checks passed")


@main.command("cache")
@click.option(
    "--shards",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Item shard directory (avdata build-shards) to decode.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="The item store to write (audio.npy, face.npy, items.jsonl, manifest.json).",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Only the items of this split (repeatable) [default: every split].",
)
@user_errors
def cache_cmd(shards, out, splits):
    """Decode every item of SHARDS once into a store that avtrain fit --items memory-maps.

    Spectrograms (float32) and faces (uint8 pixels) exactly as training decodes them from the
    shards, so the batches are the same; a batch is then row copies instead of JPEG decodes.
    fit refuses a store built from other shards than its tuples were drawn from.
    """
    from avdata.items import build_item_store

    counts = build_item_store(shards, out, list(splits) or None)
    click.echo(f"{out}: " + ", ".join(f"{m}={n}" for m, n in counts.items()) + " items decoded")


@main.command("import-veriflist")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--shards",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Shard directory to map the list onto.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Tuple directory to add the mapped list to.",
)
@user_errors
def import_veriflist_cmd(file, shards, out):
    """Map an official Learnable-PINs verification list (veriflist_*.txt) onto shard keys."""
    from avdata.tuples import import_veriflist

    res = import_veriflist(file, shards, out)
    click.echo(f"{file}: mapped {res['mapped']} of {res['pairs']} pairs -> {res['index']}")
    for reason, n in res["unmapped"].items():
        click.echo(f"  unmapped {n}: {reason}")


@main.group("manifest")
def manifest_group():
    """Manifests of shards, tuples, runs and splits.

    Describe outputs by hashes, counts and settings, and re-check them anywhere
    (docs/reproducibility.md).
    """


EXIT_EQUIVALENT = 3  # manifest verify: not byte-identical, content within tolerance


def _report_diff(lines: list[str], what: str, against: str) -> None:
    """Print diff lines; exit 1 (one-line error, "different") if any is more than a warning or
    an equivalence, exit 3 when shards differ only within the content tolerance (equivalent)."""
    from avdata.manifest import EQUIVALENT, WARNING, equivalence_summary, has_failures

    summary = equivalence_summary(lines)
    for line in lines:
        if summary is None or line != EQUIVALENT + summary:  # the verdict is said last, once
            click.echo(line)
    if has_failures(lines):
        n = sum(1 for l in lines if not (l.startswith(WARNING) or l.startswith(EQUIVALENT)))
        fail(f"{what}: different from {against} ({n} difference line(s) above)")
    if summary:
        click.echo(f"{what}: {summary} to {against}; not byte-identical")
        raise SystemExit(EXIT_EQUIVALENT)
    warn = f" ({len(lines)} warning(s))" if lines else ""
    click.echo(f"{what}: identical to {against}{warn}")


@manifest_group.command("verify")
@click.argument("dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--against",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="Committed manifest to compare with, e.g. manifests/demo/shards-matching.json.",
)
@_RUN_TUPLES_OPTION
@user_errors
def manifest_verify_cmd(dir, against, tuples):
    """Compare DIR with a committed manifest.

    DIR is a shard, tuple or training-run directory; every file its manifest.json lists
    is re-hashed. A shard whose bytes differ is read back and compared by content: the same
    samples, keys, labels and face crop rectangles, arrays within a stated tolerance
    (docs/reproducibility.md). Exit 0: byte-identical (library-version lines are only
    warnings). Exit 3: equivalent, i.e. bytes differ only by float noise (another CPU
    architecture); the last line says in how many samples and by how much. Exit 1: different,
    one line per difference, naming it.
    """
    from avdata.manifest import verify

    try:
        lines = verify(dir, against, tuples=tuples)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        fail(one_line(f"{dir}: cannot verify ({exc})"))
    _report_diff(lines, dir, against)


@manifest_group.command("update")
@click.argument("dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Manifest file to (re)write as canonical JSON, e.g. manifests/demo/shards-matching.json.",
)
@_RUN_TUPLES_OPTION
@user_errors
def manifest_update_cmd(dir, out, tuples):
    """Write DIR's manifest to OUT (intentional changes).

    Prints what changed from the previous OUT; review it (git diff) and commit it.
    Refuses a directory whose files do not match its own manifest.json.
    """
    from avdata.manifest import update

    existed = Path(out).is_file()
    try:
        lines = update(dir, out, tuples=tuples)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        fail(one_line(f"{dir}: cannot describe ({exc})"))
    for line in lines:
        click.echo(line)
    state = (
        f"{len(lines)} change(s) from the previous version" if lines else "unchanged" if existed else "new"
    )
    click.echo(f"{out}: written ({state})")


@manifest_group.command("splits")
@_CORPUS_OPTION
@_META_OPTION
@_PROTOCOL_OPTION
@_PINS_OPTION
@_SPLITS_OPTION
@_LANGUAGES_OPTION
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Manifest file to write, e.g. manifests/voxceleb1/matching.json (hashes and counts only).",
)
@user_errors
def manifest_splits_cmd(corpus, meta, protocol, pins_splits, splits_path, languages, out):
    """Write a protocol's identity-split manifest.

    Input file hashes, the split rule, and per split the identity count and the sha256
    of the sorted VoxCeleb1 id list: hashes and counts only, never the files' contents.
    """
    from avdata.manifest import identity_split_manifest, write_with_diff

    desc = identity_split_manifest(
        meta,
        protocol,
        pins_splits,
        corpus=corpus,
        options=_protocol_options(pins_splits, splits_path, languages),
    )
    lines = write_with_diff(desc, out)
    for line in lines:
        click.echo(line)
    counts = " ".join(f"{k}={v['identities']}" for k, v in desc["splits"].items())
    click.echo(f"{out}: {protocol} {counts}" + (f" ({len(lines)} change(s))" if lines else ""))


@manifest_group.command("verify-splits")
@_CORPUS_OPTION
@_META_OPTION
@_PROTOCOL_OPTION
@_PINS_OPTION
@_SPLITS_OPTION
@_LANGUAGES_OPTION
@click.option(
    "--against",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="Committed identity-split manifest, e.g. manifests/voxceleb1/matching.json.",
)
@user_errors
def manifest_verify_splits_cmd(corpus, meta, protocol, pins_splits, splits_path, languages, against):
    """Check a protocol's identity split against a manifest.

    Recomputes the split from the official files; exit 1 naming what changed.
    """
    from avdata.manifest import verify_splits

    lines = verify_splits(
        meta,
        protocol,
        against,
        pins_splits=pins_splits,
        corpus=corpus,
        options=_protocol_options(pins_splits, splits_path, languages),
    )
    _report_diff(lines, f"{protocol} identity splits", against)


if __name__ == "__main__":
    main()
