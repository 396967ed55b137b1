"""The tokenisation spec: how raw text becomes token ids, written down once (no TF, no Beam).

Read by the three implementations, which must agree id for id:

* the TFT graph (`beam_rnn.preprocess.tft_graph.standardize` / `tokenize`: training
  data and the exported SavedModel's ``tokenize`` / ``serving_default``),
* the ``model.keras`` rebuild (`beam_rnn.train.export.keras_standardize`),
* the NumPy streaming tokenizer (`beam_rnn.stream.tokenizer`).

On a complete text (UTF-8):

1. ASCII lower-casing: ``A-Z`` only, like ``tf.strings.lower`` (``str.lower`` would
   also lower ``É``, ``Σ``..., so it is NOT the definition).
2. `HTML_TAG_REGEX` -> ``" "`` (RE2 / `re`, leftmost, global; ``[^>]`` also matches
   newlines).  A ``<`` with no ``>`` after it is not a tag: step 3 removes it.
3. `PUNCTUATION_REGEX` -> ``""``: ASCII punctuation removed.
4. Split on `WHITESPACE` only: what ``tf.strings.split`` with no separator splits on
   (``absl::ascii_isspace``), measured on TF 2.21 over U+0000..U+007F and every
   Unicode space.  Python's ``str.split()`` also splits on U+001C..U+001F, U+0085,
   U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F and U+3000, so
   it is NOT the definition.
5. Optionally keep the first ``max_tokens`` tokens.

Id layout (ready for ``Embedding(mask_zero=True)``): `PAD_ID` 0 = padding,
1..k = out-of-vocabulary buckets (`oov_id`: FarmHash ``Fingerprint64(utf8) % k + 1``,
the hash TFT's StaticVocabularyTable uses through ``tf.strings.to_hash_bucket_fast``),
words from k + 1 (`first_word_id`), most frequent first.

Every exported model directory holds `GOLDEN_FILE`: texts -> ids produced by its own
graph, replayed by the streaming classifier before it starts.
"""

import re

# The tutorial's TextVectorization standardisation ("lower_and_strip_punctuation") uses
# exactly this pattern; HTML tags are stripped as well because IMDB reviews carry
# `<br />` tags that would otherwise become the token "br".
PUNCTUATION_REGEX = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
HTML_TAG_REGEX = r"<[^>]*>"
# What tf.strings.split(sep=None) splits on (absl::ascii_isspace), measured.
WHITESPACE = " \t\n\x0b\x0c\r"

PAD_ID = 0

# texts -> ids of the exported graph, written by export into every model directory.
GOLDEN_FILE = "tokenizer_golden.json"

LOWER_ASCII = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
TAG_RE = re.compile(HTML_TAG_REGEX)
PUNCT_RE = re.compile(PUNCTUATION_REGEX)
WHITESPACE_RE = re.compile("[" + re.escape(WHITESPACE) + "]+")


def lower_ascii(text: str) -> str:
    """Step 1: ``A-Z`` -> ``a-z``, nothing else."""
    return text.translate(LOWER_ASCII)


def standardize(text: str) -> str:
    """Steps 1-3 on a complete text: ASCII lower, tags -> " ", punctuation removed."""
    return PUNCT_RE.sub("", TAG_RE.sub(" ", lower_ascii(text)))


def split_whitespace(text: str) -> list[str]:
    """Step 4: split on `WHITESPACE` only, empty pieces dropped."""
    return [w for w in WHITESPACE_RE.split(text) if w]


def tokenize(text: str, max_tokens: int | None = None) -> list[str]:
    """Steps 1-5 on one complete text."""
    words = split_whitespace(standardize(text))
    return words if max_tokens is None else words[:max_tokens]


def first_word_id(num_oov_buckets: int) -> int:
    """Id of the most frequent vocabulary word (the word at index i has id i + this)."""
    return num_oov_buckets + 1


def oov_id(word: str, num_oov_buckets: int) -> int:
    """The OOV bucket id (1..k) of a word not in the vocabulary."""
    if num_oov_buckets == 1:
        return 1
    # surrogatepass: a lone surrogate (possible in JSON input) cannot reach TF at all;
    # hashing its CESU-like bytes at least keeps this function total.
    return fingerprint64(word.encode("utf-8", "surrogatepass")) % num_oov_buckets + 1


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
