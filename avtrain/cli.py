"""avdata command line: thin Click commands that call plain functions."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main():
    """avtrain: train and evaluate AML on avdata shards."""


if __name__ == "__main__":
    main()
