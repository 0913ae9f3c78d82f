"""avtrain command line: thin Click commands over avtrain.train / avtrain.evaluate."""

from __future__ import annotations

import click

from avdata.errors import InputError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="avmatch")
def main():
    """avtrain: train and evaluate AML on avdata shards."""


@main.command("fit")
@click.option("--shards", "tuples_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="Tuple directory from avdata make-tuples (its shards/ and sizes.json).")
@click.option("--task", type=click.Choice(["matching", "verification", "retrieval"]), default=None, help="Task [config: matching].")
@click.option("--k", type=click.IntRange(2, 10), default=None, help="Gallery size of the training tuples [config: 2].")
@click.option("--direction", type=click.Choice(["a2v", "v2a"]), default=None, help="a2v: voice query, face gallery [config: a2v].")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory (config.yaml, checkpoint.pt, log.jsonl, tb/).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [config: 50 matching, 20 verification, 100 retrieval].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None, help="YAML file of TrainConfig settings.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any TrainConfig setting, e.g. --set adversarial=false (repeatable).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [config: auto].")
@click.option("--seed", type=int, default=None, help="Seed for init, data order and dropout [config: 0].")
@click.option("--resume", is_flag=True, help="Continue from RUN/checkpoint.pt if it exists.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar with tuples/s.")
def fit_cmd(tuples_dir, task, k, direction, out, epochs, config_file, sets, device, seed, resume, progress):
    """Train AML on tuple shards (also under torchrun for DDP)."""
    from avtrain.config import load_config
    from avtrain.train import fit

    try:
        cfg = load_config(config_file, {"task": task, "k": k, "direction": direction, "epochs": epochs,
                                        "device": device, "seed": seed}, sets)
        summary = fit(cfg, tuples_dir, out, resume=resume, progress=progress)
    except (InputError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc))
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
    click.echo(f"{out}: {summary['steps']} steps on {summary['device']}, {summary['tuples_per_s']:.1f} tuples/s; {final}")


if __name__ == "__main__":
    main()
