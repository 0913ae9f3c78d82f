"""`python -m avtrain ...` and `torchrun -m avtrain fit ...`."""

from avtrain.cli import main

main()
