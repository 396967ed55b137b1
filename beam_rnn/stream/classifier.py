"""Per-token predictions of the streaming (unidirectional) classifier.

Two layers:

* `StreamingClassifier`: pure Python + NumPy (no TensorFlow anywhere, so no TF in
  the hot loop).  It loads an exported streaming model directory
  (``step_weights.npz``, ``vocab.txt``, ``preprocess_config.json``,
  ``model_card.json``), tokenises text incrementally exactly like the TFT
  transform graph, and advances the recurrent state one token at a time
  (`beam_rnn.stream.step`).  After the last token its prediction equals the exported
  ``serving_default`` signature on the same text (to float32 rounding, <= 1e-5).
* `StreamPredictions`: a Beam PTransform that turns events
  ``{stream_id, seq, text | token, end}`` into one prediction per token, with a
  stateful DoFn keyed by stream id (at-least-once and out-of-order delivery,
  idle-stream expiry, dead letters).

Tokenisation mirror
-------------------
`beam_rnn.preprocess.tft_graph.tokenize` (the one definition) does, on UTF-8 bytes:

1. ``tf.strings.lower``: ASCII ``A-Z`` only (``str.lower`` would also lower-case
   ``É``, ``Σ``..., so it is NOT used here).
2. ``regex_replace(<[^>]*>, " ")`` (RE2, leftmost, global; ``[^>]`` also matches
   newlines).  A ``<`` with no ``>`` anywhere after it is not a tag; it is then
   removed by step 3 like any punctuation.
3. ``regex_replace(PUNCTUATION_REGEX, "")``: ASCII punctuation removed.
4. ``tf.strings.split`` with no separator.  Measured on TF 2.21 over U+0000..U+007F
   plus every Unicode space (U+0085, U+00A0, U+1680, U+2000..U+200B, U+2028,
   U+2029, U+202F, U+205F, U+3000, U+FEFF): it splits on exactly
   ``" \\t\\n\\v\\f\\r"`` (``absl::ascii_isspace``).  Python's ``str.split()``
   also splits on U+001C..U+001F, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028,
   U+2029, U+202F, U+205F and U+3000, so it is NOT used here.
5. optional truncation to ``max_tokens``; ids: 0 = padding, 1..k = OOV buckets
   (``Fingerprint64(word) % k + 1``, the hash TFT's StaticVocabularyTable uses via
   ``tf.strings.to_hash_bucket_fast``; ported below), words from k + 1.

Streaming: text arrives in chunks; a word is emitted once whitespace (or an HTML
tag, which becomes a space) follows it, and a chunk that ends inside a word
keeps the partial word pending.  An unclosed ``<`` is the one place where the
graph looks arbitrarily far ahead: everything after it is held back until a
``>`` arrives (it was a tag) or the stream ends (it was punctuation).

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

Both are far beyond anything in the IMDB reviews (the test feeds all 25k training
reviews in random chunks and compares with the exported ``tokenize`` signature).
"""

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.stream import step as rnn_step
from beam_rnn.core.manifest import ArtifactError, verify_manifest

# --- The tokenisation definition, mirrored -------------------------------------
# Same patterns as beam_rnn.preprocess.tft_graph (which imports TF / TFT; this module must
# not).  tests/test_streaming.py checks they are identical.
PUNCTUATION_REGEX = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
HTML_TAG_REGEX = r"<[^>]*>"
# What tf.strings.split(sep=None) splits on (absl::ascii_isspace), measured.
TF_WHITESPACE = " \t\n\x0b\x0c\r"

_LOWER_ASCII = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TAG_RE = re.compile(HTML_TAG_REGEX)
_PUNCT_RE = re.compile(PUNCTUATION_REGEX)
_WS_RE = re.compile("[" + re.escape(TF_WHITESPACE) + "]+")

DEFAULT_MAX_PENDING_CHARS = 8192
DEFAULT_MAX_WORD_CHARS = 1024

VOCAB_TEXT_FILE = "vocab.txt"  # = beam_rnn.train.export.VOCAB_TEXT_FILE (export imports TF)


def standardize(text: str) -> str:
    """`preprocessing.standardize` on a complete text: ASCII lower, tags -> " ", strip punctuation."""
    return _PUNCT_RE.sub("", _TAG_RE.sub(" ", text.translate(_LOWER_ASCII)))


def split_whitespace(text: str) -> list[str]:
    """``tf.strings.split(text)``: split on ASCII whitespace only, drop empty pieces."""
    return [w for w in _WS_RE.split(text) if w]


def tokenize(text: str, max_tokens: int | None = None) -> list[str]:
    """`preprocessing.tokenize` on one complete text (the non-streaming mirror)."""
    words = split_whitespace(standardize(text))
    return words if max_tokens is None else words[:max_tokens]


# --- FarmHash Fingerprint64 (farmhashna::Hash64), for OOV buckets ------------------
# TFT's StaticVocabularyTable hashes OOV words with tf.strings.to_hash_bucket_fast,
# i.e. Fingerprint64(utf8 bytes) % num_oov_buckets.  A pure-Python port of the
# public algorithm; the tests check it against TensorFlow.
_M64 = 0xFFFFFFFFFFFFFFFF
_FK0 = 0xC3A5C85C97CB3127
_FK1 = 0xB492B66FBE98F273
_FK2 = 0x9AE16A3B2F90404F


def _rot(v: int, s: int) -> int:
    return v if s == 0 else ((v >> s) | (v << (64 - s))) & _M64


def _f64(b: bytes, i: int) -> int:
    return int.from_bytes(b[i : i + 8], "little")


def _f32(b: bytes, i: int) -> int:
    return int.from_bytes(b[i : i + 4], "little")


def _smix(v: int) -> int:
    return v ^ (v >> 47)


def _hash_len16(u: int, v: int, mul: int) -> int:
    a = ((u ^ v) * mul) & _M64
    a ^= a >> 47
    b = ((v ^ a) * mul) & _M64
    b ^= b >> 47
    return (b * mul) & _M64


