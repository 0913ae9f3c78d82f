"""avtrain command line: thin Click commands over avtrain.train.loop / evaluate / report / serve."""

from __future__ import annotations

import click

from avdata.cli_base import CONTEXT, user_errors
from avdata.tasks import TASKS

# Options shared by several commands: one definition each.
_MODEL_RUN_OPTION = click.option(  # embed, match, score: a run or an export
    "--run",
    required=True,
    type=click.Path(exists=True),
    help="Run directory (checkpoint.pt from avtrain fit) or model directory (avtrain export).",
)
_DEVICE_HELP = "auto, cpu, cuda or cuda:N."
_CHECKPOINT_OPTION = click.option(
    "--checkpoint",
    default="last",
    help="Which weights of a run directory: last (RUN/checkpoint.pt), best (RUN/best.pt, kept by "
    "fit --val-shards) or a path.",
)
_MEDIA_DEVICE_OPTION = click.option("--device", default="cpu", help=_DEVICE_HELP)  # embed, match, score
_BATCH_SIZE_OPTION = click.option(
    "--batch-size", type=click.IntRange(min=1), default=64, help="Items per forward pass."
)
_BOOTSTRAP_OPTION = click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=1),
    default=1000,
    help="Bootstrap resamples for the 95% CIs.",
)
_PROGRESS_OPTION = click.option("--progress/--no-progress", default=True, help="Show a progress bar.")


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="avmatch")
def main():
    """avtrain: train and evaluate AML on avdata shards."""


def _pin_kernels() -> None:
    """fit --deterministic: pin the CPU kernels before torch loads (the command line loads it
    only later; a caller that imported torch first gets fit's one-line refusal)."""
    from avdata.kernels import pin_kernels

    pin_kernels()


