"""Serve predictions while people type: a WebSocket per text box, HTTP for whole texts.

    beam-rnn serve --model runs/imdb/models                  # the lstm and bilstm exports of a training run
    beam-rnn serve --model runs/imdb/models/lstm --port 0 --decide-at 0.9

Prints one line, `serving <models> on http://HOST:PORT/`, then serves until Ctrl-C or
SIGTERM (exit 0); SIGHUP (or --watch) reloads the models.  --workers N serves from N
processes on the one port (see beam_rnn/service/workers.py).  Open the URL for a page
whose prediction updates as you type.  Endpoints: WS /v1/ws, POST /v1/classify,
POST/GET/DELETE /v1/stream/{id}, /healthz, /readyz, /metrics (see docs/ARCHITECTURE.md).
Bad flags, a taken port or a missing or damaged model are one error line, exit 2,
before anything is served.
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from beam_rnn.cli.flags import add_config_flags, add_verbose_flag, config_from_flags, parse_flags
from beam_rnn.core.errors import InputError
from beam_rnn.service.config import ServiceConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="beam-rnn serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_flag(parser)
    parser.add_argument(
        "--model", action="extend", nargs="+", required=True, metavar="DIR",
        help="Exported model dir(s), repeatable: an export (OUTPUT/<kind> of `beam-rnn train`), NAME=DIR to name "
        "one, or a training output holding bilstm/ and lstm/. The lstm export (step_weights.npz) serves the "
        "sessions; every model answers /v1/classify.")
    add_config_flags(parser, ServiceConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    known = parse_flags(build_parser(), argv)
    config = config_from_flags(ServiceConfig, known)

    from beam_rnn.service.models import load_models
    from beam_rnn.service.server import bind_socket, serve

    sock = bind_socket(config.host, config.port)
    try:
        models = load_models(known.model, max_pending_chars=config.max_pending_chars)
    except InputError as e:
        sock.close()
        raise InputError(f"--model: {e}") from e
    # run_command takes --verbose out of argv and turns INFO logging on for it: the access log follows.
    return serve(config, models, known.model, sock, verbose=logging.getLogger().isEnabledFor(logging.INFO))


if __name__ == "__main__":
    from beam_rnn.cli import run_command
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(run_command("serve", sys.argv[1:]))
