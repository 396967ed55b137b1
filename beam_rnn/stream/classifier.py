"""`StreamingClassifier`: per-token predictions of the exported streaming model, in NumPy.

Pure Python + NumPy (no TensorFlow anywhere, so no TF in the hot loop).  It loads an
exported streaming model directory (``step_weights.npz``, ``vocab.txt``,
``preprocess_config.json``, ``model_card.json``), verified against its
``manifest.json``; replays the directory's tokenizer golden file
(`beam_rnn.core.spec.GOLDEN_FILE`: texts -> ids of the exported graph) and refuses to
start on any difference; tokenises text incrementally exactly like the TFT graph
(`beam_rnn.stream.tokenizer`) and advances the recurrent state one token at a time
(`beam_rnn.stream.step`).  After the last token its prediction equals the exported
``serving_default`` signature on the same text (to float32 rounding, <= 1e-5).
"""

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from beam_rnn.core import constants as C
from beam_rnn.core import spec
from beam_rnn.core.artifacts import (  # ModelDirError: the one model-directory error (an ArtifactError)
    ModelDirError,
    join_path,
    path_exists,
    read_bytes,
    read_model_card,
)
from beam_rnn.core.incremental import decision_index
from beam_rnn.core.manifest import ArtifactError, verify_manifest
from beam_rnn.core.outputs import class_names, prediction_fields
from beam_rnn.stream import step as rnn_step
from beam_rnn.stream.events import one_line
from beam_rnn.stream.tokenizer import (
    DEFAULT_MAX_PENDING_CHARS,
    DEFAULT_MAX_WORD_CHARS,
    StreamTokenizer,
    TokenizerState,
    Vocabulary,
)

VOCAB_TEXT_FILE = "vocab.txt"  # = beam_rnn.train.export.VOCAB_TEXT_FILE (export imports TF)

@dataclasses.dataclass(frozen=True)
class Prediction:
    """The classifier's output after one more token.

    The names are the project's output vocabulary (`beam_rnn.core.outputs`).

    Attributes:
        token: The (standardised) word, or None when stepped by id.
        token_id: Its id.
        predicted_label: Predicted class id.
        predicted_label_name: Its name (the model card's, or str(id) for int labels).
        probabilities: {class name: probability} for every class.
        tokens_seen: Tokens consumed by the stream so far (this one included).
    """

    token: str | None
    token_id: int
    predicted_label: int
    predicted_label_name: str
    probabilities: dict[str, float]
    tokens_seen: int

    @property
    def probability(self) -> float | list[float]:
        """P(class 1) for a binary model, the list of class probabilities otherwise (the 0.1 name)."""
        values = list(self.probabilities.values())
        return values[1] if len(values) == 2 else values

    @property
    def label(self) -> int:
        """`predicted_label` (the 0.1 name)."""
        return self.predicted_label

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
    decided_at: int = 0  # token position of the stream's decision (`StreamingClassifier.decide`); 0: none yet

    def to_record(self) -> dict[str, Any]:
        """Plain-type form for Beam state (float32 bytes for the arrays)."""
        return {
            "rnn": np.concatenate(self.rnn).astype(np.float32).tobytes(),
            "logits": np.asarray(self.logits, np.float32).tobytes(),
            "tok": self.tokenizer.to_tuple(),
            "seen": self.tokens_seen,
            "dropped": self.tokens_dropped,
            "decided": self.decided_at,
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
            decided_at=int(record.get("decided", 0)),  # absent in states written before decisions existed
        )


# What `StreamingClassifier.load` reads; checked against the directory's manifest first.
MODEL_FILES = (C.STEP_WEIGHTS_FILE, VOCAB_TEXT_FILE, C.PREPROCESS_CONFIG_FILE)


def _parse_preprocess_config(data: bytes) -> tuple[int, int | None]:
    """``(num_oov_buckets, max_tokens)`` of ``preprocess_config.json``; ValueError when invalid."""
    config = json.loads(data.decode("utf-8"))
    if not isinstance(config, dict):
        raise ValueError("not a JSON object")
    num_oov_buckets = int(config.get("num_oov_buckets") or 1)
    if num_oov_buckets < 1:
        raise ValueError(f"num_oov_buckets={num_oov_buckets}")
    max_tokens = config.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r}")
    return num_oov_buckets, max_tokens


