"""Weights files of the frozen encoders whose weights are not in a package: download, read, check.

One owner for what every such encoder (facenet_vggface2, ecapa) does with its weights file:

* :func:`given_or_fetched`: the file the user gave, or (only when allowed) :func:`fetch_weights`'s;
* :func:`fetch_weights` downloads the authors' file into :func:`cache_dir` only when the user
  allows it, under a temp name, kept only if its sha256 is the pinned one;
* :func:`read_state_dict` reads a file given by path as untrusted input: a size cap, then
  safetensors or ``torch.load(weights_only=True)`` (never unpickling objects), a zip file only
  after :func:`avtrain.run.checkpoint.check_archive` has bounded what its records unpack to;
* :func:`check_state_dict` holds the tensors against the network: exactly its keys and shapes.

Every failure is one line naming the file (:class:`~avtrain.encoders.base.EncoderError`).
"""

from __future__ import annotations

import os
from pathlib import Path

from avdata.errors import InputError, check_readable_file
from avdata.io import sha256_file
from avtrain.encoders.base import EncoderError

# No frozen encoder's weights file is near this (ecapa's 80 MiB, facenet's ~107 MiB with its
# classifier head); a bigger file is refused before a byte of it is parsed. The same bound as
# what check_archive lets a zip's records unpack to (MAX_CHECKPOINT_BYTES).
MAX_WEIGHTS_BYTES = 256 << 20
# What torch.save wrote before torch 1.6 (and with _use_new_zipfile_serialization=False): not a
# zip but torch's magic number pickled with protocol 2, then the pickled state dict and the raw
# storages. facenet-pytorch's released files are in this format (its packaged MTCNN weights
# start with these bytes). Nothing in it is compressed: a storage can hold at most what the file
# (capped above) has, so it needs no zip check; torch.load(weights_only=True) still refuses any
# pickled object in it.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."


def cache_dir() -> Path:
    """Where :func:`fetch_weights`' callers keep downloaded weights: $XDG_CACHE_HOME (default
    ~/.cache)/avmatch/encoders."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "avmatch" / "encoders"


def fetch_weights(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` (a temp name, renamed once its sha256 equals ``sha256``); a
    file already at ``dest`` with that digest is reused. Wrong digest: one line, nothing kept."""
    from torch.hub import download_url_to_file

    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        try:
            download_url_to_file(url, str(tmp), progress=False)
        except Exception as exc:  # noqa: BLE001 - network errors of every kind: one line
            raise EncoderError(
                f"cannot download {url} ({type(exc).__name__}: {exc}); download it yourself and pass "
                f"--encoder-weights FILE"
            ) from None
        got = sha256_file(tmp)
        if got != sha256:
            raise EncoderError(
                f"{url}: downloaded file has sha256 {got}, expected {sha256}; refusing it (nothing kept)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def given_or_fetched(
    weights: str | Path | None,
    allow_download: bool,
    encoder: str,
    wanted: str,
    url: str,
    dest: Path,
    sha256: str,
) -> Path:
    """The weights file of ``encoder``: ``weights`` as given, else (when the user allows it)
    :func:`fetch_weights` of ``url`` into ``dest``; neither: one line saying what to pass
    (``wanted`` names the file the user should fetch)."""
    if weights is None:
        if not allow_download:
            raise EncoderError(
                f"encoder {encoder} needs its weights: --encoder-weights FILE ({wanted}), "
                f"or --allow-download to fetch and check it"
            )
        weights = fetch_weights(url, dest, sha256)
    return Path(weights)


def _not_weights(path: Path, why: str) -> EncoderError:
    return EncoderError(
        f"{path}: not a weights file: neither a .safetensors file nor a torch state dict that loads "
        f"without pickle ({why})"
    )


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a weights file given by path, read as untrusted input; one line otherwise.

    Refused before parsing: a missing, empty or non-regular file; one over
    :data:`MAX_WEIGHTS_BYTES`; a torch file that is neither a zip whose records unpack to a bounded
    size (:func:`avtrain.run.checkpoint.check_archive`, what torch.save writes) nor torch's
    uncompressed legacy format. Then ``.safetensors`` through safetensors, anything else through
    ``torch.load(weights_only=True)``; the result must be a non-empty mapping of names to tensors."""
    import torch

    from avtrain.run.checkpoint import CheckpointError, UnsafeCheckpointError, check_archive

    path = Path(path)
    try:
        check_readable_file(path)
    except InputError as exc:
        raise EncoderError(str(exc)) from None
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise EncoderError(
            f"{path}: {size / 2**20:.0f} MiB, more than a frozen encoder's weights file holds "
            f"({MAX_WEIGHTS_BYTES >> 20} MiB); refusing it"
        )
    if path.suffix != ".safetensors":
        with open(path, "rb") as f:
            legacy = f.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC
        if not legacy:
            try:
                check_archive(path)
            except UnsafeCheckpointError as exc:  # a zip bomb: its own line names the file and why
                raise EncoderError(str(exc)) from None
            except CheckpointError as exc:  # not a zip, or a broken one
                raise _not_weights(path, str(exc).removeprefix(f"{path}: ")) from None
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read untrusted weights is a bad file
        raise _not_weights(path, type(exc).__name__) from None
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise EncoderError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def check_state_dict(
    path: str | Path, state: dict, model, drop_prefixes: tuple[str, ...] = (), what: str = ""
) -> dict:
    """``state`` ready for ``model.load_state_dict(strict=True)``: exactly the model's keys (after
    dropping those under ``drop_prefixes``, e.g. a classifier head the embedding does not use) and
    shapes, floating point where the model's are, cast to the model's dtypes. BatchNorm's
    ``num_batches_tracked`` (unused in eval) may be absent. Otherwise one line naming the file
    and the first bad key: the first missing one in the model's order (else the first one the
    model does not have), with how many are missing / unexpected; with the keys right, the first
    tensor of another shape. ``what`` names the network [default: the model's class name]."""
    what = what or type(model).__name__
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        counts = [f"{len(missing)} missing (first {missing[0]})"] if missing else []
        counts += [f"{len(unexpected)} unexpected (first {unexpected[0]})"] if unexpected else []
        first = f"missing key {missing[0]}" if missing else f"unexpected key {unexpected[0]}"
        raise EncoderError(
            f"{path}: not {what} weights: keys differ from the model's ({', '.join(counts)}): {first}"
        )
    ready = {}
    for key, want in expected.items():
        got = state.get(key)
        if got is None:  # an absent num_batches_tracked
            ready[key] = want.clone()
            continue
        if tuple(got.shape) != tuple(want.shape):
            raise EncoderError(
                f"{path}: not {what} weights: {key} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            )
        if want.is_floating_point() and not got.is_floating_point():
            raise EncoderError(f"{path}: not {what} weights: {key} is {got.dtype}, expected floating point")
        ready[key] = got.to(want.dtype)
    return ready
