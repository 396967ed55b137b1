"""The session protocol: client messages in, prediction / decision / error frames out.

A message is a JSON object — ``{"text": chunk}``, ``{"finish": true}`` (``text`` may
come with it: append, then finish), ``{"reset": true}`` — or, on a WebSocket, a
binary frame of raw UTF-8 bytes (a multi-byte character may be split across
frames: each session has an incremental decoder).  Every message is answered with
exactly one frame: the prediction after it (`prediction_frame`), or an error
(`error_frame`, the session is unchanged and stays open); when the decision policy
fires, one decision frame follows the prediction, once per text.

The arithmetic is `StreamingClassifier`'s: its tokenizer, its ``max_tokens``, its
`current` and the decision rule of `StreamingClassifier.decide`
(`beam_rnn.core.incremental.decision_index`); only the recurrent step is batched
across sessions (`beam_rnn.service.sessions.Batcher`).
"""

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from beam_rnn.core.incremental import decision_index
from beam_rnn.service.config import ServiceConfig
from beam_rnn.service.metrics import ServiceMetrics
from beam_rnn.service.sessions import Batcher, Session
from beam_rnn.stream.classifier import StreamState
from beam_rnn.stream.events import one_line, repair_text

MESSAGE_KEYS = ("text", "finish", "reset")
SHAPES = '{"text": chunk}, {"finish": true} or {"reset": true}'


