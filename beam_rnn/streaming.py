"""Per-token predictions of the streaming (unidirectional) classifier.

Two layers:

* `StreamingClassifier`: pure Python + NumPy (no TensorFlow anywhere, so no TF in
  the hot loop).  It loads an exported streaming model directory
  (``step_weights.npz``, ``vocab.txt``, ``preprocess_config.json``,
  ``model_card.json``), tokenises text incrementally exactly like the TFT
  transform graph, and advances the recurrent state one token at a time
  (`beam_rnn.rnn_step`).  After the last token its prediction equals the exported
  ``serving_default`` signature on the same text (to float32 rounding, <= 1e-5).
* `StreamPredictions`: a Beam PTransform that turns events
  ``{stream_id, seq, text | token, end}`` into one prediction per token, with a
  stateful DoFn keyed by stream id (at-least-once and out-of-order delivery,
  idle-stream expiry, dead letters).

Tokenisation mirror
-------------------
`beam_rnn.preprocessing.tokenize` (the one definition) does, on UTF-8 bytes:

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

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from beam_rnn import constants as C
from beam_rnn import rnn_step

# --- The tokenisation definition, mirrored -------------------------------------
# Same patterns as beam_rnn.preprocessing (which imports TF / TFT; this module must
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

VOCAB_TEXT_FILE = "vocab.txt"  # = beam_rnn.export.VOCAB_TEXT_FILE (export imports TF)


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
    def read(cls, path: str, num_oov_buckets: int) -> Vocabulary:
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
    def from_tuple(cls, values: Sequence[Any]) -> TokenizerState:
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
    def from_record(cls, record: Mapping[str, Any], num_arrays: int) -> StreamState:
        flat = np.frombuffer(record["rnn"], dtype=np.float32)
        return cls(
            rnn=tuple(np.split(flat, num_arrays)),
            logits=np.frombuffer(record["logits"], dtype=np.float32),
            tokenizer=TokenizerState.from_tuple(record["tok"]),
            tokens_seen=int(record["seen"]),
            tokens_dropped=int(record["dropped"]),
        )


class ModelDirError(Exception):
    """The model directory is missing, incomplete or not a streaming model (one clear message)."""


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
    ) -> StreamingClassifier:
        """Loads an exported streaming model dir (no TensorFlow needed).

        Raises:
            ModelDirError: With one message naming what is missing or wrong.
        """
        model_dir = os.fspath(model_dir)
        if not _is_remote(model_dir) and not os.path.isdir(model_dir):
            raise ModelDirError(f"Model directory {model_dir} does not exist.")
        def join(name: str) -> str:
            return model_dir.rstrip("/") + "/" + name if _is_remote(model_dir) else os.path.join(model_dir, name)

        card: dict[str, Any] = {}
        card_path = join(C.MODEL_CARD_FILE)
        if _exists(card_path):
            try:
                card = json.loads(_read_bytes(card_path).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelDirError(f"Unreadable model card {card_path}: {e}") from e
            if card.get("kind") not in (None, C.MODEL_LSTM):
                raise ModelDirError(
                    f"{model_dir} holds a {card.get('kind')!r} model; only the streaming {C.MODEL_LSTM!r} "
                    "model can predict token by token."
                )
        weights_path = join(C.STEP_WEIGHTS_FILE)
        if not _exists(weights_path):
            raise ModelDirError(
                f"No {C.STEP_WEIGHTS_FILE} in {model_dir}: not an exported streaming ({C.MODEL_LSTM!r}) model."
            )
        for name in (VOCAB_TEXT_FILE, C.PREPROCESS_CONFIG_FILE):
            if not _exists(join(name)):
                raise ModelDirError(f"No {name} in {model_dir}: incomplete export.")
        try:
            with np.load(io.BytesIO(_read_bytes(weights_path)), allow_pickle=False) as data:
                weights = rnn_step.StepWeights.from_dict({k: data[k] for k in data.files})
            config = json.loads(_read_bytes(join(C.PREPROCESS_CONFIG_FILE)).decode("utf-8"))
            vocabulary = Vocabulary.read(join(VOCAB_TEXT_FILE), int(config.get("num_oov_buckets") or 1))
        except (ValueError, OSError, UnicodeDecodeError) as e:
            raise ModelDirError(f"Cannot load the streaming model in {model_dir}: {e}") from e
        return cls(
            weights,
            vocabulary,
            max_tokens=config.get("max_tokens"),
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

# Dead-letter reason codes ("<code>: <detail>").
REASON_INVALID_JSON = "invalid_json"
REASON_NOT_OBJECT = "not_an_object"
REASON_MISSING_FIELD = "missing_field"
REASON_BAD_FIELD = "bad_field"
REASON_BUFFER_OVERFLOW = "buffer_overflow"
REASON_STREAM_CLOSED = "stream_closed"
REASON_AFTER_END = "after_end"
REASON_GAP_EXPIRED = "gap_never_filled"

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_BUFFERED_EVENTS = 64
DEFAULT_MAX_BUFFERED_CHARS = 65536


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Per-stream state limits of `StreamPredictions` (validated once, shared with its DoFn).

    Attributes:
        ttl_seconds: Expire a stream idle for this many seconds of event time.
        first_seq: Sequence number of each stream's first event.
        max_buffered_events: Out-of-order events kept per stream.
        max_buffered_chars: Text kept in those events per stream.
        max_pending_chars: Characters of an unfinished word kept per stream.
    """

    ttl_seconds: float = DEFAULT_TTL_SECONDS
    first_seq: int = 0
    max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS
    max_buffered_chars: int = DEFAULT_MAX_BUFFERED_CHARS
    max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS

    def __post_init__(self) -> None:
        if not self.ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0, got {self.ttl_seconds}")
        if self.max_buffered_events < 0 or self.max_buffered_chars < 0:
            raise ValueError("buffer limits must be >= 0")
        if self.max_pending_chars < 1:
            raise ValueError(f"max_pending_chars must be >= 1, got {self.max_pending_chars}")