@main.command("fit")
@click.option(
    "--shards",
    "tuples_dir",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Tuple directory from avdata make-tuples: the training list is read from its manifest.json.",
)
@click.option(
    "--items",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="The items of the tuples, read by key: a decoded item store (avdata cache; fastest) or the item "
    "shards make-tuples drew from [default: the tuple directory's tuple shards].",
)
@click.option(
    "--features",
    "features",
    type=click.Path(file_okay=False, exists=True),
    multiple=True,
    help="A feature store (avtrain features) of a frozen encoder's modality, one per model.voice_encoder / model.face_encoder that is not aml (repeatable) [default: ITEM_SHARDS/features/ENCODER].",
)
@click.option(
    "--tuple-shards",
    is_flag=True,
    default=None,
    help="Stream the tuple directory's tuple shards in order (e.g. from object storage) instead of "
    "reading tuples by index; batches are less mixed [config: off].",
)
@click.option(
    "--method",
    default=None,
    help="Method to train, a name of avtrain.methods.METHODS (docs/methods.md) [config: aml].",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default=None,
    help="Task [config: matching].",
)
@click.option(
    "--k", type=click.IntRange(2, 10), default=None, help="Gallery size of the training tuples [config: 2]."
)
@click.option(
    "--direction",
    type=click.Choice(["a2v", "v2a"]),
    default=None,
    help="a2v: voice query, face gallery [config: a2v].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Run directory (config.yaml, checkpoint.pt, best.pt, log.jsonl, tb/); created only once every setting is checked.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Epochs [config: 50 matching, 20 verification, 100 retrieval]; may grow on --resume.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="YAML file of settings (top level, model:, loss:; see docs/training.md).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any setting, e.g. --set lr_start=1e-3, --set loss.triplet_margin=0.5, "
    "--set model.generator_dropout=0.3 (repeatable).",
)
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [config: auto].")
@click.option("--seed", type=int, default=None, help="Seed for init, data order and dropout [config: 0].")
@click.option(
    "--val-shards",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Item shards (avdata build-shards) of the val lists: turns validation on [default with "
    "--val-tuples: the item shards its manifest links to].",
)
@click.option(
    "--val-tuples",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Tuple directory with the val lists (make-tuples --split val): turns validation on; its item "
    "shards are found through its manifest [default: the --shards directory, with --val-shards].",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=1),
    default=None,
    help="Validate every N epochs (and after the last) [config: 1].",
)
@click.option(
    "--select",
    default=None,
    help="Validation metric that picks best.pt: val_matching_{a2v|v2a}_k{K} or val_verification_auc "
    "[config: auto = matching accuracy for the trained k and direction].",
)
@click.option(
    "--keep-last",
    type=click.IntRange(min=0),
    default=None,
    help="Keep the last N per-epoch checkpoints epoch-NNNN.pt [config: 0].",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N validations without a better --select metric [config: off].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from RUN/checkpoint.pt if it exists (same settings; epochs may grow).",
)
@click.option(
    "--deterministic",
    is_flag=True,
    default=None,
    help="Plain x86-64 CPU kernels (set before torch loads): bit-identical weights on any x86-64 CPU "
    "for the same seed and threads, at a cost in speed (docs/reproducibility.md) [config: off].",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar with tuples/s.")
@user_errors
def fit_cmd(
    tuples_dir,
    items,
    features,
    tuple_shards,
    method,
    task,
    k,
    direction,
    out,
    epochs,
    config_file,
    sets,
    device,
    seed,
    val_shards,
    val_tuples,
    val_every,
    select,
    keep_last,
    patience,
    resume,
    deterministic,
    progress,
):
    """Train a method (AML by default) on a tuple list (also under torchrun for DDP)."""
    if deterministic:
        _pin_kernels()
    from avtrain.run.config import load_config
    from avtrain.train.loop import fit

    cfg = load_config(
        config_file,
        {
            "method": method,
            "task": task,
            "k": k,
            "direction": direction,
            "epochs": epochs,
            "device": device,
            "seed": seed,
            "val_every": val_every,
            "select": select,
            "keep_last": keep_last,
            "patience": patience,
            "deterministic": deterministic,
            "tuple_shards": tuple_shards,
        },
        sets,
    )
    summary = fit(
        cfg,
        tuples_dir,
        out,
        resume=resume,
        progress=progress,
        val_tuples=val_tuples,
        val_shards=val_shards,
        items=items,
        features=features,
    )
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
    click.echo(
        f"{out}: {summary['steps']} steps on {summary['device']}, {summary['tuples_per_s']:.1f} tuples/s; {final}"
    )
    best = summary["best"]
    if best["value"] is not None:
        stop = " (stopped early)" if summary["stopped_early"] else ""
        click.echo(
            f"{out}: best {best['metric']}={best['value']:.4f} at epoch {best['epoch']} -> best.pt{stop}"
        )


@main.command("evaluate")
@click.option(
    "--run",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Run directory (from avtrain fit); embeddings.npz and tb/ scalars are written there.",
)
@_CHECKPOINT_OPTION
@click.option(
    "--shards",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Item shard directory (avdata build-shards) the tuple lists were drawn from [default: the "
    "one the --tuples manifest links to].",
)
@click.option(
    "--tuples",
    "tuples_dir",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Tuple directory (avdata make-tuples); every list in its index/ is evaluated.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="metrics.json path [default: RUN/metrics.json].",
)
@_BATCH_SIZE_OPTION
@click.option("--device", default="auto", help=_DEVICE_HELP)
@_BOOTSTRAP_OPTION
@click.option("--seed", type=int, default=0, help="Seed of the bootstrap and of the embedding samples.")
@click.option(
    "--score",
    type=click.Choice(["l2", "cosine", "head"]),
    default=None,
    help="Scoring rule: l2 = -Euclidean distance, cosine = cosine similarity of the embeddings, head = "
    "the method's learned head (lists it has no head for are reported as not scored) "
    "[default: the method's own, docs/evaluation.md].",
)
@click.option(
    "--features",
    "features",
    type=click.Path(file_okay=False, exists=True),
    multiple=True,
    help="A run on frozen encoder features: a feature store to read instead of the one the run recorded "
    "(same encoder and weights; repeatable, one per frozen modality).",
)
@user_errors
def evaluate_cmd(run, checkpoint, shards, tuples_dir, out, batch_size, device, n_boot, seed, score, features):
    """Score a run on matching, verification and retrieval lists (--score: -L2, cosine or the head)."""
    from avtrain.evaluation.evaluate import evaluate

    evaluate(
        run,
        shards,
        tuples_dir,
        out=out,
        batch_size=batch_size,
        device=device,
        n_boot=n_boot,
        seed=seed,
        echo=click.echo,
        checkpoint=checkpoint,
        score=score,
        features=features,
    )


@main.command("compare")
@click.option(
    "--methods",
    required=True,
    help="Comma-separated methods to train and compare, e.g. aml,pins,svhf,ssnet,dimnet,fop.",
)
@click.option(
    "--shards",
    "tuples_dir",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Tuple directory (avdata make-tuples): its training tuples and the evaluation lists.",
)
@click.option(
    "--items",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Item shard directory (avdata build-shards) the lists were drawn from.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory for runs/METHOD-seedS and compare.{md,json,html}; rerun to go on after a stop.",
)
@click.option("--seeds", type=click.IntRange(min=1), default=1, help="Seeds 0..N-1: mean ± sd over seeds.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="YAML file of settings shared by every run (see docs/training.md).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="[METHOD:]KEY=VALUE",
    help="A setting for every run, or for one method with METHOD: (e.g. --set epochs=14, "
    "--set pins:pins.margin=0.5) (repeatable).",
)
@click.option(
    "--val-shards",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Item shards of the val lists: each run keeps best.pt and is evaluated at it [default with "
    "--val-tuples: those its manifest links to].",
)
@click.option(
    "--val-tuples",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Tuple directory with the val lists (turns validation on) [default: --shards, with --val-shards].",
)
@click.option(
    "--store",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="A decoded item store of --items (avdata cache) to train from (fastest) [default: read --items].",
)
@click.option(
    "--features",
    "features",
    type=click.Path(file_okay=False, exists=True),
    multiple=True,
    help="Feature stores of the runs that freeze a modality (--set model.voice_encoder=..., "
    "fit --features; repeatable).",
)
@_BOOTSTRAP_OPTION
@user_errors
def compare_cmd(
    methods, tuples_dir, items, out, seeds, config_file, sets, val_shards, val_tuples, store, n_boot, features
):
    """Train several methods on the same tuples with the same seeds and tabulate every metric."""
    import shlex
    import sys

    from avtrain.evaluation.compare import compare

    compare(
        [m.strip() for m in methods.split(",") if m.strip()],
        tuples_dir,
        items,
        out,
        seeds=seeds,
        config=config_file,
        sets=list(sets),
        val_tuples=val_tuples,
        val_shards=val_shards,
        n_boot=n_boot,
        echo=click.echo,
        command="avtrain " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        store=store,
        features=features,
    )


@main.command("report")
@click.option(
    "--run",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Run directory (metrics.json, log.jsonl, embeddings.npz).",
)
@click.option(
    "--metrics",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="metrics.json from avtrain evaluate [default: RUN/metrics.json].",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="HTML file [default: RUN/report.html]."
)
@click.option(
    "--compare",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="Another run directory (with metrics.json) for the side-by-side table (repeatable).",
)
@user_errors
def report_cmd(run, metrics, out, compare):
    """Write a self-contained HTML report (tables and embedded plots) of a run."""
    from avtrain.evaluation.report import build_report

    path = build_report(run, metrics=metrics, out=out, compare=compare)
    click.echo(f"wrote {path}")


# --------------------------------------------------------------------------- raw media (avtrain.serve)


@main.command("embed")
@_MODEL_RUN_OPTION
@_CHECKPOINT_OPTION
@click.option(
    "--audio",
    multiple=True,
    type=click.Path(),
    help="Audio file or folder (wav/flac/m4a, walked recursively; repeatable).",
)
@click.option(
    "--faces", multiple=True, type=click.Path(), help="Face image or folder (jpg/jpeg/png; repeatable)."
)
@click.option(
    "--videos",
    multiple=True,
    type=click.Path(),
    help="Video file or folder (mp4): its voice and its frames' faces (repeatable).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file: .npz, or .parquet (needs pyarrow).",
)
@_BATCH_SIZE_OPTION
@_MEDIA_DEVICE_OPTION
@_PROGRESS_OPTION
@user_errors
def embed_cmd(run, checkpoint, audio, faces, videos, out, batch_size, device, progress):
    """Embed raw voices and faces (build-shards' preprocessing) into the method's embeddings (AML: 128-d) keyed by path.

    Files are embedded a batch at a time; finished batches go to OUT.partial, so a run stopped
    half-way and started again with the same inputs and settings goes on where it stopped.
    """
    from avtrain.serve.embed import check_output_name, embed_to_file
    from avtrain.serve.model import load_model

    check_output_name(out)
    model = load_model(run, device, checkpoint=checkpoint)
    res = embed_to_file(
        model, out, audio, faces, videos, batch_size=batch_size, progress=progress, echo=click.echo
    )
    click.echo(
        f"wrote {out}: {len(res.voice_keys)} voice(s), {len(res.face_keys)} face(s), "
        f"{len(res.rejects)} reject(s)"
    )
    for r in res.rejects:
        click.echo(f"  rejected {r['modality']} {r['path']}: {r['reason']}")


@main.command("match")
@click.argument("gallery", nargs=-1, type=click.Path())
@_MODEL_RUN_OPTION
@_CHECKPOINT_OPTION
@click.option("--voice", type=click.Path(), default=None, help="Query voice; GALLERY are face images.")
@click.option("--face", type=click.Path(), default=None, help="Query face; GALLERY are voices.")
@click.option("--faces", "faces_flag", is_flag=True, help="Marks GALLERY as faces (with --voice; optional).")
@click.option(
    "--voices", "voices_flag", is_flag=True, help="Marks GALLERY as voices (with --face; optional)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
@_MEDIA_DEVICE_OPTION
@user_errors
def match_cmd(gallery, run, checkpoint, voice, face, faces_flag, voices_flag, as_json, device):
    """Rank GALLERY for one query by score = -L2, best first.

    \b
      avtrain match --run RUN --voice clip.wav --faces a.jpg b.jpg ...
      avtrain match --run RUN --face x.jpg --voices a.wav b.wav ...
    """
    import json as json_

    from avtrain.serve.errors import InferenceError
    from avtrain.serve.match import format_ranking, match
    from avtrain.serve.model import load_model

    if (voice is None) == (face is None):
        raise InferenceError(
            "give exactly one query: --voice PATH (faces as GALLERY) or --face PATH (voices)"
        )
    if (voice and voices_flag) or (face and faces_flag):
        raise InferenceError(
            "the gallery is the other modality: --voice goes with --faces, --face with --voices"
        )
    model = load_model(run, device, checkpoint=checkpoint)
    result = match(model, voice or face, "voice" if voice else "face", list(gallery))
    click.echo(json_.dumps(result, indent=1) if as_json else format_ranking(result))


@main.command("score")
@_MODEL_RUN_OPTION
@_CHECKPOINT_OPTION
@click.option(
    "--pairs",
    "pairs_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Pair list: FAME 'ID voice face', VoxCeleb 'LABEL voice face', or Learnable-PINs veriflist CSV.",
)
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder the list's relative paths are resolved in (never left: no '..', absolute paths, URLs "
    "or symlinks leading out of it).",
)
@click.option(
    "--voice-root",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder for the voice paths [default: --root].",
)
@click.option(
    "--face-root",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder for the face paths [default: --root].",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Scores file: 'ID SCORE' per pair in list order; 'nan' where a pair cannot be scored.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "fame", "labelled", "pins-csv"]),
    default="auto",
    help="List format (auto: pins-csv by its header, labelled if every first field is 0/1, fame if "
    "the first fields are unique IDs; a list that fits both or neither is refused).",
)
@click.option(
    "--values",
    type=click.Choice(["auto", "l2", "neg_l2"]),
    default="auto",
    help="What SCORE holds: l2 = L2 distance (lower = same person; FAME's), neg_l2 = -L2 (higher = "
    "same person; avtrain's). auto: l2 for FAME lists, neg_l2 otherwise.",
)
@click.option(
    "--rejects",
    "rejects_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Rejected pairs with reasons, JSONL [default: OUT.rejects.jsonl].",
)
@_BATCH_SIZE_OPTION
@_BOOTSTRAP_OPTION
@click.option("--seed", type=int, default=0, help="Seed of the bootstrap.")
@_MEDIA_DEVICE_OPTION
@_PROGRESS_OPTION
@user_errors
def score_cmd(
    run,
    checkpoint,
    pairs_file,
    root,
    voice_root,
    face_root,
    out,
    fmt,
    values,
    rejects_file,
    batch_size,
    n_boot,
    seed,
    device,
    progress,
):
    """Score a list of (voice, face) pairs from raw files; labelled lists also get AUC and EER with CIs.

    Pairs are scored a batch at a time into OUT.partial (memory stays flat in the list's
    length); OUT is written from it at the end. A run stopped half-way and started again with
    the same list, roots, model and settings goes on where it stopped.
    """
    from avtrain.serve.model import load_model
    from avtrain.serve.score import score_pairs

    model = load_model(run, device, checkpoint=checkpoint)
    score_pairs(
        model,
        pairs_file,
        root,
        out,
        fmt=fmt,
        values=values,
        voice_root=voice_root,
        face_root=face_root,
        rejects_path=rejects_file,
        batch_size=batch_size,
        n_boot=n_boot,
        seed=seed,
        progress=progress,
        echo=click.echo,
    )


@main.command("features")
@click.option(
    "--shards",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Item shard directory (avdata build-shards).",
)
@click.option(
    "--encoder",
    required=True,
    help="Frozen encoder: resemblyzer (voices), dlib or facenet_vggface2 (faces), ecapa (docs/encoders.md).",
)
@click.option(
    "--audio",
    "audio_root",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Voice encoders: the audio root the shards were built from (the source file of each voice item "
    "whose source_modality is audio).",
)
@click.option(
    "--videos",
    "videos_root",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Voice encoders: the video root the shards were built from (the audio track of each voice item's "
    "video); shards built from both take --audio and --videos.",
)
@click.option(
    "--encoder-weights",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Weights file of an encoder whose weights are not in a package (facenet_vggface2, ecapa).",
)
@click.option(
    "--allow-download",
    is_flag=True,
    help="Download the encoder's weights from their authors' URL (checked against a pinned sha256).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Feature store directory [default: SHARDS/features/ENCODER].",
)
@user_errors
def features_cmd(shards, encoder, audio_root, videos_root, encoder_weights, allow_download, out):
    """Embed every item of SHARDS once with a frozen pretrained encoder: a feature store."""
    from avtrain.encoders.store import build_feature_store

    built = build_feature_store(
        shards,
        encoder,
        out=out,
        audio_root=audio_root,
        videos_root=videos_root,
        weights=encoder_weights,
        allow_download=allow_download,
        progress=None,
    )
    c = built.counts
    if built.reused:
        click.echo(f"reused {built.store}: built earlier from the same shards, settings and weights")
    else:
        click.echo(f"wrote {built.store}")
    click.echo(
        f"{c.get('embedded', '?')} of {c.get('items', '?')} items embedded, {c.get('rejected', '?')} rejected"
    )
    if built.leakage:
        click.echo(built.leakage)
    for note in built.notes:
        click.echo(note, err=True)


@main.command("export")
@click.option(
    "--run",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Run directory (checkpoint.pt).",
)
@_CHECKPOINT_OPTION
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Model directory to write (not a run directory: the export would shadow the run).",
)
@user_errors
def export_cmd(run, checkpoint, out):
    """Write OUT/model.safetensors (weights only, no pickle) and OUT/config.json; load_model reads OUT."""
    from avtrain.serve.export import export_model

    meta = export_model(run, out, checkpoint=checkpoint)
    click.echo(
        f"wrote {out}/model.safetensors ({len(meta['aliases'])} shared tensor alias(es)) and {out}/config.json"
    )


@main.command("fame-score")
@_MODEL_RUN_OPTION
@_CHECKPOINT_OPTION
@click.option(
    "--lists",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of FAME's test lists LANG_test.txt ('ID voices/LANG/N.wav faces/LANG/N.jpg').",
)
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder the lists' paths are resolved in (the release's root with voices/ and faces/; never left).",
)
@click.option("--heard", required=True, help="The language the model was trained on, e.g. English.")
@click.option("--unheard", required=True, help="The version's other language, e.g. Urdu.")
@click.option(
    "--mav-version",
    "version",
    required=True,
    help="MAV-Celeb version in the file names: v1 (English/Urdu), v2 (English/Hindi), v3 (English/German).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for sub_score_VERSION_HEARD_heard.txt and ..._unheard.txt (avtrain score's own files, "
    "rejects and resume journal in OUT/scores/).",
)
@click.option(
    "--keys",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder of answer keys LANG_test.txt ('ID LABEL', 1 = same person): print each file's EER.",
)
@_BATCH_SIZE_OPTION
@_MEDIA_DEVICE_OPTION
@_PROGRESS_OPTION
@user_errors
def fame_score_cmd(
    run, checkpoint, lists, root, heard, unheard, version, out, keys, batch_size, device, progress
):
    """Write the FAME challenge's two score files of a model trained on --heard (docs/fame.md).

    The heard list (LISTS/HEARD_test.txt) and the unheard one (LISTS/UNHEARD_test.txt) are scored
    from raw files: 'ID L2' per line (the L2 distance, lower = same person), in the list's order.
    A pair that cannot be scored is named on one line and written with the largest scored distance
    (a non-match), so the file stays a valid submission.
    """
    from avtrain.serve.fame import fame_score
    from avtrain.serve.model import load_model

    model = load_model(run, device, checkpoint=checkpoint)
    fame_score(
        model,
        lists,
        root,
        out,
        heard,
        unheard,
        version,
        keys=keys,
        batch_size=batch_size,
        progress=progress,
        echo=click.echo,
    )


@main.command("fame-summary")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--keys",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of answer keys LANG_test.txt ('ID LABEL', 1 = same person, in the list's order).",
)
@click.option(
    "--lists",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder of the test lists LANG_test.txt: also check each file's IDs against its list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def fame_summary_cmd(paths, keys, lists, as_json):
    """The four EERs of FAME score files and the challenge's overall score, their mean.

    PATHS: the four files sub_score_VERSION_LANG_heard|unheard.txt (two models, each on its heard
    and its unheard list), or folders holding them. Each file must have one line per ID of its
    key, in the key's order.
    """
    import json as json_

    from avtrain.serve.fame import fame_summary, format_fame_summary

    summary = fame_summary(list(paths), keys, lists)
    click.echo(json_.dumps(summary, indent=1) if as_json else format_fame_summary(summary))


if __name__ == "__main__":
    main()
