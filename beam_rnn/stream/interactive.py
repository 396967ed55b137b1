"""Interactive mode of ``beam-rnn stream``: raw text from stdin, one prediction line per token.

On a terminal, input is read unbuffered (non-canonical, echo kept) so that words are
scored as they are typed, and backspace un-types the pending (not yet scored) word.
"""

import codecs
import dataclasses
import json
import os
import sys
from typing import Any, TextIO

from beam_rnn.core import constants as C
from beam_rnn.stream.classifier import Prediction, StreamingClassifier, StreamState


def _format(classifier: StreamingClassifier, record: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(record, ensure_ascii=False)
    probabilities = record[C.PROBABILITIES_KEY]
    shown = " ".join(f"{name}={p:.3f}" for name, p in probabilities.items())
    label = record[C.PREDICTED_LABEL_NAME_KEY]
    if record.get("final"):
        return f"{'final':>6}  {'(' + str(record['tokens_seen']) + ' tokens)':<24} {shown}  label={label}"
    if record.get("decision"):
        return f"{'decide':>6}  {'at token ' + str(record['position']):<24} {shown}  label={label}"
    return f"{record['tokens_seen']:>6}  {str(record['token'])[:24]:<24} {shown}  label={label}"


class _Terminal:
    """Non-canonical input on a TTY (echo kept) so words are scored as they are typed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = None

    def __enter__(self) -> "_Terminal":
        try:
            import termios

            if os.isatty(self.fd):
                self.saved = termios.tcgetattr(self.fd)
                mode = termios.tcgetattr(self.fd)
                mode[3] &= ~termios.ICANON
                mode[6][termios.VMIN] = 1
                mode[6][termios.VTIME] = 0
                termios.tcsetattr(self.fd, termios.TCSANOW, mode)
        except (ImportError, OSError):
            self.saved = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)


def interactive(
    classifier: StreamingClassifier,
    *,
    stdin_fd: int | None = None,
    out: TextIO | None = None,
    per_line: bool = False,
    as_json: bool = False,
    decide_at: float | None = None,
    min_tokens: int = 1,
) -> dict[str, int]:
    """Reads raw text from stdin as it arrives; prints one line per token and a final line per text
    (and, with `decide_at`, one decision line per text when the policy fires)."""
    out = out or sys.stdout
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    state = classifier.start()
    totals = {"texts": 0, "tokens": 0}

    def emit(predictions: list[Prediction], state: StreamState) -> StreamState:
        for p in predictions:
            out.write(_format(classifier, p.to_dict(), as_json) + "\n")
            if decide_at is not None:  # the decision line right after the token it fires on
                fired, state = classifier.decide(state, [p], decide_at, min_tokens)
                if fired is not None:
                    record = {"decision": True, "position": fired.tokens_seen, **fired.to_dict()}
                    out.write(_format(classifier, record, as_json) + "\n")
        totals["tokens"] += len(predictions)
        if predictions:
            out.flush()
        return state

    def close(state: StreamState) -> StreamState:
        predictions, state = classifier.finish(state)
        state = emit(predictions, state)
        out.write(_format(classifier, {"final": True, **classifier.current(state)}, as_json) + "\n")
        out.flush()
        totals["texts"] += 1
        return classifier.start()

    with _Terminal(fd) as terminal:
        while True:
            data = os.read(fd, 65536)
            text = decoder.decode(data, final=not data)
            if terminal.saved is not None and text:
                # Backspace on a raw terminal: un-type the pending (not yet scored) word.
                kept = []
                for ch in text:
                    if ch in "\x7f\x08":
                        if kept:
                            kept.pop()
                        elif state.tokenizer.word and not state.tokenizer.held:
                            tok = dataclasses.replace(state.tokenizer, word=state.tokenizer.word[:-1])
                            state = dataclasses.replace(state, tokenizer=tok)
                    else:
                        kept.append(ch)
                text = "".join(kept)
            if per_line:
                *lines, rest = text.split("\n")
                for line in lines:
                    predictions, state = classifier.feed(state, line)
                    state = emit(predictions, state)
                    state = close(state)
                text = rest
            if text:
                predictions, state = classifier.feed(state, text)
                state = emit(predictions, state)
            if not data:
                break
    if not per_line or state.tokens_seen or state.tokenizer.word or state.tokenizer.held:
        close(state)
    return totals
