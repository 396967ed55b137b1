"""beam_rnn.serve: see docs/ARCHITECTURE.md."""
