"""beam_rnn.core: see docs/ARCHITECTURE.md."""
