"""`python -m mclstudio ...` (and `torchrun -m mclstudio train ...`)."""

from mclstudio.cli.main import main

main()
