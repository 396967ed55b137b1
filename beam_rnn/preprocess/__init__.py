"""beam_rnn.preprocess: see docs/ARCHITECTURE.md."""
