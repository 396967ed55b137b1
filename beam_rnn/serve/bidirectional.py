"""A bidirectional classifier's predictions on many prefixes of a text, in NumPy (issue 15).

A BiLSTM has no per-token state: its prediction after ``t`` tokens needs the
backward direction re-run over tokens ``t .. 1``.  Re-running the whole model on
every prefix (``classify_ids`` per prefix) also re-runs the forward direction,
although the forward state after ``t`` tokens is the same for every prefix that
contains them.  `PrefixBidirectional` computes, for any set of prefix lengths per
document:

* the forward direction ONCE per document, reading its state at every wanted length;
* the backward direction once per prefix, all prefixes of a batch of documents
  together, longest first, so the rows still running at backward step ``s`` are a
  leading slice of the batch (no padded work, no masks to carry);
* the dense head on ``[forward h, backward h]`` (Keras ``Bidirectional``'s concat).

Cost: ``n`` forward steps plus ``sum(t)`` backward row-steps, against
``2 * sum(t)`` (plus padding) for the restart.  The maths is `beam_rnn.stream.step`'s
cell update (float32, tf_keras gate order), read from the SavedModel's variables, so
the results equal ``classify_ids`` on each prefix up to float32 rounding (the test
checks 1e-4).  Only single-layer bidirectional models (the tutorial's BiLSTM, any
cell) are supported; `from_module` returns None for others (``--stacked``), whose
callers re-run the model on each prefix instead.
"""

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from beam_rnn.stream import step as rnn_step

# Variable names of a single Bidirectional layer built by `beam_rnn.train.models`.
_RNN = re.compile(r"^rnn_0/(forward|backward)_rnn_0_(forward|backward)/(lstm|gru|simple_rnn)_cell/"
                  r"(kernel|recurrent_kernel|bias):0$")
MAX_ROWS = 16384  # prefixes computed together (state, gates: ~6 KB a row at 64 units)
_HEAD = {"embedding/embeddings:0": "embedding", "dense_hidden/kernel:0": "dense_kernel",
         "dense_hidden/bias:0": "dense_bias", "logits/kernel:0": "logits_kernel", "logits/bias:0": "logits_bias"}


