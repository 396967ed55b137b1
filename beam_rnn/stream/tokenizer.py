"""The streaming side of the tokenisation spec: chunked text -> words -> ids, no TF.

`beam_rnn.core.spec` defines how a complete text becomes ids; this module applies
it to text that arrives in chunks.  A word is emitted once whitespace (or an HTML
tag, which becomes a space) follows it, and a chunk that ends inside a word keeps
the partial word pending.  An unclosed ``<`` is the one place where the graph looks
arbitrarily far ahead: everything after it is held back until a ``>`` arrives (it
was a tag) or the stream ends (it was punctuation).

Bounds (documented divergence):

* ``max_pending_chars`` (default 8192): if the text held after an unclosed ``<``
  grows beyond it, the ``<`` is treated as punctuation and the held text is
  released.  The result differs from the graph only if a ``>`` arrives later
  (the graph would have deleted everything from that ``<`` to the ``>``).  Counted
  in the state (``forced_tag_releases``) and the Beam metric
  ``tag_lookahead_exceeded``.
* ``max_word_chars`` (default 1024, raised to the longest vocabulary word): a
  word longer than this keeps only its first ``max_word_chars + 1`` characters
  (whatever the chunking, so results never depend on chunk boundaries).  With one OOV
  bucket this is exact (a word longer than every vocabulary word is OOV id 1
  whatever follows); with k > 1 buckets the hash of the truncated word may pick
  a different bucket.  Counted in ``truncated_words``.

Both are far beyond anything in the IMDB reviews (tests/test_streaming.py feeds all
25k training reviews in random chunks and compares with the exported graph).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Self

from beam_rnn.core import constants as C
from beam_rnn.core import spec

DEFAULT_MAX_PENDING_CHARS = 8192
DEFAULT_MAX_WORD_CHARS = 1024

# --- Vocabulary ------------------------------------------------------------------------


class Vocabulary:
    """Word -> id with the reserved layout (0 pad, 1..k OOV buckets, words from k + 1)."""

    def __init__(self, words: Sequence[str], num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS) -> None:
        if num_oov_buckets < 1:
            raise ValueError(f"num_oov_buckets must be >= 1, got {num_oov_buckets}")
        self.words = list(words)
        self.num_oov_buckets = int(num_oov_buckets)
        self._index: dict[str, int] = {}
        first = spec.first_word_id(self.num_oov_buckets)
        for i, word in enumerate(self.words):
            self._index.setdefault(word, i + first)  # first occurrence wins, like the table
        self.max_word_chars = max((len(w) for w in self.words), default=0)
        self._oov_cache: dict[str, int] = {}

    @property
    def id_space(self) -> int:
        """Number of ids including padding and OOV buckets."""
        return len(self.words) + self.num_oov_buckets + 1

    def oov_id(self, word: str) -> int:
        """The OOV bucket id (1..k) of a word not in the vocabulary."""
        if self.num_oov_buckets == 1:
            return 1
        cached = self._oov_cache.get(word)
        if cached is None:
            cached = spec.oov_id(word, self.num_oov_buckets)
            if len(self._oov_cache) < 65536:
                self._oov_cache[word] = cached
        return cached

    def id(self, word: str) -> int:
        """Id of one (standardised) word."""
        found = self._index.get(word)
        return found if found is not None else self.oov_id(word)

    @classmethod
    def from_bytes(cls, data: bytes, num_oov_buckets: int) -> Self:
        """Parses ``vocab.txt`` (one word per ``\\n``-terminated line; only ``\\n`` ends a line)."""
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return cls([line.decode("utf-8") for line in lines], num_oov_buckets)


# --- Incremental tokeniser ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenizerState:
    """What an incremental tokeniser remembers between chunks (all small, plain types).

    Attributes:
        held: Raw text from an unclosed ``<`` on (waiting for ``>`` or the end).
        word: The standardised partial word at the end of the text so far.
        truncated_words: Words longer than ``max_word_chars`` (kept truncated).
        forced_tag_releases: Times the held text exceeded ``max_pending_chars``.
    """

    held: str = ""
    word: str = ""
    truncated_words: int = 0
    forced_tag_releases: int = 0

    def to_tuple(self) -> tuple[str, str, int, int]:
        return (self.held, self.word, self.truncated_words, self.forced_tag_releases)

    @classmethod
    def from_tuple(cls, values: Sequence[Any]) -> Self:
        return cls(str(values[0]), str(values[1]), int(values[2]), int(values[3]))


class StreamTokenizer:
    """Chunked text -> completed words, identical to `spec.tokenize` on the concatenation.

    Args:
        max_pending_chars: Bound on the text held after an unclosed ``<``.
        max_word_chars: Bound on a pending word (see the module docstring).
    """

    def __init__(self, max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS, max_word_chars: int = DEFAULT_MAX_WORD_CHARS):
        if max_pending_chars < 1 or max_word_chars < 1:
            raise ValueError("max_pending_chars and max_word_chars must be >= 1")
        self.max_pending_chars = int(max_pending_chars)
        self.max_word_chars = int(max_word_chars)

    def _split_into(self, raw: str, word: str, out: list[str]) -> str:
        """Standardises resolved raw text (no tags in it), appends completed words; returns the partial word."""
        if not raw:
            return word
        parts = spec.WHITESPACE_RE.split(spec.PUNCT_RE.sub("", spec.lower_ascii(raw)))
        if len(parts) == 1:
            return self._bounded(word + parts[0])
        first = word + parts[0]
        if first:
            out.append(self._bounded(first))
        out.extend(self._bounded(p) for p in parts[1:-1] if p)
        return self._bounded(parts[-1])

    def _bounded(self, word: str) -> str:
        # Keep max_word_chars + 1 chars: still longer than every vocabulary word, so still OOV.
        return word if len(word) <= self.max_word_chars else word[: self.max_word_chars + 1]

    def _state(self, state: TokenizerState, out: list[str], held: str, word: str, forced: int) -> TokenizerState:
        truncated = state.truncated_words + sum(1 for w in out if len(w) > self.max_word_chars)
        return TokenizerState(held, word, truncated, forced)

    def feed(self, state: TokenizerState, chunk: str) -> tuple[list[str], TokenizerState]:
        """Adds a chunk; returns the words it completed and the new state."""
        if not chunk:
            return [], state
        buf = state.held + chunk
        out: list[str] = []
        word = state.word
        forced = state.forced_tag_releases
        held = ""
        pos = 0
        while True:
            lt = buf.find("<", pos)
            if lt < 0:
                word = self._split_into(buf[pos:], word, out)
                break
            gt = buf.find(">", lt + 1)
            if gt < 0:
                word = self._split_into(buf[pos:lt], word, out)
                held = buf[lt:]
                if len(held) > self.max_pending_chars:
                    # Give up waiting: this '<' is punctuation (graph-identical unless a '>' comes later).
                    forced += 1
                    word = self._split_into(held, word, out)
                    held = ""
                break
            word = self._split_into(buf[pos:lt], word, out)
            if word:  # a tag is a space: it completes the pending word
                out.append(word)
                word = ""
            pos = gt + 1
        return out, self._state(state, out, held, word, forced)

    def finish(self, state: TokenizerState) -> tuple[list[str], TokenizerState]:
        """End of stream: an unclosed ``<`` was punctuation; the pending word is complete."""
        out: list[str] = []
        word = self._split_into(state.held, state.word, out)
        if word:
            out.append(word)
        return out, self._state(state, out, "", "", state.forced_tag_releases)