class MessageError(Exception):
    """A message that cannot be applied: answered with an error frame, the session unchanged."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Command:
    """One parsed message: text to append (or raw bytes), then possibly the end of the text; or a reset."""

    text: str | None = None
    data: bytes | None = None
    finish: bool = False
    reset: bool = False


def parse_object(message: Any, config: ServiceConfig) -> Command:
    """The `Command` of a decoded JSON message (WebSocket text frame or /v1/stream body).

    Raises:
        MessageError: not an object, unknown or conflicting keys, wrong types, text too long.
    """
    if not isinstance(message, Mapping):
        raise MessageError("not_an_object", f"a message is a JSON object: {SHAPES}")
    unknown = sorted(str(k) for k in message if k not in MESSAGE_KEYS)
    if unknown:
        raise MessageError("unknown_keys", f"unknown key(s) {', '.join(unknown)[:200]}; a message is {SHAPES}")
    if not message:
        raise MessageError("empty_message", f"a message is {SHAPES}")
    if "reset" in message and len(message) > 1:
        raise MessageError("conflicting_keys", "reset goes alone")
    for key in ("finish", "reset"):
        if key in message and message[key] is not True:
            raise MessageError(f"bad_{key}", f"{key} must be true, got {json.dumps(message[key])[:40]}")
    text = message.get("text")
    if "text" in message:
        if not isinstance(text, str):
            raise MessageError("bad_text", f"text must be a string, got {type(text).__name__}")
        if len(text) > config.max_message_chars:
            raise MessageError("text_too_large", f"text of {len(text)} characters; at most {config.max_message_chars}")
        text, _ = repair_text(text)  # lone surrogates (half an emoji) -> U+FFFD, as in stream events
    return Command(text=text, finish=message.get("finish") is True, reset=message.get("reset") is True)


def parse_text_frame(raw: str, config: ServiceConfig) -> Command:
    """The `Command` of a WebSocket text frame (a JSON object)."""
    if len(raw) > config.max_raw_message_chars:
        raise MessageError("message_too_large", f"message of {len(raw)} characters; at most "
                           f"{config.max_raw_message_chars}")
    try:
        message = json.loads(raw)
    except ValueError as e:
        raise MessageError("invalid_json", one_line(e)[:200]) from e
    return parse_object(message, config)


def parse_binary_frame(data: bytes, config: ServiceConfig) -> Command:
    """The `Command` of a WebSocket binary frame (raw UTF-8 text, decoded per session when applied)."""
    if len(data) > 4 * config.max_message_chars:  # 4 bytes: the longest UTF-8 character
        raise MessageError("text_too_large", f"binary chunk of {len(data)} bytes; at most "
                           f"{4 * config.max_message_chars}")
    return Command(data=data)


def error_frame(reason: str, detail: str, seq: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "reason": reason, "detail": detail}
    if seq is not None:
        frame["seq"] = seq
    return frame


def prediction_frame(current: Mapping[str, Any], *, final: bool, seq: int) -> dict[str, Any]:
    """``{"type": "prediction", tokens_seen, predicted_label, predicted_label_name, probabilities, final, seq}``."""
    return {"type": "prediction", "tokens_seen": current["tokens_seen"],
            "predicted_label": current["predicted_label"], "predicted_label_name": current["predicted_label_name"],
            "probabilities": current["probabilities"], "final": final, "seq": seq}


def _top_probabilities(probs: np.ndarray, num_classes: int) -> list[float]:
    """The top class probability after each row of probabilities (`beam_rnn.stream.step.probabilities` of the
    logits), as `StreamingClassifier.decide` reads it."""
    if num_classes == 2:
        return [max(1.0 - p, p) for p in (float(v) for v in probs[:, 0])]
    return [max(float(v) for v in row) for row in probs]


class Streams:
    """Applies messages to sessions: tokenise, step (batched), decide, answer."""

    def __init__(self, config: ServiceConfig, batcher: Batcher, metrics: ServiceMetrics):
        self.config = config
        self.batcher = batcher
        self.metrics = metrics

    def current(self, session: Session) -> dict[str, Any]:
        """The session's prediction now (what GET /v1/stream/{id} answers)."""
        return prediction_frame(session.classifier.current(session.state), final=False, seq=session.messages)

    async def answer(self, session: Session, message: Any) -> list[dict[str, Any]]:
        """The frames answering one client message: a WebSocket ``receive`` dict (text/bytes) or a decoded JSON body.

        Never raises for a bad message (an error frame); closed sessions get no frames.
        """
        session.messages += 1
        seq = session.messages
        try:
            if isinstance(message, Mapping) and message.get("type") == "websocket.receive":
                if message.get("bytes") is not None:
                    command = parse_binary_frame(message["bytes"], self.config)
                else:
                    command = parse_text_frame(message.get("text") or "", self.config)
            else:
                command = parse_object(message, self.config)
            return await self.apply(session, command, seq)
        except MessageError as e:
            self.metrics.errors.labels(e.reason).inc()
            return [error_frame(e.reason, e.detail, seq)]

    def _text(self, session: Session, command: Command) -> str:
        """The text a command appends, through the session's UTF-8 decoder (bytes split anywhere)."""
        decoder = session.decoder
        try:
            if command.data is not None:
                text = decoder.decode(command.data)
            else:
                if decoder.getstate()[0]:
                    raise UnicodeDecodeError("utf-8", decoder.getstate()[0], 0, 1,
                                             "a JSON message arrived inside a split UTF-8 sequence")
                text = command.text or ""
            if command.finish:
                text += decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            decoder.reset()  # the pending bytes can never become valid
            raise MessageError("invalid_utf8", one_line(e)[:200]) from e
        return text

    async def apply(self, session: Session, command: Command, seq: int) -> list[dict[str, Any]]:
        classifier = session.classifier
        if command.reset:
            session.restart()
            return [self.current(session)]
        text = self._text(session, command)
        state = session.state
        words, tokenizer = classifier.tokenizer.feed(state.tokenizer, text)
        if command.finish:
            more, tokenizer = classifier.tokenizer.finish(tokenizer)
            words += more
        room = len(words) if classifier.max_tokens is None else max(0, classifier.max_tokens - state.tokens_seen)
        ids = [classifier.token_id(word) for word in words[:room]]
        logits, probs = await self.batcher.step(session, ids)
        if session.closed:  # closed (idle timeout, DELETE, shutdown) while its tokens were stepped
            return []
        self.metrics.tokens += len(ids)
        new = session.advanced(tokenizer, logits, len(words) - len(ids))
        if len(probs):  # StreamingClassifier.current, with the probabilities the batcher computed for the round
            current = {**classifier._outcome(new.logits, probs[-1]),  # pylint: disable=protected-access
                       "tokens_seen": new.tokens_seen}
        else:
            current = classifier.current(new)
        frames = [prediction_frame(current, final=command.finish, seq=seq)]
        if self.config.decide_at is not None and not new.decided_at and len(logits):
            positions = list(range(state.tokens_seen + 1, new.tokens_seen + 1))
            tops = _top_probabilities(probs, classifier.num_classes)
            i = decision_index(tops, positions, self.config.decide_at, self.config.min_tokens)
            if i is not None:
                fired = classifier.current(StreamState(rnn=(), logits=logits[i], tokens_seen=positions[i]))
                frames.append({"type": "decision", "position": positions[i],
                               "predicted_label_name": fired["predicted_label_name"], "probability": tops[i]})
                new = dataclasses.replace(new, decided_at=positions[i])
        session.state = new
        if command.finish:
            session.restart()
        return frames