_MAX_DEAD_ROW_CHARS = 4000


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


def _dead(source: str, row: Any, code: str, detail: str) -> beam.pvalue.TaggedOutput:
    if not isinstance(row, str):
        try:
            row = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError):
            row = repr(row)
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG,
        {
            C.DEAD_SOURCE_KEY: source,
            C.DEAD_ROW_KEY: row[:_MAX_DEAD_ROW_CHARS],
            C.DEAD_REASON_KEY: f"{code}: {detail}",
            C.DEAD_STAGE_KEY: STREAM_STAGE,
        },
    )


def parse_event(element: Any) -> tuple[tuple[str, dict[str, Any]] | None, tuple[str, str] | None]:
    """Validates one raw event (JSON bytes/str or a dict).

    Returns:
        ``((stream_id, event), None)`` with event ``{seq, text, end[, ts]}``, or
        ``(None, (code, detail))``.
    """
    if isinstance(element, (bytes, bytearray)):
        try:
            element = bytes(element).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, (REASON_INVALID_JSON, f"not UTF-8: {e}")
    if isinstance(element, str):
        try:
            element = json.loads(element)
        except ValueError as e:
            return None, (REASON_INVALID_JSON, str(e))
    if not isinstance(element, Mapping):
        return None, (REASON_NOT_OBJECT, f"expected a JSON object, got {type(element).__name__}")
    for field in (STREAM_ID, SEQ):
        if element.get(field) is None:
            return None, (REASON_MISSING_FIELD, f"no {field!r}")
    stream_id = element[STREAM_ID]
    if isinstance(stream_id, bool) or not isinstance(stream_id, (str, int)) or stream_id == "":
        return None, (REASON_BAD_FIELD, f"{STREAM_ID!r} must be a non-empty string or an int")
    seq = element[SEQ]
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None, (REASON_BAD_FIELD, f"{SEQ!r} must be an int, got {seq!r}")
    if seq < 0:
        return None, (REASON_BAD_FIELD, f"{SEQ!r} must be >= 0, got {seq}")
    text = element.get(TEXT)
    token = element.get(TOKEN)
    if text is not None and not isinstance(text, str):
        return None, (REASON_BAD_FIELD, f"{TEXT!r} must be a string")
    if token is not None and not isinstance(token, str):
        return None, (REASON_BAD_FIELD, f"{TOKEN!r} must be a string")
    if text is not None and token is not None:
        return None, (REASON_BAD_FIELD, f"give {TEXT!r} (a raw chunk) or {TOKEN!r} (a whole word), not both")
    end = element.get(END, False)
    if not isinstance(end, bool):
        return None, (REASON_BAD_FIELD, f"{END!r} must be true or false")
    # A token is a whole word: whitespace on both sides keeps it from joining its neighbours.
    chunk = text if text is not None else (f" {token} " if token is not None else "")
    event: dict[str, Any] = {SEQ: seq, TEXT: chunk, END: end}
    ts = element.get(EVENT_TS)
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            return None, (REASON_BAD_FIELD, f"{EVENT_TS!r} must be a number (seconds since the epoch)")
        event[EVENT_TS] = float(ts)
    return (str(stream_id), event), None


