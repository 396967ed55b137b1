"""The tokenizer golden file of an export: texts -> ids produced by the exported graph itself.

`export_model` writes `beam_rnn.core.spec.GOLDEN_FILE` into every model directory:
adversarial texts (tags split across lines, Unicode spaces that are not separators,
upper case outside ASCII, punctuation runs, OOV words, empty texts, very long
words) and texts made of the model's own vocabulary, each with the ids the staged
SavedModel's ``tokenize`` signature (reloaded from disk) gives it.  `beam_rnn.stream.StreamingClassifier.load`
replays the file with its NumPy tokenizer and refuses to start on any difference,
so a model is never served by a tokenizer that disagrees with its own graph.

Format (JSON)::

    {"format_version": 1, "texts": [str, ...], "ids": [[int, ...], ...]}
"""

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.core import spec

GOLDEN_FORMAT_VERSION = 1

# Every definition of tokenisation has been wrong on one of these at some point.
ADVERSARIAL_TEXTS = (
    "",
    " ",
    "\t\n",
    "Good movie, GREAT plot!<br /><br />The actor... was fine.",
    "end.<br />Next",
    "plot<br\nclass='x'>twist",  # a tag spanning a newline
    "<<<>>> good <> bad >< film",
    "good>bad",
    "a < b and good",
    "a<b",
    "x <y <z",
    "tag at end <",
    "unclosed <b tag with good words",
    "<i>awful</i> film; poor plot & 'bad' actor -- of the a and",
    "good\u00a0movie",  # NBSP: not a separator for tf.strings.split
    "good\u2003movie\u3000plot\u2028film\u0085actor\u200bthe\ufeffend",
    "good\x1cmovie\x1dplot\x1efilm\x1fthe",  # str.split() would split these
    "good\x0bmovie\x0cplot\rfilm\tthe\nend",  # these are TF separators
    "ÉCOLE École ÀB movie İstanbul ẞ ΣΊΣΥΦΟΣ ＧＯＯＤ",
    "café cafe\u0301 naïve 😀 film",
    "... !!! ??? -- good",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "it's [a] {test} a.b,c;d:e!f?g",
    "nul\x00byte del\x7fchar",
    "  leading and trailing  ",
    "zzqx unknownword qqwertyzz xyzzy frobnicate",
    "x" * 1000,
    "good " + "ab" * 400 + " film",
)


def golden_texts(vocabulary: Sequence[str]) -> list[str]:
    """`ADVERSARIAL_TEXTS` plus texts of the model's own words (ids past the OOV buckets, truncation)."""
    words = list(vocabulary[:60])
    texts = list(ADVERSARIAL_TEXTS)
    if words:
        texts += [
            " ".join(words),
            ", ".join(w.upper() for w in words[:20]) + "!",
            "<br />".join(words[:20]),
            "\u00a0".join(words[:5]) + "\t" + "\u2003".join(words[5:10]),
            " ".join(w + "zz" for w in words[:10]),
        ]
    return texts


def write_tokenizer_golden(staging: str, vocabulary: Sequence[str], tokenize: Callable[..., Any]) -> str:
    """Writes `spec.GOLDEN_FILE` into `staging`; returns the file name.

    Args:
        staging: The export's staging directory.
        vocabulary: The model's words (for the in-vocabulary texts).
        tokenize: The ``tokenize`` signature of the SavedModel written in `staging`,
            reloaded from disk (``text`` -> ``token_ids``, ``lengths``): every text
            goes through it in one batch.
    """
    texts = golden_texts(vocabulary)
    out = tokenize(text=tf.constant(texts))
    ids, lengths = out[C.TOKEN_IDS_KEY].numpy(), out["lengths"].numpy()
    record = {
        "format_version": GOLDEN_FORMAT_VERSION,
        "texts": texts,
        "ids": [row[:n].tolist() for row, n in zip(ids, lengths)],
    }
    with open(os.path.join(staging, spec.GOLDEN_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=True) + "\n")
    return spec.GOLDEN_FILE
