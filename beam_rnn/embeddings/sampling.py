"""Which tokens become CBOW examples: subsampling, rare-word removal, windows, per-document seeds.

Pure NumPy (no TF, no Beam); the module docstring of `beam_rnn.embeddings` states the
decisions these functions implement.
"""

import hashlib
from collections.abc import Sequence

import numpy as np

from beam_rnn.core import constants as C


def keep_probabilities(counts: Sequence[int] | np.ndarray, sample: float | None) -> np.ndarray:
    """Probability of keeping each id under frequent-word subsampling.

    The word2vec C code's formula (Mikolov et al. 2013; gensim uses the same):
    with t = sample * total, an id seen f > 0 times is kept with probability
    ``min(1, (sqrt(f / t) + 1) * t / f)``.  (The paper's ``1 - sqrt(t / f)``
    discard rule is a different, harsher curve; the tools use this one.)

    Args:
        counts: counts[i] = occurrences of id i in the corpus.  Ids that must never
            be kept (padding, OOV, below min_count) should be 0 here: they get
            probability 0 and do not count in `total`.
        sample: The threshold s (word2vec's -sample; `CbowConfig.sample`); None or <= 0
            disables subsampling (every id with a count is kept).

    Returns:
        float64 array of len(counts) with values in [0, 1].
    """
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.zeros(counts.shape, dtype=np.float64)
    present = counts > 0
    if not sample or sample <= 0:
        keep[present] = 1.0
        return keep
    threshold = float(sample) * counts.sum()
    f = counts[present]
    keep[present] = np.minimum(1.0, (np.sqrt(f / threshold) + 1.0) * threshold / f)
    return keep


def trainable_counts(
    counts: Sequence[int] | np.ndarray, *, min_count: int, num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS
) -> np.ndarray:
    """Counts with padding, OOV ids (1..num_oov_buckets) and rare ids zeroed.

    The result is what subsampling, the noise distribution and the export use:
    an id with a non-zero entry is a word that is trained.
    """
    out = np.array(counts, dtype=np.int64, copy=True)
    out[: num_oov_buckets + 1] = 0
    out[out < max(int(min_count), 1)] = 0
    return out


def cbow_windows(
    token_ids: Sequence[int] | np.ndarray,
    window: int,
    keep_prob: Sequence[float] | np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    num_oov_buckets: int = C.DEFAULT_NUM_OOV_BUCKETS,
    dynamic_window: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """CBOW (context, target) examples of one document.

    1. Ids 0 (padding) and 1..num_oov_buckets (OOV) are removed.
    2. Subsampling: with u = rng.random(len(token_ids)) (one draw per input token,
       in order), token i is kept iff keep_prob[id] >= 1 or u[i] < keep_prob[id].
    3. Each kept token is a target; its context is the kept tokens at offsets
       -window..-1, +1..+window in positional slots (0 where out of range).  With
       `dynamic_window`, b = rng.integers(1, window + 1, size=n_kept) (drawn after
       step 2) limits target t's context to offsets |o| <= b[t], like word2vec.
    4. Targets with no context word are dropped.

    Args:
        token_ids: The document's ids.
        window: Context words on each side (>= 1).
        keep_prob: Keep probability per id (`keep_probabilities`); ids with 0 are
            always removed.
        rng: Random generator; required unless every keep_prob is 0 or 1 and
            `dynamic_window` is False.
        num_oov_buckets: k in the id layout.
        dynamic_window: Draw each target's effective window from 1..window.

    Returns:
        (contexts int64 [n, 2*window], targets int64 [n]); row i is one example.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    keep_prob = np.asarray(keep_prob, dtype=np.float64)
    width = 2 * window
    if ids.size and (ids.min() < 0 or ids.max() >= keep_prob.size):
        raise ValueError(f"token ids must be in [0, {keep_prob.size}), got range [{ids.min()}, {ids.max()}]")
    p = np.where(ids > num_oov_buckets, keep_prob[ids] if ids.size else 0.0, 0.0)
    if rng is None:
        if np.any((p > 0) & (p < 1)) or dynamic_window:
            raise ValueError("cbow_windows needs an rng for subsampling or a dynamic window")
        kept = ids[p >= 1]
    else:
        u = rng.random(ids.size)
        kept = ids[(p >= 1) | (u < p)]
    n = kept.size
    if n < 2:
        return np.zeros((0, width), dtype=np.int64), np.zeros((0,), dtype=np.int64)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    pos = np.arange(n)[:, None] + offsets[None, :]
    valid = (pos >= 0) & (pos < n)
    if dynamic_window:
        assert rng is not None
        b = rng.integers(1, window + 1, size=n)
        valid &= np.abs(offsets)[None, :] <= b[:, None]
    contexts = np.where(valid, kept[np.clip(pos, 0, n - 1)], 0)
    has_context = valid.any(axis=1)
    return contexts[has_context].astype(np.int64), kept[has_context].astype(np.int64)


def document_seed(seed: int, doc_id: str | bytes, pass_index: int = 0) -> int:
    """64-bit seed of one document's random stream (sha256, stable across machines/runs)."""
    if isinstance(doc_id, bytes):
        doc_id = doc_id.decode("utf-8", "replace")
    digest = hashlib.sha256(f"{int(seed)}\x00{int(pass_index)}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def noise_distribution(counts: Sequence[int] | np.ndarray, power: float) -> np.ndarray:
    """Negative-sampling distribution ∝ count^power (`CbowConfig.noise_power`) over ids with a non-zero count."""
    c = np.asarray(counts, dtype=np.float64)
    w = np.where(c > 0, np.power(np.maximum(c, 0.0), power), 0.0)
    total = w.sum()
    if total <= 0:
        raise ValueError("noise distribution needs at least one id with a positive count")
    return w / total