def _parse_golden(data: bytes) -> tuple[list[str], list[list[int]]]:
    """``(texts, ids)`` of the golden file (`beam_rnn.train.golden`); ValueError / KeyError when invalid."""
    golden = json.loads(data.decode("utf-8"))
    texts, ids = golden["texts"], golden["ids"]
    if not isinstance(texts, list) or not isinstance(ids, list) or len(texts) != len(ids):
        raise ValueError("'texts' and 'ids' must be lists of one length")
    return texts, ids


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
        self.class_names = class_names(self.label_names, self.num_classes)
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
        if "://" not in model_dir and not os.path.isdir(model_dir):
            raise ModelDirError(f"Model directory {model_dir} does not exist.")

        def join(name: str) -> str:
            return join_path(model_dir, name)

        card: dict[str, Any] = {}
        card_error: str | None = None
        if path_exists(join(C.MODEL_CARD_FILE)):
            try:
                card = read_model_card(model_dir)
            except ModelDirError as e:  # reported after the manifest check, which names a damaged file first
                card_error = one_line(e)
            # A model of another kind gets its own message (its manifest has no step weights).
            if card.get("kind") not in (None, C.MODEL_LSTM):
                raise ModelDirError(
                    f"{model_dir} holds a {card.get('kind')!r} model; only the streaming {C.MODEL_LSTM!r} "
                    "model can predict token by token."
                )
        if not path_exists(join(C.STEP_WEIGHTS_FILE)):
            raise ModelDirError(
                f"No {C.STEP_WEIGHTS_FILE} in {model_dir}: not an exported streaming ({C.MODEL_LSTM!r}) model."
            )
        try:
            verify_manifest(
                model_dir,
                prefixes=[*MODEL_FILES, C.MODEL_CARD_FILE, spec.GOLDEN_FILE],
                required=MODEL_FILES,
                what="streaming model",
            )
        except ArtifactError as e:
            raise ModelDirError(one_line(e)) from e
        if card_error is not None:  # listed in the manifest and intact, yet unreadable: a bad export
            raise ModelDirError(card_error)

        def damaged(name: str, e: BaseException) -> ModelDirError:
            return ModelDirError(f"streaming model {model_dir}: {name} is damaged: {one_line(e)}")

        try:
            weights = rnn_step.StepWeights.from_dict(rnn_step.read_npz(read_bytes(join(C.STEP_WEIGHTS_FILE))))
        except (ValueError, OSError, MemoryError) as e:
            raise damaged(C.STEP_WEIGHTS_FILE, e) from e
        try:
            num_oov_buckets, max_tokens = _parse_preprocess_config(read_bytes(join(C.PREPROCESS_CONFIG_FILE)))
        except (ValueError, TypeError, OSError, UnicodeDecodeError) as e:
            raise damaged(C.PREPROCESS_CONFIG_FILE, e) from e
        try:
            vocabulary = Vocabulary.from_bytes(read_bytes(join(VOCAB_TEXT_FILE)), num_oov_buckets)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            raise damaged(VOCAB_TEXT_FILE, e) from e
        classifier = cls(
            weights,
            vocabulary,
            max_tokens=max_tokens,
            label_names=card.get("label_names"),
            max_pending_chars=max_pending_chars,
            max_word_chars=max_word_chars,
            model_dir=model_dir,
        )
        if path_exists(join(spec.GOLDEN_FILE)):  # every export writes one (older ones did not)
            try:
                texts, ids = _parse_golden(read_bytes(join(spec.GOLDEN_FILE)))
            except (ValueError, TypeError, KeyError, OSError, UnicodeDecodeError) as e:
                raise damaged(spec.GOLDEN_FILE, e) from e
            classifier.replay_golden(texts, ids)
        return classifier

    def replay_golden(self, texts: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
        """Tokenises each golden text whole and in 3-character chunks; raises on the first difference.

        The golden ids come from the exported graph (`beam_rnn.train.golden`).  The
        chunked pass uses bounds no golden text reaches, so it must be exact too.

        Raises:
            ModelDirError: naming `spec.GOLDEN_FILE` and the first text whose ids differ.
        """
        bound = max((len(t) for t in texts), default=0) + 1
        exact = StreamTokenizer(bound, bound)
        for i, (text, want) in enumerate(zip(texts, ids)):
            whole = self.text_ids(text)
            words, state = [], TokenizerState()
            for start in range(0, len(text), 3):
                done, state = exact.feed(state, text[start : start + 3])
                words += done
            words += exact.finish(state)[0]
            chunked = [self.vocabulary.id(w) for w in words][: self.max_tokens]
            if whole != list(want) or chunked != list(want):
                got = whole if whole != list(want) else chunked
                raise ModelDirError(
                    f"streaming model {self.model_dir}: {spec.GOLDEN_FILE}: the NumPy tokenizer disagrees with the "
                    f"exported graph on text {i} {text[:80]!r} ({'whole' if got is whole else 'in chunks'}: "
                    f"graph ids {list(want)[:12]}, NumPy ids {got[:12]}); refusing to start"
                )

    # --- helpers --------------------------------------------------------------
    def _outcome(self, logits: np.ndarray, probs: np.ndarray | None = None) -> dict[str, Any]:
        """``{predicted_label, predicted_label_name, probabilities}`` of one row of logits."""
        probs = rnn_step.probabilities(logits, self.num_classes) if probs is None else probs
        if self.num_classes == 2:
            return prediction_fields(float(probs[0]), int(logits[0] > 0.0), self.class_names)
        return prediction_fields([float(p) for p in probs], int(np.argmax(logits)), self.class_names)

    def _advance(self, state: StreamState, token: str | None, token_id: int) -> tuple[Prediction, StreamState]:
        logits, rnn = rnn_step.step(self.weights, token_id, state.rnn)
        seen = state.tokens_seen + 1
        new = dataclasses.replace(state, rnn=tuple(rnn), logits=logits, tokens_seen=seen)
        return Prediction(token=token, token_id=int(token_id), tokens_seen=seen, **self._outcome(logits)), new

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
        words = spec.tokenize(token)
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

    @staticmethod
    def decide(state: StreamState, predictions: Sequence[Prediction], decide_at: float,
               min_tokens: int = 1) -> tuple[Prediction | None, StreamState]:
        """The decision policy: the first of `predictions` whose top class probability reaches `decide_at`
        after at least `min_tokens` tokens, once per stream.

        Returns:
            (the prediction the decision fires on, or None; the state, which remembers
            the decision's token position so it never fires twice).
        """
        if state.decided_at:
            return None, state
        i = decision_index([max(p.probabilities.values()) for p in predictions],
                           [p.tokens_seen for p in predictions], decide_at, min_tokens)
        if i is None:
            return None, state
        return predictions[i], dataclasses.replace(state, decided_at=predictions[i].tokens_seen)

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
            predictions.append(Prediction(token=words[i], token_id=int(ids[i]), tokens_seen=seen,
                                          **self._outcome(logits[i], probs[i])))
            new_states.append(
                dataclasses.replace(state, rnn=tuple(a[i] for a in new), logits=logits[i], tokens_seen=seen)
            )
        return predictions, new_states

    def step_batch_arrays(self, ids: np.ndarray, batch_state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The raw batched step on stacked ``[batch, units]`` arrays (for callers that keep them stacked)."""
        return rnn_step.step_batch(self.weights, np.asarray(ids, dtype=np.int64), batch_state)

    def current(self, state: StreamState) -> dict[str, Any]:
        """The prediction for everything consumed so far (`beam_rnn.core.outputs` names, and tokens_seen)."""
        return {**self._outcome(state.logits), "tokens_seen": state.tokens_seen}

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a complete text (the non-streaming mirror of the ``tokenize`` signature)."""
        return [self.vocabulary.id(w) for w in spec.tokenize(text, self.max_tokens)]

    def predict_ids(self, ids: Sequence[int]) -> dict[str, Any]:
        """NumPy full pass over a whole id sequence (what a re-run on the prefix costs)."""
        state = list(self._zero)
        logits = self._zero_logits
        for token_id in ids:
            logits, state = rnn_step.step(self.weights, int(token_id), state)
        return self._outcome(logits)

    def predict_text(self, text: str) -> dict[str, Any]:
        """Full-pass prediction of one complete text (equals ``serving_default`` to float32 rounding)."""
        return self.predict_ids(self.text_ids(text))