class _Direction:
    """One direction's cell: its input table (embedding @ kernel + input bias), recurrent kernel and bias."""

    def __init__(self, cell: str, embedding: np.ndarray, arrays: dict[str, np.ndarray]):
        self.cell = cell
        self.recurrent_kernel = arrays["recurrent_kernel"]
        self.bias = arrays["bias"]
        self.table = np.ascontiguousarray(
            embedding @ arrays["kernel"] + rnn_step._input_bias(cell, self.bias), dtype=np.float32)  # pylint: disable=protected-access

    def initial(self, rows: int) -> list[np.ndarray]:
        width = self.recurrent_kernel.shape[0]
        return [np.zeros((rows, width), np.float32) for _ in range(rnn_step.num_states_per_layer(self.cell))]

    def advance(self, token_ids: np.ndarray, states: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One step for every row; a padding id (0) keeps its row's state, as Keras masking does."""
        new = rnn_step._cell(self.cell, self.table[token_ids], states, self.recurrent_kernel, self.bias)  # pylint: disable=protected-access
        keep = token_ids != 0
        if keep.all():
            return new
        return [np.where(keep[:, None], n, old) for n, old in zip(new, states)]


class PrefixBidirectional:
    """Logits of a single-layer bidirectional classifier on chosen prefixes of each document."""

    def __init__(self, cell: str, arrays: dict[str, Any], num_classes: int):
        self.num_classes = num_classes
        embedding = arrays["embedding"]
        self.forward = _Direction(cell, embedding, arrays["forward"])
        self.backward = _Direction(cell, embedding, arrays["backward"])
        self._head = [arrays[k] for k in ("dense_kernel", "dense_bias", "logits_kernel", "logits_bias")]

    @classmethod
    def from_variables(cls, variables: Sequence[Any], num_classes: int) -> "PrefixBidirectional | None":
        """From a SavedModel's ``model_variables`` (name, value); None unless it is one Bidirectional layer."""
        arrays: dict[str, Any] = {"forward": {}, "backward": {}}
        cells = set()
        for variable in variables:
            name = variable.name
            value = np.asarray(variable.numpy(), dtype=np.float32)
            match = _RNN.match(name)
            if match:
                cells.add(match.group(3))
                arrays[match.group(1)][match.group(4)] = value
            elif name in _HEAD:
                arrays[_HEAD[name]] = value
            elif name.startswith("rnn_"):  # a second recurrent layer (--stacked): not supported
                return None
        complete = all(len(arrays[d]) == 3 for d in ("forward", "backward")) and all(k in arrays for k in _HEAD.values())
        if len(cells) != 1 or not complete:
            return None
        return cls(cells.pop(), arrays, num_classes)

    @classmethod
    def from_module(cls, module: Any, num_classes: int) -> "PrefixBidirectional | None":
        """From a loaded SavedModel module (the export tracks the classifier's ``model_variables``)."""
        return cls.from_variables(getattr(module, "model_variables", ()), num_classes)

    def logits(self, ids: np.ndarray, cuts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per document i, the logits ``[len(cuts[i]), out]`` after each of its prefix lengths ``cuts[i]``.

        `ids` is ``[N, T]`` right-padded token ids; a cut of 0 is the empty text.  Documents
        go through in groups of at most `MAX_ROWS` prefixes (one document may exceed it
        alone), so memory is bounded whatever the batch: every prefix of 256 long reviews
        would otherwise be ~10^5 rows of state at once.
        """
        out: list[np.ndarray] = []
        start = 0
        while start < len(cuts):
            end, rows = start + 1, len(cuts[start])
            while end < len(cuts) and rows + len(cuts[end]) <= MAX_ROWS:
                rows += len(cuts[end])
                end += 1
            out += self._group_logits(ids[start:end], cuts[start:end])
            start = end
        return out

    def _group_logits(self, ids: np.ndarray, cuts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        docs = np.array([i for i, c in enumerate(cuts) for _ in c], dtype=np.int64)
        ends = np.array([t for c in cuts for t in c], dtype=np.int64)
        rows = len(ends)
        units = self.forward.recurrent_kernel.shape[0]
        forward_h = np.zeros((rows, units), np.float32)
        backward_h = np.zeros((rows, units), np.float32)
        if rows:
            self._forward(ids, docs, ends, forward_h)
            self._backward(ids, docs, ends, backward_h)
        logits = self._apply_head(np.concatenate([forward_h, backward_h], axis=1))
        bounds = np.cumsum([0] + [len(c) for c in cuts])
        return [logits[bounds[i]:bounds[i + 1]] for i in range(len(cuts))]

    def _forward(self, ids: np.ndarray, docs: np.ndarray, ends: np.ndarray, out: np.ndarray) -> None:
        """The forward h of each row's document after ``ends`` tokens: one pass per document."""
        used = np.unique(docs)
        local = np.searchsorted(used, docs)  # row -> position among the used documents
        states = self.forward.initial(len(used))
        by_end: dict[int, list[int]] = {}
        for r, t in enumerate(ends.tolist()):
            by_end.setdefault(t, []).append(r)
        for t in range(1, int(ends.max()) + 1):
            states = self.forward.advance(ids[used, t - 1], states)
            wanted = by_end.get(t)
            if wanted:
                out[wanted] = states[0][local[wanted]]

    def _backward(self, ids: np.ndarray, docs: np.ndarray, ends: np.ndarray, out: np.ndarray) -> None:
        """The backward h of each row's prefix (tokens end-1 .. 0): every prefix at once, longest first."""
        order = np.argsort(-ends, kind="stable")
        d, e = docs[order], ends[order]
        active = np.searchsorted(-e, -np.arange(1, int(e[0]) + 1), side="right")  # rows with e > s, per step s
        states = self.backward.initial(len(order))
        for s, k in enumerate(active.tolist()):
            tokens = ids[d[:k], e[:k] - 1 - s]
            for state, new in zip(states, self.backward.advance(tokens, [x[:k] for x in states])):
                state[:k] = new  # rows past k have read their whole prefix: their state is final
        out[order] = states[0]

    def _apply_head(self, features: np.ndarray) -> np.ndarray:
        dense_kernel, dense_bias, logits_kernel, logits_bias = self._head
        hidden = np.maximum(features @ dense_kernel + dense_bias, np.float32(0.0))
        return hidden @ logits_kernel + logits_bias
