"""beam_rnn.stream: see docs/ARCHITECTURE.md."""
