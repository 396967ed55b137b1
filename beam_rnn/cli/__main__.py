"""`python -m beam_rnn.cli` is the `beam-rnn` console script."""

from beam_rnn.cli import main

main()
