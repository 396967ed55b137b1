"""beam_rnn.train: see docs/ARCHITECTURE.md."""
