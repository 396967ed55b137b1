"""`ServiceConfig`: the settings of ``beam-rnn serve`` and the one home of their defaults.

Each field is also a flag of ``beam-rnn serve`` (`beam_rnn.cli.flags.option`), so the
command line, its ``--help``, the README table and the library cannot disagree.
No Beam, no TF, no web framework.
"""

import dataclasses
import ipaddress

from beam_rnn.cli.flags import check_options, option
from beam_rnn.core.errors import InputError
from beam_rnn.stream.config import DEFAULT_MAX_EVENT_CHARS, max_raw_event_chars
from beam_rnn.stream.tokenizer import DEFAULT_MAX_PENDING_CHARS

LOOPBACK_NAMES = ("localhost",)
MAX_WORKERS = 64  # a process per worker, each with its own copy of the models


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Settings of the prediction service (`beam_rnn.service.app.create_app`).

    Attributes:
        host: Address to listen on (loopback unless `allow_remote`).
        port: TCP port (0: a free one, printed on the serving line).
        allow_remote: Permit a `host` that other machines can reach.
        decide_at: The decision policy's threshold (None: no decision frames;
            `StreamingClassifier.decide`).
        min_tokens: The policy's earliest token position.
        max_sessions: Open sessions (WebSocket and HTTP stream together) at most, in the whole service
            (with `workers` > 1 a count the workers share, `beam_rnn.service.workers.SessionQuota`).
        session_ttl: Close a session idle (no client message) for this many seconds.
        max_message_chars: Longest text of one message (a WebSocket chunk, an HTTP stream
            chunk, one text of /v1/classify), the semantics of ``stream --max-event-chars``;
            a raw message longer than `max_raw_event_chars` is refused unparsed.
        max_classify_texts: Texts in one /v1/classify request at most.
        max_body_bytes: Largest HTTP request body and WebSocket frame (larger ones are refused unread).
        max_pending_chars: Text a session holds after an unclosed ``<``.
        watch: Poll the model directories' manifest.json every this many seconds and
            reload when one changes (None: reload on SIGHUP only).
        workers: Server processes sharing the listening socket (`beam_rnn.service.workers`).
    """

    host: str = option("127.0.0.1", "Address to listen on. Anything but a loopback address needs --allow-remote.")
    port: int = option(8080, "TCP port; 0 picks a free one (printed on the serving line).", minimum=0, maximum=65535)
    allow_remote: bool = option(False, "Allow a --host that other machines can reach (the service has no "
                                "authentication).")
    decide_at: float | None = option(
        None, "Decision policy: send one decision frame per text when the top class probability first reaches P "
        "(with the token position).", metavar="P", show_default="no decision", greater_than=0.0, maximum=1.0)
    min_tokens: int = option(1, "With --decide-at: no decision before this many tokens.", minimum=1)
    max_sessions: int = option(10000, "Open sessions (WebSocket and /v1/stream) at most, in all workers together; "
                               "a new WebSocket beyond it is closed with code 1013.", minimum=1)
    session_ttl: float = option(300.0, "Close a session idle for this many seconds (WebSocket code 1001).",
                                metavar="SECONDS", greater_than=0.0)
    max_message_chars: int = option(
        DEFAULT_MAX_EVENT_CHARS, "Longest text of one message or of one /v1/classify text; longer ones get an "
        "error (text_too_large).", minimum=1)
    max_classify_texts: int = option(1000, "Texts in one /v1/classify request at most.", minimum=1)
    max_body_bytes: int = option(16 * 1024 * 1024, "Largest HTTP request body and WebSocket frame, in bytes.",
                                 minimum=1024)
    max_pending_chars: int = option(
        DEFAULT_MAX_PENDING_CHARS, "Text a session holds after an unclosed '<' before it is taken as punctuation.",
        minimum=1)
    watch: float | None = option(
        None, "Poll the model directories' manifest.json every this many seconds and reload when one changes "
        "(besides SIGHUP).", metavar="SECONDS", show_default="SIGHUP only", greater_than=0.0)
    workers: int = option(
        1, "Server processes sharing the port (each loads the models and serves the connections it accepts; "
        "/v1/stream sessions, --max-sessions, /metrics and /readyz are the whole service's).", metavar="N", minimum=1,
        maximum=MAX_WORKERS)

    def __post_init__(self) -> None:
        check_options(self)
        if not self.allow_remote and not is_loopback(self.host):
            raise InputError(f"--host {self.host} accepts connections from other machines and the service has no "
                             "authentication; add --allow-remote to mean it")

    @property
    def max_raw_message_chars(self) -> int:
        """Longest raw message (JSON text or bytes) parsed at all (`beam_rnn.stream.config.max_raw_event_chars`)."""
        return max_raw_event_chars(self.max_message_chars)
