"""`python -m avdata` runs the avdata CLI."""

from avdata.cli import main

main(prog_name="avdata")
