"""avdata command line: thin Click commands that call plain functions in avdata.*."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from avdata.errors import InputError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def fail(msg: str):
    """One-line error, no traceback."""
    raise click.ClickException(msg)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="avmatch")
def main():
    """avdata: build reproducible face-voice datasets from raw media."""


@main.command("splits")
@click.option("--meta", type=click.Path(dir_okay=False), required=True, help="VoxCeleb1 meta file (vox1_meta.csv, tab separated).")
@click.option("--protocol", type=click.Choice(["matching", "pins"]), required=True,
              help="matching: A-B val, C-E test, F-Z train by first letter; pins: Learnable-PINs sets.")
@click.option("--pins-splits", type=click.Path(dir_okay=False), default=None, help="Learnable-PINs identity_splits.txt (needed for --protocol pins).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output CSV: name,vox_id,split.")
def splits_cmd(meta, protocol, pins_splits, out):
    """Write the identity split of a protocol as name,vox_id,split."""
    from avdata.splits import identity_splits, read_meta, split_counts

    try:
        df = identity_splits(read_meta(meta), protocol, pins_splits)
    except (InputError, ValueError) as exc:
        fail(str(exc))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    for name, reason in df.attrs["unplaced"]:
        click.echo(f"unplaced: {name}: {reason}", err=True)
    counts = split_counts(df)
    click.echo(f"{out}: {len(df)} identities " + " ".join(f"{k}={v}" for k, v in counts.items()))
    if protocol == "pins":
        click.echo("seen_heard media are carved from train identities per source video when shards are built")


if __name__ == "__main__":
    main()