def _weak_hash32(s: bytes, i: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = _f64(s, i), _f64(s, i + 8), _f64(s, i + 16), _f64(s, i + 24)
    a = (a + w) & _M64
    b = _rot((b + a + z) & _M64, 21)
    c = a
    a = (a + x + y) & _M64
    b = (b + _rot(a, 44)) & _M64
    return (a + z) & _M64, (b + c) & _M64


def fingerprint64(data: bytes) -> int:
    """FarmHash Fingerprint64 of `data` (what ``tf.strings.to_hash_bucket_fast`` uses)."""
    s, n = data, len(data)
    if n <= 16:
        if n >= 8:
            mul = (_FK2 + n * 2) & _M64
            a = (_f64(s, 0) + _FK2) & _M64
            b = _f64(s, n - 8)
            c = (_rot(b, 37) * mul + a) & _M64
            d = ((_rot(a, 25) + b) * mul) & _M64
            return _hash_len16(c, d, mul)
        if n >= 4:
            mul = (_FK2 + n * 2) & _M64
            return _hash_len16((n + (_f32(s, 0) << 3)) & _M64, _f32(s, n - 4), mul)
        if n > 0:
            y = s[0] + (s[n >> 1] << 8)
            z = n + (s[n - 1] << 2)
            return (_smix(((y * _FK2) ^ (z * _FK0)) & _M64) * _FK2) & _M64
        return _FK2
    if n <= 32:
        mul = (_FK2 + n * 2) & _M64
        a = (_f64(s, 0) * _FK1) & _M64
        b = _f64(s, 8)
        c = (_f64(s, n - 8) * mul) & _M64
        d = (_f64(s, n - 16) * _FK2) & _M64
        return _hash_len16(
            (_rot((a + b) & _M64, 43) + _rot(c, 30) + d) & _M64, (a + _rot((b + _FK2) & _M64, 18) + c) & _M64, mul
        )
    if n <= 64:
        mul = (_FK2 + n * 2) & _M64
        a = (_f64(s, 0) * _FK2) & _M64
        b = _f64(s, 8)
        c = (_f64(s, n - 8) * mul) & _M64
        d = (_f64(s, n - 16) * _FK2) & _M64
        y = (_rot((a + b) & _M64, 43) + _rot(c, 30) + d) & _M64
        z = _hash_len16(y, (a + _rot((b + _FK2) & _M64, 18) + c) & _M64, mul)
        e = (_f64(s, 16) * mul) & _M64
        f = _f64(s, 24)
        g = ((y + _f64(s, n - 32)) * mul) & _M64
        h = ((z + _f64(s, n - 24)) * mul) & _M64
        return _hash_len16(
            (_rot((e + f) & _M64, 43) + _rot(g, 30) + h) & _M64, (e + _rot((f + a) & _M64, 18) + g) & _M64, mul
        )
    seed = 81
    y = (seed * _FK1 + 113) & _M64
    z = (_smix((y * _FK2 + 113) & _M64) * _FK2) & _M64
    va = vb = wa = wb = 0
    x = (seed * _FK2 + _f64(s, 0)) & _M64
    end = ((n - 1) // 64) * 64
    i = 0
    while True:
        x = (_rot((x + y + va + _f64(s, i + 8)) & _M64, 37) * _FK1) & _M64
        y = (_rot((y + vb + _f64(s, i + 48)) & _M64, 42) * _FK1) & _M64
        x ^= wb
        y = (y + va + _f64(s, i + 40)) & _M64
        z = (_rot((z + wa) & _M64, 33) * _FK1) & _M64
        va, vb = _weak_hash32(s, i, (vb * _FK1) & _M64, (x + wa) & _M64)
        wa, wb = _weak_hash32(s, i + 32, (z + wb) & _M64, (y + _f64(s, i + 16)) & _M64)
        z, x = x, z
        i += 64
        if i == end:
            break
    mul = (_FK1 + ((z & 0xFF) << 1)) & _M64
    i = n - 64
    wa = (wa + ((n - 1) & 63)) & _M64
    va = (va + wa) & _M64
    wa = (wa + va) & _M64
    x = (_rot((x + y + va + _f64(s, i + 8)) & _M64, 37) * mul) & _M64
    y = (_rot((y + vb + _f64(s, i + 48)) & _M64, 42) * mul) & _M64
    x ^= (wb * 9) & _M64
    y = (y + va * 9 + _f64(s, i + 40)) & _M64
    z = (_rot((z + wa) & _M64, 33) * mul) & _M64
    va, vb = _weak_hash32(s, i, (vb * mul) & _M64, (x + wa) & _M64)
    wa, wb = _weak_hash32(s, i + 32, (z + wb) & _M64, (y + _f64(s, i + 16)) & _M64)
    z, x = x, z
    return _hash_len16(
        (_hash_len16(va, wa, mul) + _smix(y) * _FK0 + z) & _M64, (_hash_len16(vb, wb, mul) + x) & _M64, mul
    )


# --- Vocabulary ------------------------------------------------------------------------


class Vocabulary:
    """Word -> id with the reserved layout (0 pad, 1..k OOV buckets, words from k + 1)."""

    def __init__(self, words: Sequence[str], num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS) -> None:
        if num_oov_buckets < 1:
            raise ValueError(f"num_oov_buckets must be >= 1, got {num_oov_buckets}")
        self.words = list(words)
        self.num_oov_buckets = int(num_oov_buckets)
        self._index: dict[str, int] = {}
        for i, word in enumerate(self.words):
            self._index.setdefault(word, i + self.num_oov_buckets + 1)  # first occurrence wins, like the table
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
            # surrogatepass: a lone surrogate (possible in JSON input) cannot reach TF at all;
            # hashing its CESU-like bytes at least keeps this function total.
            cached = fingerprint64(word.encode("utf-8", "surrogatepass")) % self.num_oov_buckets + 1
            if len(self._oov_cache) < 65536:
                self._oov_cache[word] = cached
        return cached

    def id(self, word: str) -> int:
        """Id of one (standardised) word."""
        found = self._index.get(word)
        return found if found is not None else self.oov_id(word)

    @classmethod
    def read(cls, path: str, num_oov_buckets: int) -> Self:
        """Reads ``vocab.txt`` (one word per ``\\n``-terminated line; only ``\\n`` ends a line)."""
        data = _read_bytes(path)
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
    """Chunked text -> completed words, identical to `tokenize` on the concatenation.

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
        parts = _WS_RE.split(_PUNCT_RE.sub("", raw.translate(_LOWER_ASCII)))
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


# --- Predictions and stream state ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The classifier's output after one more token.

    Attributes:
        token: The (standardised) word, or None when stepped by id.
        token_id: Its id.
        probability: P(label 1) for binary models, the class distribution (list) otherwise.
        label: Predicted label id.
        tokens_seen: Tokens consumed by the stream so far (this one included).
    """

    token: str | None
    token_id: int
    probability: float | list[float]
    label: int
    tokens_seen: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamState:
    """One stream's state: recurrent state, tokenizer state, counters, last logits.

    Immutable: every method of `StreamingClassifier` returns a new one.
    """

    rnn: tuple[np.ndarray, ...]
    logits: np.ndarray
    tokenizer: TokenizerState = TokenizerState()
    tokens_seen: int = 0
    tokens_dropped: int = 0  # beyond max_tokens (the graph drops them too)

    def to_record(self) -> dict[str, Any]:
        """Plain-type form for Beam state (float32 bytes for the arrays)."""
        return {
            "rnn": np.concatenate(self.rnn).astype(np.float32).tobytes(),
            "logits": np.asarray(self.logits, np.float32).tobytes(),
            "tok": self.tokenizer.to_tuple(),
            "seen": self.tokens_seen,
            "dropped": self.tokens_dropped,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], num_arrays: int) -> Self:
        flat = np.frombuffer(record["rnn"], dtype=np.float32)
        return cls(
            rnn=tuple(np.split(flat, num_arrays)),
            logits=np.frombuffer(record["logits"], dtype=np.float32),
            tokenizer=TokenizerState.from_tuple(record["tok"]),
            tokens_seen=int(record["seen"]),
            tokens_dropped=int(record["dropped"]),
        )


class ModelDirError(ArtifactError):
    """The model directory is missing, incomplete, damaged or not a streaming model (one line).

    A `beam_rnn.core.manifest.ArtifactError` (so a ValueError): callers may catch either.
    """


# What `StreamingClassifier.load` reads; checked against the directory's manifest first.
MODEL_FILES = (C.STEP_WEIGHTS_FILE, VOCAB_TEXT_FILE, C.PREPROCESS_CONFIG_FILE)


def _one_line(error: BaseException | str) -> str:
    """An error message on one line (messages from zipfile / NumPy may hold newlines)."""
    return " ".join(str(error).split())


def _is_remote(path: str) -> bool:
    return "://" in path


def _read_bytes(path: str) -> bytes:
    if _is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _exists(path: str) -> bool:
    if _is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.exists(path)


class StreamingClassifier:
    """The exported streaming classifier, one token at a time, in NumPy.

    Build with `StreamingClassifier.load(model_dir)`.  All methods are pure: they
    take a `StreamState` and return a new one.

    Attributes:
        weights: The `rnn_step.StepWeights`.
        vocabulary: The `Vocabulary` (ids exactly as the TFT transform).
        max_tokens: The preprocessing's truncation (None: keep every token).
        num_classes: 2 (binary) or K.
        label_names: Names of label ids when the model card has them.
    """

    def __init__(
        self,
        weights: rnn_step.StepWeights,
        vocabulary: Vocabulary,
        *,
        max_tokens: int | None = None,
        label_names: Sequence[str] | None = None,
        max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS,
        max_word_chars: int = DEFAULT_MAX_WORD_CHARS,
        model_dir: str | None = None,
    ) -> None:
        if vocabulary.id_space != weights.vocab_size:
            raise ModelDirError(
                f"The vocabulary gives {vocabulary.id_space} ids ({len(vocabulary.words)} words + "
                f"{vocabulary.num_oov_buckets} OOV + padding) but the step weights have {weights.vocab_size} rows."
            )
        self.weights = weights
        self.vocabulary = vocabulary
        self.max_tokens = max_tokens
        self.num_classes = weights.num_classes
        self.label_names = list(label_names) if label_names else None
        self.model_dir = model_dir
        self.tokenizer = StreamTokenizer(max_pending_chars, max(max_word_chars, vocabulary.max_word_chars))
        self.num_state_arrays = weights.num_layers * rnn_step.num_states_per_layer(weights.cell)
        self._zero = tuple(rnn_step.initial_state(weights))
        self._zero_logits = rnn_step.step(weights, 0, list(self._zero))[0]

    # --- loading -------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_dir: str,
        *,
        max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS,
        max_word_chars: int = DEFAULT_MAX_WORD_CHARS,
    ) -> Self:
        """Loads an exported streaming model dir (no TensorFlow needed), verified first.

        The files it reads (`MODEL_FILES`, and ``model_card.json`` when the manifest
        lists it) are checked against the directory's ``manifest.json`` (size and
        sha256) before anything is parsed, so a truncated or altered file is named
        instead of failing somewhere inside NumPy.

        Raises:
            ModelDirError: (an `ArtifactError`) one line naming what is missing,
                damaged or wrong.
        """
        model_dir = os.fspath(model_dir)
        if not _is_remote(model_dir) and not os.path.isdir(model_dir):
            raise ModelDirError(f"Model directory {model_dir} does not exist.")

        def join(name: str) -> str:
            return model_dir.rstrip("/") + "/" + name if _is_remote(model_dir) else os.path.join(model_dir, name)

        card: dict[str, Any] = {}
        card_path = join(C.MODEL_CARD_FILE)
        card_error: str | None = None
        if _exists(card_path):
            try:
                card = json.loads(_read_bytes(card_path).decode("utf-8"))
                if not isinstance(card, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError, OSError) as e:
                card, card_error = {}, f"Unreadable model card {card_path}: {_one_line(e)}"
            # A model of another kind gets its own message (its manifest has no step weights).
            if card.get("kind") not in (None, C.MODEL_LSTM):
                raise ModelDirError(
                    f"{model_dir} holds a {card.get('kind')!r} model; only the streaming {C.MODEL_LSTM!r} "
                    "model can predict token by token."
                )
        if not _exists(join(C.STEP_WEIGHTS_FILE)):
            raise ModelDirError(
                f"No {C.STEP_WEIGHTS_FILE} in {model_dir}: not an exported streaming ({C.MODEL_LSTM!r}) model."
            )
        try:
            verify_manifest(
                model_dir,
                prefixes=[*MODEL_FILES, C.MODEL_CARD_FILE],
                required=MODEL_FILES,
                what="streaming model",
            )
        except ArtifactError as e:
            raise ModelDirError(_one_line(e)) from e
        if card_error is not None:  # listed in the manifest and intact, yet unreadable: a bad export
            raise ModelDirError(card_error)

        def damaged(name: str, e: BaseException) -> ModelDirError:
            return ModelDirError(f"streaming model {model_dir}: {name} is damaged: {_one_line(e)}")

        try:
            weights = rnn_step.StepWeights.from_dict(rnn_step.read_npz(_read_bytes(join(C.STEP_WEIGHTS_FILE))))
        except (ValueError, OSError, MemoryError) as e:
            raise damaged(C.STEP_WEIGHTS_FILE, e) from e
        try:
            config = json.loads(_read_bytes(join(C.PREPROCESS_CONFIG_FILE)).decode("utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
            num_oov_buckets = int(config.get("num_oov_buckets") or 1)
            if num_oov_buckets < 1:
                raise ValueError(f"num_oov_buckets={num_oov_buckets}")
            max_tokens = config.get("max_tokens")
            if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
                raise ValueError(f"max_tokens={max_tokens!r}")
        except (ValueError, TypeError, OSError, UnicodeDecodeError) as e:
            raise damaged(C.PREPROCESS_CONFIG_FILE, e) from e
        try:
            vocabulary = Vocabulary.read(join(VOCAB_TEXT_FILE), num_oov_buckets)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            raise damaged(VOCAB_TEXT_FILE, e) from e
        return cls(
            weights,
            vocabulary,
            max_tokens=max_tokens,
            label_names=card.get("label_names"),
            max_pending_chars=max_pending_chars,
            max_word_chars=max_word_chars,
            model_dir=model_dir,
        )

    # --- helpers --------------------------------------------------------------
    def _probability(self, logits: np.ndarray) -> tuple[float | list[float], int]:
        probs = rnn_step.probabilities(logits, self.num_classes)
        if self.num_classes == 2:
            return float(probs[0]), int(logits[0] > 0.0)
        return [float(p) for p in probs], int(np.argmax(logits))

    def _advance(self, state: StreamState, token: str | None, token_id: int) -> tuple[Prediction, StreamState]:
        logits, rnn = rnn_step.step(self.weights, token_id, state.rnn)
        seen = state.tokens_seen + 1
        probability, label = self._probability(logits)
        new = dataclasses.replace(state, rnn=tuple(rnn), logits=logits, tokens_seen=seen)
        return Prediction(token, int(token_id), probability, label, seen), new

    def _words(self, state: StreamState, words: list[str], tokenizer: TokenizerState) -> tuple[list[Prediction], StreamState]:
        state = dataclasses.replace(state, tokenizer=tokenizer)
        predictions = []
        for word in words:
            if self.max_tokens is not None and state.tokens_seen >= self.max_tokens:
                state = dataclasses.replace(state, tokens_dropped=state.tokens_dropped + 1)
                continue
            prediction, state = self._advance(state, word, self.vocabulary.id(word))
            predictions.append(prediction)
        return predictions, state

    # --- the API -------------------------------------------------------------------
    def start(self) -> StreamState:
        """A new stream (zero recurrent state; its prediction is the empty text's)."""
        return StreamState(rnn=self._zero, logits=self._zero_logits)

    def token_id(self, word: str) -> int:
        """Id of one already-standardised word (vocabulary or OOV bucket)."""
        return self.vocabulary.id(word)

    def step(self, state: StreamState, token: str | int) -> tuple[Prediction, StreamState]:
        """Advances by ONE token: a word (standardised like the graph; must give exactly one token) or an id.

        Low level: `max_tokens` is not applied here (use `feed` for text).
        """
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            token_id = int(token)
            if not 0 < token_id < self.weights.vocab_size:
                raise ValueError(f"Token id {token_id} is outside [1, {self.weights.vocab_size}).")
            return self._advance(state, None, token_id)
        if not isinstance(token, str):
            raise TypeError(f"token must be a word (str) or an id (int), got {type(token).__name__}")
        words = tokenize(token)
        if len(words) != 1:
            raise ValueError(f"step() takes exactly one word; {token!r} gives {len(words)} tokens (use feed()).")
        return self._advance(state, words[0], self.vocabulary.id(words[0]))

    def feed(self, state: StreamState, text_chunk: str) -> tuple[list[Prediction], StreamState]:
        """Adds a chunk of raw text; one prediction per token the chunk COMPLETES.

        A word at the end of the chunk may continue in the next chunk, so it stays
        pending in the state (as does text after an unclosed ``<``).
        """
        words, tokenizer = self.tokenizer.feed(state.tokenizer, text_chunk)
        return self._words(state, words, tokenizer)

    def finish(self, state: StreamState) -> tuple[list[Prediction], StreamState]:
        """End of the stream: flushes the pending word (and held text) as tokens."""
        words, tokenizer = self.tokenizer.finish(state.tokenizer)
        return self._words(state, words, tokenizer)

    def step_many(
        self, states: Sequence[StreamState], tokens: Sequence[str | int]
    ) -> tuple[list[Prediction], list[StreamState]]:
        """Advances many streams by one token each in one batched NumPy step.

        Args:
            states: One state per stream.
            tokens: One token per stream: a standardised word or an id (no standardisation here).

        Returns:
            ``(predictions, new_states)`` in the order of `states`.
        """
        if len(states) != len(tokens):
            raise ValueError(f"{len(states)} states but {len(tokens)} tokens")
        if not states:
            return [], []
        words: list[str | None] = []
        ids = np.empty(len(tokens), dtype=np.int64)
        for i, token in enumerate(tokens):
            if isinstance(token, str):
                words.append(token)
                ids[i] = self.vocabulary.id(token)
            else:
                words.append(None)
                ids[i] = int(token)
        batch = [np.stack([s.rnn[j] for s in states]) for j in range(self.num_state_arrays)]
        logits, new = self.step_batch_arrays(ids, batch)
        probs = rnn_step.probabilities(logits, self.num_classes)
        predictions, new_states = [], []
        for i, state in enumerate(states):
            seen = state.tokens_seen + (1 if ids[i] != 0 else 0)
            if self.num_classes == 2:
                probability: float | list[float] = float(probs[i, 0])
                label = int(logits[i, 0] > 0.0)
            else:
                probability, label = [float(p) for p in probs[i]], int(np.argmax(logits[i]))
            predictions.append(Prediction(words[i], int(ids[i]), probability, label, seen))
            new_states.append(
                dataclasses.replace(state, rnn=tuple(a[i] for a in new), logits=logits[i], tokens_seen=seen)
            )
        return predictions, new_states

    def step_batch_arrays(self, ids: np.ndarray, batch_state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The raw batched step on stacked ``[batch, units]`` arrays (for callers that keep them stacked)."""
        return rnn_step.step_batch(self.weights, np.asarray(ids, dtype=np.int64), batch_state)

    def current(self, state: StreamState) -> dict[str, Any]:
        """The prediction for everything consumed so far: probability, label, tokens_seen."""
        probability, label = self._probability(state.logits)
        return {"probability": probability, "label": label, "tokens_seen": state.tokens_seen}

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a complete text (the non-streaming mirror of the ``tokenize`` signature)."""
        return [self.vocabulary.id(w) for w in tokenize(text, self.max_tokens)]

    def predict_ids(self, ids: Sequence[int]) -> dict[str, Any]:
        """NumPy full pass over a whole id sequence (what a re-run on the prefix costs)."""
        state = list(self._zero)
        logits = self._zero_logits
        for token_id in ids:
            logits, state = rnn_step.step(self.weights, int(token_id), state)
        probability, label = self._probability(logits)
        return {"probability": probability, "label": label}

    def predict_text(self, text: str) -> dict[str, Any]:
        """Full-pass prediction of one complete text (equals ``serving_default`` to float32 rounding)."""
        return self.predict_ids(self.text_ids(text))


# ======================================================================================
# Beam: StreamPredictions
# ======================================================================================

import apache_beam as beam  # noqa: E402  (Beam part of the module; the NumPy part above needs none of it)
from apache_beam.coders import PickleCoder  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.transforms.timeutil import TimeDomain  # noqa: E402
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer  # noqa: E402
from apache_beam.utils.timestamp import Duration, Timestamp  # noqa: E402

METRICS_NAMESPACE = "beam_rnn.stream"
DEAD_LETTER_TAG = "dead_letter"
PREDICTIONS_TAG = "predictions"
STREAM_STAGE = "stream"

# Event fields.
STREAM_ID = "stream_id"
SEQ = "seq"
TEXT = "text"
TOKEN = "token"
END = "end"
EVENT_TS = "ts"
# Set by `parse_event` on an event whose strings had lone surrogates replaced (how many).
REPLACED_CHARS = "replaced_chars"
# Set by `parse_event` when `text` starts with a lone low / ends with a lone high surrogate
# (code point, an int): half of a character cut between two chunks, joined by the stateful step.
LEAD_SURROGATE = "lead_surrogate"
TRAIL_SURROGATE = "trail_surrogate"

# Dead-letter reason codes ("<code>: <detail>").
REASON_INVALID_JSON = "invalid_json"
REASON_NOT_OBJECT = "not_an_object"
REASON_MISSING_FIELD = "missing_field"
REASON_BAD_FIELD = "bad_field"
REASON_TOO_LARGE = "event_too_large"
REASON_CONFLICTING_DUPLICATE = "conflicting_duplicate"
REASON_BUFFER_OVERFLOW = "buffer_overflow"
REASON_STREAM_CLOSED = "stream_closed"
REASON_AFTER_END = "after_end"
REASON_GAP_EXPIRED = "gap_never_filled"
REASON_INTERNAL = "internal_error"

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_BUFFERED_EVENTS = 64
DEFAULT_MAX_BUFFERED_CHARS = 65536
DEFAULT_MAX_EVENT_CHARS = 100_000
DEFAULT_CONFLICT_WINDOW = 256

# Fixed limits on event fields (a bad value is a `bad_field` dead letter).
MAX_STREAM_ID_CHARS = 256
MAX_SEQ = 2**63 - 1  # seq and integer stream ids fit an int64
MIN_EVENT_TS = -62135596800.0  # 0001-01-01T00:00:00Z (RFC 3339's range; Beam's is wider)
MAX_EVENT_TS = 253402300799.0  # 9999-12-31T23:59:59Z
MAX_TTL_SECONDS = 100 * 366 * 86400.0  # timers at ts + 2 TTL stay far inside Beam's timestamp range
_HASH_BYTES = 8  # content hash per remembered applied event


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Per-stream state limits of `StreamPredictions` (validated once, shared with its DoFns).

    Attributes:
        ttl_seconds: Expire a stream idle for this many seconds of event time.
        first_seq: Sequence number of each stream's first event.
        max_buffered_events: Out-of-order events kept per stream.
        max_buffered_chars: Text kept in those events per stream.
        max_pending_chars: Characters of an unfinished word kept per stream.
        max_event_chars: Longest ``text`` / ``token`` of one event; a longer one is
            dead-lettered (``event_too_large``), as is a raw message longer than
            `max_raw_event_chars`.
        conflict_window: Applied events per stream whose content hash is kept
            (8 bytes each) to tell a redelivery from a conflicting duplicate.
    """

    ttl_seconds: float = DEFAULT_TTL_SECONDS
    first_seq: int = 0
    max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS
    max_buffered_chars: int = DEFAULT_MAX_BUFFERED_CHARS
    max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS
    max_event_chars: int = DEFAULT_MAX_EVENT_CHARS
    conflict_window: int = DEFAULT_CONFLICT_WINDOW

    def __post_init__(self) -> None:
        if not 0 < self.ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be in (0, {MAX_TTL_SECONDS:g}], got {self.ttl_seconds}")
        if not 0 <= self.first_seq <= MAX_SEQ:
            raise ValueError(f"first_seq must be in [0, 2**63), got {self.first_seq}")
        if self.max_buffered_events < 0 or self.max_buffered_chars < 0:
            raise ValueError("buffer limits must be >= 0")
        if self.max_pending_chars < 1:
            raise ValueError(f"max_pending_chars must be >= 1, got {self.max_pending_chars}")
        if self.max_event_chars < 1:
            raise ValueError(f"max_event_chars must be >= 1, got {self.max_event_chars}")
        if self.conflict_window < 0:
            raise ValueError(f"conflict_window must be >= 0, got {self.conflict_window}")

    @property
    def max_raw_event_chars(self) -> int:
        """Longest raw event (bytes or characters) parsed at all: 12 x max_event_chars + 64 KiB.

        12 is the longest JSON spelling of one character (an escaped surrogate
        pair); 64 KiB leaves room for the other fields.
        """
        return 12 * self.max_event_chars + 65536


_MAX_DEAD_ROW_CHARS = 4000
_MAX_DEAD_TEXT_CHARS = 1000
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> tuple[str, int]:
    """Replaces lone UTF-16 surrogates by U+FFFD; returns ``(text, how many were replaced)``.

    JSON can spell a lone surrogate (``"\\ud83d"``: an emoji cut in half by a
    client); Python then holds a str that cannot be encoded as UTF-8, so it could
    not be keyed, stored, hashed or written.  A valid pair held as two code
    points is joined into its character and not counted.
    """
    if text.isascii() or _SURROGATE_RE.search(text) is None:
        return text, 0
    surrogates = len(_SURROGATE_RE.findall(text))
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    joined_pairs = len(text) - len(fixed)
    return fixed, surrogates - 2 * joined_pairs


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def _describe(value: Any) -> str:
    """A short, always-encodable rendering of a bad field value for a dead-letter reason."""
    try:
        shown = json.dumps(value, ensure_ascii=True, default=repr)  # ASCII: never a lone surrogate
    except (TypeError, ValueError, RecursionError):
        shown = f"<{type(value).__name__}>"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{_json_type(value)} ({shown})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def _safe(text: str, limit: int) -> str:
    return repair_text(text[:limit])[0]


def _dead(source: str, row: Any, code: str, detail: str) -> beam.pvalue.TaggedOutput:
    """A dead letter ``{source, row, reason, stage}`` that can always be encoded as UTF-8 JSON."""
    if isinstance(row, (bytes, bytearray, memoryview)):
        row = bytes(row[: 4 * _MAX_DEAD_ROW_CHARS]).decode("utf-8", "replace")
    elif not isinstance(row, str):
        try:
            row = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError, RecursionError):  # mixed key types, cycles, deep nesting
            row = f"<unprintable {type(row).__name__}>"
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG,
        {
            C.DEAD_SOURCE_KEY: _safe(str(source), _MAX_DEAD_TEXT_CHARS),
            C.DEAD_ROW_KEY: _safe(row, _MAX_DEAD_ROW_CHARS),
            C.DEAD_REASON_KEY: _safe(f"{code}: {detail}", _MAX_DEAD_TEXT_CHARS),
            C.DEAD_STAGE_KEY: STREAM_STAGE,
        },
    )


def to_json_line(record: Any) -> str:
    """One output record as a JSON line that always encodes as UTF-8 (the writers' form)."""
    line = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str)
    return line if line.isascii() else repair_text(line)[0]


def to_json_bytes(record: Any) -> bytes:
    """`to_json_line` as UTF-8 bytes (a Pub/Sub message)."""
    return to_json_line(record).encode("utf-8")


def parse_event(
    element: Any, *, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS
) -> tuple[tuple[str, dict[str, Any]] | None, tuple[str, str] | None]:
    """Validates one raw event (JSON bytes/str or a dict); total: never raises on input.

    Lone surrogates in ``stream_id``, ``text`` or ``token`` are replaced by U+FFFD
    (the count is in the event as ``replaced_chars``), except a low one at the very
    start or a high one at the very end of ``text``: those are half a character cut
    between two chunks, returned as ``lead_surrogate`` / ``trail_surrogate`` (code
    points) for the stateful step to join with the neighbouring event's half.
    Everything else that is not a valid event is an error ``(code, detail)``.

    Returns:
        ``((stream_id, event), None)`` with event ``{seq, text, end[, ts][,
        replaced_chars][, lead_surrogate][, trail_surrogate]}`` (``text`` is the
        chunk to apply: a ``token`` becomes ``" token "``), or ``(None, (code, detail))``.
    """
    raw_limit = 12 * max_event_chars + 65536  # = StreamConfig.max_raw_event_chars
    if isinstance(element, (bytes, bytearray, memoryview)):
        data = bytes(element)
        if len(data) > raw_limit:
            return None, (REASON_TOO_LARGE, f"{len(data)} bytes; the limit is {raw_limit} (max event chars {max_event_chars})")
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (first line of some files)
            data = data[3:]
        try:
            element = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, (REASON_INVALID_JSON, f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}")
    if isinstance(element, str):
        if len(element) > raw_limit:
            return None, (REASON_TOO_LARGE, f"{len(element)} characters; the limit is {raw_limit} (max event chars {max_event_chars})")
        if element.startswith("\ufeff"):
            element = element[1:]
        try:
            element = json.loads(element, parse_constant=_reject_constant)
        except RecursionError:
            return None, (REASON_INVALID_JSON, "nested too deeply")
        except ValueError as e:  # JSONDecodeError, NaN / Infinity, integers of over 4300 digits
            return None, (REASON_INVALID_JSON, _one_line(e)[:300])
    if not isinstance(element, Mapping):
        return None, (REASON_NOT_OBJECT, f"expected a JSON object, got {_json_type(element)}")
    replaced = 0
    for field in (STREAM_ID, SEQ):
        if element.get(field) is None:
            return None, (REASON_MISSING_FIELD, f"no {field!r}")

    stream_id = element[STREAM_ID]
    if isinstance(stream_id, str):
        stream_id, n = repair_text(stream_id)
        replaced += n
        if not stream_id or len(stream_id) > MAX_STREAM_ID_CHARS:
            return None, (REASON_BAD_FIELD, f"{STREAM_ID!r} must have 1 to {MAX_STREAM_ID_CHARS} characters, got {len(stream_id)}")
    elif isinstance(stream_id, int) and not isinstance(stream_id, bool) and -MAX_SEQ - 1 <= stream_id <= MAX_SEQ:
        stream_id = str(stream_id)
    else:
        return None, (REASON_BAD_FIELD, f"{STREAM_ID!r} must be a non-empty string or an int64, got {_describe(stream_id)}")

    seq = element[SEQ]
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None, (REASON_BAD_FIELD, f"{SEQ!r} must be an integer, got {_describe(seq)}")
    if not 0 <= seq <= MAX_SEQ:
        return None, (REASON_BAD_FIELD, f"{SEQ!r} must be in [0, 2**63), got {_describe(seq)}")

    text, token = element.get(TEXT), element.get(TOKEN)
    if text is not None and token is not None:
        return None, (REASON_BAD_FIELD, f"give {TEXT!r} (a raw chunk) or {TOKEN!r} (a whole word), not both")
    chunk, lead, trail = "", "", ""
    for field, value in ((TEXT, text), (TOKEN, token)):
        if value is None:
            continue
        if not isinstance(value, str):
            return None, (REASON_BAD_FIELD, f"{field!r} must be a string, got {_describe(value)}")
        if len(value) > max_event_chars:
            return None, (REASON_TOO_LARGE, f"{field!r} has {len(value)} characters; the limit is {max_event_chars}")
        if field == TEXT:
            # A character cut between two chunks (a client slicing UTF-16) leaves a lone
            # high surrogate at the end of one text and a lone low one at the start of the
            # next: kept aside for the stateful step to join (or replace).
            lead = value[0] if value and "\udc00" <= value[0] <= "\udfff" else ""
            trail = value[-1] if len(value) > len(lead) and "\ud800" <= value[-1] <= "\udbff" else ""
            value = value[len(lead) : len(value) - len(trail)]
        value, n = repair_text(value)
        replaced += n
        # A token is a whole word: whitespace on both sides keeps it from joining its neighbours.
        chunk = value if field == TEXT else f" {value} "

    end = element.get(END)
    if end is None:
        end = False
    elif not isinstance(end, bool):
        return None, (REASON_BAD_FIELD, f"{END!r} must be true or false, got {_describe(end)}")

    event: dict[str, Any] = {SEQ: seq, TEXT: chunk, END: end}
    if lead:
        event[LEAD_SURROGATE] = ord(lead)
    if trail:
        event[TRAIL_SURROGATE] = ord(trail)
    ts = element.get(EVENT_TS)
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not MIN_EVENT_TS <= ts <= MAX_EVENT_TS:
            # (NaN fails the range test too)
            return None, (
                REASON_BAD_FIELD,
                f"{EVENT_TS!r} must be seconds since the epoch (years 1 to 9999), got {_describe(ts)}",
            )
        event[EVENT_TS] = float(ts)
    if replaced:
        event[REPLACED_CHARS] = replaced
    return (stream_id, event), None


class _ParseEventsFn(beam.DoFn):
    """Raw events -> (stream_id, event) keyed for the stateful step; bad ones -> dead letter."""

    def __init__(self, config: StreamConfig, use_event_ts: bool) -> None:
        self._cfg = config
        self._use_event_ts = use_event_ts
        self._in = _counter("events_in")
        self._bad = _counter("events_invalid")
        self._dead = _counter("dead_lettered")
        self._repaired = _counter("events_repaired")
        self._replaced = _counter("replaced_chars")
        self._internal = _counter("internal_errors")

    def process(self, element: Any) -> Iterable[Any]:
        self._in.inc()
        try:
            parsed, error = parse_event(element, max_event_chars=self._cfg.max_event_chars)
        except Exception as e:  # pylint: disable=broad-except
            # parse_event is total on every input we know of; should it ever raise,
            # one event must not stop the job (on Pub/Sub: a message retried for ever).
            logging.getLogger(__name__).exception("stream: parsing an event failed")
            self._internal.inc()
            parsed, error = None, (REASON_INTERNAL, f"{type(e).__name__}: {_one_line(e)[:300]}")
        if error is not None:
            self._bad.inc()
            self._dead.inc()
            yield _dead("event", element, *error)
            return
        stream_id, event = parsed
        replaced = event.pop(REPLACED_CHARS, 0)
        if replaced:
            self._repaired.inc()
            self._replaced.inc(replaced)
        if self._use_event_ts and EVENT_TS in event:
            yield beam.window.TimestampedValue((stream_id, event), event[EVENT_TS])
        else:
            yield stream_id, event


def _raw_text(event: Mapping[str, Any]) -> str:
    """The event's chunk with its cut-off surrogate halves back at the edges (lone surrogates:
    fine inside the DoFn and its pickled state, never written out unrepaired)."""
    text = event[TEXT]
    if LEAD_SURROGATE in event:
        text = chr(event[LEAD_SURROGATE]) + text
    if TRAIL_SURROGATE in event:
        text += chr(event[TRAIL_SURROGATE])
    return text


def _event_row(stream_id: str, seq: int, raw: str, end: bool, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
    row = {STREAM_ID: stream_id, SEQ: seq, TEXT: raw, END: end}
    if event is not None and EVENT_TS in event:
        row[EVENT_TS] = event[EVENT_TS]
    return row


def _is_low(ch: str) -> bool:
    return "\udc00" <= ch <= "\udfff"


def _is_high(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def _content_hash(text: str, end: bool) -> bytes:
    """What makes two deliveries of one seq "the same": the chunk applied and the end flag."""
    data = text.encode("utf-8", "surrogatepass") + (b"\x01" if end else b"\x00")
    return hashlib.blake2b(data, digest_size=_HASH_BYTES).digest()


# Stream record statuses.
_OPEN = "open"
_CLOSED = "closed"  # tombstone after end / expiry: remembers the last seq for duplicate detection


class _StreamFn(beam.DoFn):
    """Stateful per-stream predictor (keyed by stream_id).

    State (one ReadModifyWriteState, pickled dict, bounded):
      open stream:  status, next_seq, the StreamState record (float32 bytes, tokenizer
                    state), early events {seq: (text, end)} (<= max_buffered_events,
                    <= max_buffered_chars), last event time, "hi": the high surrogate
                    that ended the last applied text (half a character cut between
                    two chunks; absent normally), and "hashes": the
                    8-byte content hashes of the last <= conflict_window applied
                    events (seqs next_seq - k .. next_seq - 1, oldest first).
      tombstone:    status "closed", next_seq, reason, hashes — kept one TTL after
                    end/expiry so that redelivered events are recognised as
                    duplicates (or conflicting ones); then cleared.
    Timer (event time): last event time + TTL.

    Counters of one event are gathered first and added only once the event is
    handled, so a failure in between (an internal error, dead-lettered) leaves
    the counters reconciled and the stream's state as it was.
    """

    STATE = ReadModifyWriteStateSpec("stream", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
    COUNTERS = (
        "replaced_chars",
        "surrogates_joined",
        "events_applied",
        "events_duplicate",
        "events_conflicting",
        "duplicates_unchecked",
        "events_buffered",
        "dead_lettered",
        "internal_errors",
        "tokens",
        "streams_started",
        "streams_ended",
        "streams_expired",
        "state_cleared",
        "tombstones_cleared",
        "tag_lookahead_exceeded",
        "events_after_close",
    )

    def __init__(self, model_dir: str, config: StreamConfig, classifier: StreamingClassifier | None = None) -> None:
        self._model_dir = model_dir
        self._cfg = config
        self._ttl = Duration(micros=int(round(config.ttl_seconds * 1e6)))
        self._clf = classifier
        self._c = {name: _counter(name) for name in self.COUNTERS}

    def setup(self) -> None:
        if self._clf is None:
            self._clf = StreamingClassifier.load(self._model_dir, max_pending_chars=self._cfg.max_pending_chars)

    def _flush(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            if value:
                self._c[name].inc(value)

    # --- helpers ------------------------------------------------------------------
    def _new_record(self, n: collections.Counter) -> dict[str, Any]:
        n["streams_started"] += 1
        return {
            "status": _OPEN,
            "next_seq": self._cfg.first_seq,
            "stream": self._clf.start().to_record(),
            "early": {},
            "early_chars": 0,
            "last_ts": None,
            "hashes": b"",
        }

    def _token_records(
        self, stream_id: str, seq: int | None, predictions: list[Prediction], n: collections.Counter
    ) -> list[dict[str, Any]]:
        n["tokens"] += len(predictions)
        return [
            {
                STREAM_ID: stream_id,
                SEQ: seq,
                "token": p.token,
                "token_id": p.token_id,
                "probability": p.probability,
                "label": p.label,
                "tokens_seen": p.tokens_seen,
            }
            for p in predictions
        ]

    def _final_record(self, stream_id: str, seq: int | None, state: StreamState, **extra: Any) -> dict[str, Any]:
        current = self._clf.current(state)
        record = {STREAM_ID: stream_id, SEQ: seq, "final": True, **current}
        if state.tokens_dropped:
            record["tokens_dropped"] = state.tokens_dropped
        record.update(extra)
        return record

    def _remember(self, record: dict[str, Any], text: str, end: bool) -> None:
        """Appends the content hash of the event just applied (the last conflict_window kept)."""
        if self._cfg.conflict_window:
            hashes = record.get("hashes", b"") + _content_hash(text, end)
            record["hashes"] = hashes[-self._cfg.conflict_window * _HASH_BYTES :]

    @staticmethod
    def _applied_hash(record: Mapping[str, Any], seq: int) -> bytes | None:
        """The remembered content hash of applied event `seq`, or None when it is out of the window."""
        hashes = record.get("hashes", b"")
        count = len(hashes) // _HASH_BYTES
        back = record["next_seq"] - seq  # 1: the last applied event
        if not 1 <= back <= count:
            return None
        start = (count - back) * _HASH_BYTES
        return hashes[start : start + _HASH_BYTES]

    def _duplicate(
        self,
        stream_id: str,
        record: Mapping[str, Any],
        event: Mapping[str, Any],
        text: str,
        n: collections.Counter,
        out: list,
    ) -> None:
        """`seq` was applied or is buffered: the same content changes nothing, other content is dead-lettered."""
        seq, end = event[SEQ], event[END]
        if seq in record.get("early", {}):
            first = record["early"][seq]
            same, where = first[0] == text and first[1] == end, "buffered"
        else:
            known = self._applied_hash(record, seq)
            if known is None:  # older than the conflict window: cannot be compared
                n["events_duplicate"] += 1
                n["duplicates_unchecked"] += 1
                return
            same, where = known == _content_hash(text, end), "applied"
        if same:
            n["events_duplicate"] += 1
            return
        n["events_conflicting"] += 1
        n["dead_lettered"] += 1
        out.append(
            _dead(
                f"{stream_id}:{seq}",
                _event_row(stream_id, seq, text, end, event),
                REASON_CONFLICTING_DUPLICATE,
                f"seq {seq} was already {where} with a different text/token or end; the first version stands",
            )
        )

    def _apply(
        self, stream_id: str, record: dict[str, Any], seq: int, text: str, end: bool, out: list, n: collections.Counter
    ) -> bool:
        """Applies the in-order event `seq`; returns True when it ended the stream."""
        state = StreamState.from_record(record["stream"], self._clf.num_state_arrays)
        forced_before = state.tokenizer.forced_tag_releases
        predictions, state = self._clf.feed(state, self._join_surrogates(record, text, end, n))
        if end:
            more, state = self._clf.finish(state)
            predictions += more
        n["tag_lookahead_exceeded"] += state.tokenizer.forced_tag_releases - forced_before
        out.extend(self._token_records(stream_id, seq, predictions, n))
        n["events_applied"] += 1
        record["next_seq"] = seq + 1
        record["stream"] = state.to_record()
        self._remember(record, text, end)
        if end:
            out.append(self._final_record(stream_id, seq, state, reason="end"))
            n["streams_ended"] += 1
        return end

    @staticmethod
    def _join_surrogates(record: dict[str, Any], text: str, end: bool, n: collections.Counter) -> str:
        """The chunk to feed: a character cut between the previous event and this one is joined.

        `text` may start with a lone low surrogate and end with a lone high one (see
        `parse_event`); a high one waits in ``record["hi"]`` for the next event.
        Halves that cannot be joined become U+FFFD (counted in ``replaced_chars``).
        """
        pending = record.pop("hi", None)
        lead = ""
        if text and _is_low(text[0]):
            if pending is not None:
                lead = chr(0x10000 + ((ord(pending) - 0xD800) << 10) + (ord(text[0]) - 0xDC00))
                n["surrogates_joined"] += 1
                pending = None
            else:
                lead = "\ufffd"
                n["replaced_chars"] += 1
            text = text[1:]
        if pending is not None:  # the previous event's half found no partner
            lead = "\ufffd" + lead
            n["replaced_chars"] += 1
        if text and _is_high(text[-1]):
            if end:
                text = text[:-1] + "\ufffd"
                n["replaced_chars"] += 1
            else:
                record["hi"] = text[-1]
                text = text[:-1]
        return lead + text

    def _close(self, stream_id: str, record: dict[str, Any], reason: str, out: list, n: collections.Counter) -> dict[str, Any]:
        """Dead-letters buffered events that can no longer apply; returns the tombstone."""
        for seq in sorted(record["early"]):
            text, end = record["early"][seq][:2]
            code = REASON_AFTER_END if reason == "end" else REASON_GAP_EXPIRED
            detail = (
                f"seq {seq} is after the end of the stream (seq {record['next_seq'] - 1})"
                if reason == "end"
                else f"stream expired while waiting for seq {record['next_seq']}"
            )
            out.append(_dead(f"{stream_id}:{seq}", _event_row(stream_id, seq, text, end), code, detail))
            n["dead_lettered"] += 1
        n["state_cleared"] += 1
        return {
            "status": _CLOSED,
            "next_seq": record["next_seq"],
            "reason": reason,
            "last_ts": record["last_ts"],
            "hashes": record.get("hashes", b""),
        }

    def _handle(
        self,
        stream_id: str,
        event: Mapping[str, Any],
        ts_micros: int,
        record: dict[str, Any] | None,
        out: list,
        n: collections.Counter,
    ) -> dict[str, Any] | None:
        """One event against the stream's record; returns the record to store (None: store nothing)."""
        seq, text, end = event[SEQ], _raw_text(event), event[END]
        if seq < self._cfg.first_seq:
            n["dead_lettered"] += 1
            out.append(
                _dead(f"{stream_id}:{seq}", _event_row(stream_id, seq, text, end, event), REASON_BAD_FIELD,
                      f"seq {seq} is below the first seq ({self._cfg.first_seq})")
            )
            return None
        if record is not None and record["status"] == _CLOSED:
            if seq < record["next_seq"]:
                self._duplicate(stream_id, record, event, text, n, out)
            else:
                n["events_after_close"] += 1
                n["dead_lettered"] += 1
                out.append(
                    _dead(
                        f"{stream_id}:{seq}",
                        _event_row(stream_id, seq, text, end, event),
                        REASON_STREAM_CLOSED,
                        f"stream {record['reason']} before this event (last seq {record['next_seq'] - 1})",
                    )
                )
            return None  # a tombstone's timer is not extended
        if record is None:
            record = self._new_record(n)
        else:
            # Work on a copy: state.read() may hand out the cached object itself, and an
            # event that fails half-way must leave the stored state as it was.
            record = dict(record, early=dict(record["early"]))
        record["last_ts"] = ts_micros if record["last_ts"] is None else max(record["last_ts"], ts_micros)

        if seq < record["next_seq"] or seq in record["early"]:
            self._duplicate(stream_id, record, event, text, n, out)
        elif seq > record["next_seq"]:
            if len(record["early"]) >= self._cfg.max_buffered_events or record["early_chars"] + len(text) > self._cfg.max_buffered_chars:
                n["dead_lettered"] += 1
                out.append(
                    _dead(
                        f"{stream_id}:{seq}",
                        _event_row(stream_id, seq, text, end, event),
                        REASON_BUFFER_OVERFLOW,
                        f"waiting for seq {record['next_seq']}; early-event buffer full "
                        f"({len(record['early'])} events / {record['early_chars']} chars; limits "
                        f"{self._cfg.max_buffered_events} / {self._cfg.max_buffered_chars})",
                    )
                )
            else:
                record["early"][seq] = (text, end)
                record["early_chars"] += len(text)
                n["events_buffered"] += 1
        else:
            ended = self._apply(stream_id, record, seq, text, end, out, n)
            while not ended and record["next_seq"] in record["early"]:
                nxt = record["next_seq"]
                text_n, end_n = record["early"].pop(nxt)[:2]
                record["early_chars"] -= len(text_n)
                ended = self._apply(stream_id, record, nxt, text_n, end_n, out, n)
            if ended:
                record = self._close(stream_id, record, "end", out, n)
        return record

    # --- process ----------------------------------------------------------------------
    def process(
        self,
        element: tuple[str, dict[str, Any]],
        timestamp: Any = beam.DoFn.TimestampParam,
        state: Any = beam.DoFn.StateParam(STATE),
        expiry: Any = beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Any]:
        stream_id, event = element
        out: list[Any] = []
        n: collections.Counter = collections.Counter()
        try:
            record = self._handle(stream_id, event, Timestamp.of(timestamp).micros, state.read(), out, n)
            fire_at = None if record is None else Timestamp(micros=record["last_ts"]) + self._ttl
        except Exception as e:  # pylint: disable=broad-except
            # Events are validated by parse_event, so this is a bug; still, one event
            # must not stop every stream (on Pub/Sub it would be retried for ever).
            # The stream's stored state is left as it was.
            logging.getLogger(__name__).exception("stream %s: handling seq %s failed", stream_id, event.get(SEQ))
            record, out = None, [
                _dead(f"{stream_id}:{event.get(SEQ)}", {STREAM_ID: stream_id, **event}, REASON_INTERNAL,
                      f"{type(e).__name__}: {_one_line(e)[:300]}")
            ]
            n = collections.Counter(dead_lettered=1, internal_errors=1)
        if record is not None:
            state.write(record)
            expiry.set(fire_at)
        self._flush(n)
        return out

    @on_timer(EXPIRY)
    def on_expiry(
        self,
        key: Any = beam.DoFn.KeyParam,
        state: Any = beam.DoFn.StateParam(STATE),
        expiry: Any = beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Any]:
        record = state.read()
        if record is None:
            return []
        n: collections.Counter = collections.Counter()
        if record["status"] == _CLOSED:
            # The tombstone has lived one TTL: forget the stream entirely.
            state.clear()
            self._flush({"tombstones_cleared": 1})
            return []
        out: list[Any] = []
        stream = StreamState.from_record(record["stream"], self._clf.num_state_arrays)
        predictions: list[Prediction] = []
        if record.get("hi") is not None:  # half a character that never got its other half
            predictions, stream = self._clf.feed(stream, "\ufffd")
            n["replaced_chars"] += 1
        more, stream = self._clf.finish(stream)
        predictions += more
        last_seq = record["next_seq"] - 1 if record["next_seq"] > self._cfg.first_seq else None
        out.extend(self._token_records(key, last_seq, predictions, n))
        reason = f"idle: no event for {self._cfg.ttl_seconds:g} s (stream-ttl)"
        if record["early"]:
            reason += f"; seq {record['next_seq']} never arrived ({len(record['early'])} later events dead-lettered)"
        out.append(self._final_record(key, last_seq, stream, expired=True, reason=reason))
        n["streams_expired"] += 1
        tombstone = self._close(key, record, "expired", out, n)
        state.write(tombstone)
        expiry.set(Timestamp(micros=record["last_ts"]) + self._ttl + self._ttl)
        self._flush(n)
        return out


class StreamPredictions(beam.PTransform):
    """Events -> per-token predictions (+ a final record per stream) and dead letters.

    Input: a PCollection of events — JSON bytes (Pub/Sub), JSON strings (JSON Lines)
    or dicts — ``{"stream_id": str|int, "seq": int >= 0, "text": "raw chunk"}`` (or
    ``"token": "word"``, a whole word), ``"end": true`` closes the stream, optional
    ``"ts"`` (seconds since the epoch) sets the event time when `use_event_ts`.

    Output (``expand`` returns a dict):
      ``predictions``: ``{stream_id, seq, token, token_id, probability, label,
      tokens_seen}`` per token, and per stream one ``{stream_id, seq, final: true,
      probability, label, tokens_seen, reason}`` record (``expired: true`` when
      the stream was idle for `ttl_seconds`).
      ``dead_letter``: ``{source, row, reason, stage}``.

    No event can fail the pipeline: lone surrogates are replaced by U+FFFD
    (counted), anything else invalid is dead-lettered with a reason, and every
    output is encodable UTF-8 JSON (`to_json_line`).

    Delivery: duplicates (same stream_id and seq, applied or buffered, same text
    and end) change nothing; the same seq with a different text or end is
    dead-lettered as ``conflicting_duplicate`` (checked for the last
    `conflict_window` applied events of a stream and every buffered one).
    Out-of-order events wait (bounded buffer) for the gap to fill.  Expiry uses
    an event-time timer at (latest event time of the stream + TTL): it fires when
    the watermark passes it (TestStream's advance_watermark_to; Pub/Sub's
    watermark follows publish time; in a bounded run every open stream expires
    when the input ends).  Counters in namespace ``beam_rnn.stream`` reconcile:
    events_in = events_applied + events_duplicate + dead_lettered.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        first_seq: int = 0,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        max_buffered_chars: int = DEFAULT_MAX_BUFFERED_CHARS,
        max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS,
        max_event_chars: int = DEFAULT_MAX_EVENT_CHARS,
        conflict_window: int = DEFAULT_CONFLICT_WINDOW,
        use_event_ts: bool = True,
    ) -> None:
        super().__init__()
        self._model_dir = model_dir
        self._config = StreamConfig(
            ttl_seconds=ttl_seconds,
            first_seq=first_seq,
            max_buffered_events=max_buffered_events,
            max_buffered_chars=max_buffered_chars,
            max_pending_chars=max_pending_chars,
            max_event_chars=max_event_chars,
            conflict_window=conflict_window,
        )
        self._use_event_ts = use_event_ts

    def expand(self, events: beam.PCollection):  # -> {tag: PCollection}; a dict hint makes Beam warn
        parsed = events | "Parse" >> beam.ParDo(_ParseEventsFn(self._config, self._use_event_ts)).with_output_types(
            tuple[str, dict[str, Any]]
        ).with_outputs(
            DEAD_LETTER_TAG, main=PREDICTIONS_TAG
        )
        keyed = parsed[PREDICTIONS_TAG]
        predicted = keyed | "Predict" >> beam.ParDo(_StreamFn(self._model_dir, self._config)).with_input_types(
            tuple[str, dict[str, Any]]
        ).with_outputs(
            DEAD_LETTER_TAG, main=PREDICTIONS_TAG
        )
        dead = (parsed[DEAD_LETTER_TAG], predicted[DEAD_LETTER_TAG]) | "DeadLetters" >> beam.Flatten()
        return {PREDICTIONS_TAG: predicted[PREDICTIONS_TAG], DEAD_LETTER_TAG: dead}


def reconcile(counters: Mapping[str, int]) -> dict[str, Any]:
    """Checks events_in = applied + duplicate + dead_lettered from a run's counters."""
    get = lambda k: int(counters.get(k, 0))  # noqa: E731
    accounted = get("events_applied") + get("events_duplicate") + get("dead_lettered")
    return {
        "events_in": get("events_in"),
        "events_applied": get("events_applied"),
        "events_duplicate": get("events_duplicate"),
        "events_conflicting": get("events_conflicting"),
        "events_repaired": get("events_repaired"),
        "replaced_chars": get("replaced_chars"),
        "dead_lettered": get("dead_lettered"),
        "reconciled": get("events_in") == accounted,
    }