class _ParseEventsFn(beam.DoFn):
    """Raw events -> (stream_id, event) keyed for the stateful step; bad ones -> dead letter."""

    def __init__(self, use_event_ts: bool) -> None:
        self._use_event_ts = use_event_ts
        self._in = _counter("events_in")
        self._bad = _counter("events_invalid")
        self._dead = _counter("dead_lettered")

    def process(self, element: Any) -> Iterable[Any]:
        self._in.inc()
        parsed, error = parse_event(element)
        if error is not None:
            self._bad.inc()
            self._dead.inc()
            raw = element.decode("utf-8", "replace") if isinstance(element, (bytes, bytearray)) else element
            yield _dead("event", raw, *error)
            return
        if self._use_event_ts and EVENT_TS in parsed[1]:
            yield beam.window.TimestampedValue(parsed, parsed[1][EVENT_TS])
        else:
            yield parsed


# Stream record statuses.
_OPEN = "open"
_CLOSED = "closed"  # tombstone after end / expiry: remembers the last seq for duplicate detection


class _StreamFn(beam.DoFn):
    """Stateful per-stream predictor (keyed by stream_id).

    State (one ReadModifyWriteState, pickled dict, bounded):
      open stream:  status, next_seq, the StreamState record (float32 bytes, tokenizer
                    state), early events {seq: (text, end)} (<= max_buffered_events,
                    <= max_buffered_chars), last event time.
      tombstone:    status "closed", next_seq, reason — kept one TTL after end/expiry
                    so that redelivered events are recognised as duplicates; then cleared.
    Timer (event time): last event time + TTL.
    """

    STATE = ReadModifyWriteStateSpec("stream", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, model_dir: str, config: StreamConfig, classifier: StreamingClassifier | None = None) -> None:
        self._model_dir = model_dir
        self._cfg = config
        self._ttl = Duration(micros=int(round(config.ttl_seconds * 1e6)))
        self._clf = classifier
        self._c = {
            name: _counter(name)
            for name in (
                "events_applied",
                "events_duplicate",
                "events_buffered",
                "dead_lettered",
                "tokens",
                "streams_started",
                "streams_ended",
                "streams_expired",
                "state_cleared",
                "tombstones_cleared",
                "tag_lookahead_exceeded",
                "events_after_close",
            )
        }

    def setup(self) -> None:
        if self._clf is None:
            self._clf = StreamingClassifier.load(self._model_dir, max_pending_chars=self._cfg.max_pending_chars)

    # --- helpers ------------------------------------------------------------------
    def _new_record(self) -> dict[str, Any]:
        self._c["streams_started"].inc()
        return {
            "status": _OPEN,
            "next_seq": self._cfg.first_seq,
            "stream": self._clf.start().to_record(),
            "early": {},
            "early_chars": 0,
            "last_ts": None,
        }

    def _token_records(self, stream_id: str, seq: int | None, predictions: list[Prediction]) -> list[dict[str, Any]]:
        self._c["tokens"].inc(len(predictions))
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

    def _apply(self, stream_id: str, record: dict[str, Any], seq: int, text: str, end: bool, out: list) -> bool:
        """Applies the in-order event `seq`; returns True when it ended the stream."""
        state = StreamState.from_record(record["stream"], self._clf.num_state_arrays)
        forced_before = state.tokenizer.forced_tag_releases
        predictions, state = self._clf.feed(state, text)
        if end:
            more, state = self._clf.finish(state)
            predictions += more
        if state.tokenizer.forced_tag_releases > forced_before:
            self._c["tag_lookahead_exceeded"].inc(state.tokenizer.forced_tag_releases - forced_before)
        out.extend(self._token_records(stream_id, seq, predictions))
        self._c["events_applied"].inc()
        record["next_seq"] = seq + 1
        record["stream"] = state.to_record()
        if end:
            out.append(self._final_record(stream_id, seq, state, reason="end"))
            self._c["streams_ended"].inc()
        return end

    def _close(self, stream_id: str, record: dict[str, Any], reason: str, out: list) -> dict[str, Any]:
        """Dead-letters buffered events that can no longer apply; returns the tombstone."""
        for seq in sorted(record["early"]):
            text, end = record["early"][seq]
            code = REASON_AFTER_END if reason == "end" else REASON_GAP_EXPIRED
            detail = (
                f"seq {seq} is after the end of the stream (seq {record['next_seq'] - 1})"
                if reason == "end"
                else f"stream expired while waiting for seq {record['next_seq']}"
            )
            out.append(_dead(f"{stream_id}:{seq}", {STREAM_ID: stream_id, SEQ: seq, TEXT: text, END: end}, code, detail))
            self._c["dead_lettered"].inc()
        self._c["state_cleared"].inc()
        return {"status": _CLOSED, "next_seq": record["next_seq"], "reason": reason, "last_ts": record["last_ts"]}

    # --- process ----------------------------------------------------------------------
    def process(
        self,
        element: tuple[str, dict[str, Any]],
        timestamp: Any = beam.DoFn.TimestampParam,
        state: Any = beam.DoFn.StateParam(STATE),
        expiry: Any = beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Any]:
        stream_id, event = element
        seq, text, end = event[SEQ], event[TEXT], event[END]
        record = state.read()
        out: list[Any] = []
        ts_micros = Timestamp.of(timestamp).micros
        if record is not None and record["status"] == _CLOSED:
            if seq < record["next_seq"]:
                self._c["events_duplicate"].inc()
            else:
                self._c["events_after_close"].inc()
                self._c["dead_lettered"].inc()
                out.append(
                    _dead(
                        f"{stream_id}:{seq}",
                        {STREAM_ID: stream_id, **event},
                        REASON_STREAM_CLOSED,
                        f"stream {record['reason']} before this event (last seq {record['next_seq'] - 1})",
                    )
                )
            return out  # a tombstone's timer is not extended
        if record is None:
            record = self._new_record()
        record["last_ts"] = ts_micros if record["last_ts"] is None else max(record["last_ts"], ts_micros)

        if seq < record["next_seq"] or seq in record["early"]:
            self._c["events_duplicate"].inc()
        elif seq > record["next_seq"]:
            if len(record["early"]) >= self._cfg.max_buffered_events or record["early_chars"] + len(text) > self._cfg.max_buffered_chars:
                self._c["dead_lettered"].inc()
                out.append(
                    _dead(
                        f"{stream_id}:{seq}",
                        {STREAM_ID: stream_id, **event},
                        REASON_BUFFER_OVERFLOW,
                        f"waiting for seq {record['next_seq']}; early-event buffer full "
                        f"({len(record['early'])} events / {record['early_chars']} chars; limits "
                        f"{self._cfg.max_buffered_events} / {self._cfg.max_buffered_chars})",
                    )
                )
            else:
                record["early"][seq] = (text, end)
                record["early_chars"] += len(text)
                self._c["events_buffered"].inc()
        else:
            ended = self._apply(stream_id, record, seq, text, end, out)
            while not ended and record["next_seq"] in record["early"]:
                nxt = record["next_seq"]
                text_n, end_n = record["early"].pop(nxt)
                record["early_chars"] -= len(text_n)
                ended = self._apply(stream_id, record, nxt, text_n, end_n, out)
            if ended:
                record = self._close(stream_id, record, "end", out)
        state.write(record)
        expiry.set(Timestamp(micros=record["last_ts"]) + self._ttl)
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
        if record["status"] == _CLOSED:
            # The tombstone has lived one TTL: forget the stream entirely.
            state.clear()
            self._c["tombstones_cleared"].inc()
            return []
        out: list[Any] = []
        stream = StreamState.from_record(record["stream"], self._clf.num_state_arrays)
        predictions, stream = self._clf.finish(stream)
        last_seq = record["next_seq"] - 1 if record["next_seq"] > self._cfg.first_seq else None
        out.extend(self._token_records(key, last_seq, predictions))
        reason = f"idle: no event for {self._cfg.ttl_seconds:g} s (stream-ttl)"
        if record["early"]:
            reason += f"; seq {record['next_seq']} never arrived ({len(record['early'])} later events dead-lettered)"
        out.append(self._final_record(key, last_seq, stream, expired=True, reason=reason))
        self._c["streams_expired"].inc()
        tombstone = self._close(key, record, "expired", out)
        state.write(tombstone)
        expiry.set(Timestamp(micros=record["last_ts"]) + self._ttl + self._ttl)
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

    Delivery: duplicates (same stream_id and seq, applied or buffered) change
    nothing; out-of-order events wait (bounded buffer) for the gap to fill.
    Expiry uses an event-time timer at (latest event time of the stream + TTL):
    it fires when the watermark passes it (TestStream's advance_watermark_to;
    Pub/Sub's watermark follows publish time; in a bounded run every open stream
    expires when the input ends).  Counters in namespace ``beam_rnn.stream``
    reconcile: events_in = events_applied + events_duplicate + dead_lettered.
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
        )
        self._use_event_ts = use_event_ts

    def expand(self, events: beam.PCollection) -> dict[str, beam.PCollection]:
        parsed = events | "Parse" >> beam.ParDo(_ParseEventsFn(self._use_event_ts)).with_output_types(
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
        "dead_lettered": get("dead_lettered"),
        "reconciled": get("events_in") == accounted,
    }
