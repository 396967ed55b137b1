"""Load test of `beam-rnn serve`: concurrent WebSocket sessions typing IMDB reviews word by word.

    python -m benchmarks.load_service --model MODELS/lstm [--sessions 1000] [--seconds 60]
        [--max-messages 2000000] [--imdb ../shared/data/imdb/train.csv] [--json out.json] [--figure out.png]

Starts ``beam-rnn serve --model DIR --port 0`` on 127.0.0.1 (a subprocess, stopped with SIGTERM
at the end), opens ``--sessions`` WebSocket sessions (all open before any types), and each session
types IMDB reviews one word a message (``{"text": word + " "}``), waiting for the server's
prediction before the next word; at the end of a review it sends ``{"finish": true}``, keeps the
final prediction and ``{"reset": true}``s to the next review.  Typing stops after ``--seconds``
or ``--max-messages`` text messages, whichever comes first; every session then finishes its
current text.  Every request goes to 127.0.0.1 only, and the run is bounded in time and count.

Prints: sessions opened and lost; messages; tokens/s over the typing window (client side: the
increments of ``tokens_seen``; server side: the tokens counter of ``/metrics``); latency
p50/p95/p99 of a typing message (send to prediction, measured by the client); server RSS at
start, peak and end; the CPU used by the client and the server; and the check that every final
prediction equals the exported model's ``serving_default`` on the same text (max |difference| of
the class probabilities, overall and by length).

The alternative a user would pick without per-session state is restart-incremental: re-classify
the whole text so far on every keystroke.  In the same run (same server, same model, same
reviews) ``--alt-sessions`` clients do that through ``POST /v1/classify`` for ``--alt-seconds``,
and the in-process NumPy full pass (`StreamingClassifier.predict_text` of each prefix) is timed
too; the tokens/s ratios are printed.

``--compare VARIANT`` (repeatable) runs only the typing load, ``--rounds`` times, against a fresh server
of this tree and of each VARIANT: ``rev:REV`` (the server of another commit, from ``git archive``),
``uvicorn:KEY=VALUE[,...]`` (this tree with `beam_rnn.service.server.UVICORN_OPTIONS` overridden, e.g.
``uvicorn:loop=asyncio``) or ``args:FLAGS`` (this tree with more ``beam-rnn serve`` flags, after the
others, e.g. ``args:--workers=2``), and prints each one's server CPU per message (process CPU seconds /
typing messages: far less moved by other jobs than wall-clock numbers) with its ratio to this tree.

The server's CPU and RSS are those of the ``beam-rnn serve`` process and all its children, so with
``--serve-arg=--workers=N`` (or ``args:--workers=N``) the supervisor and every worker count; a worker
that died during the window takes its CPU time with it (the server's stderr says so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# after ROOT is on sys.path, so that `python benchmarks/load_service.py` finds the package
from benchmarks.load_client import (
    Keystrokes,
    ReviewPool,
    RssSampler,
    Server,
    check_finals,
    read_reviews,
    restart_in_process,
    restart_run,
    wait_ready,
    websocket_run,
)

DEFAULT_IMDB = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"


# --- Servers compared in the same run (--compare) -----------------------------------------------


@dataclass
class Variant:
    """A server to compare: this tree, another commit's tree, or this tree with uvicorn options overridden."""

    name: str
    root: Path = ROOT
    prelude: str = ""
    extra: tuple[str, ...] = ()  # serve flags after the run's own (argparse: the last value of a flag wins)


def parse_variant(spec: str, workdir: Path) -> Variant:
    """``rev:REV`` (the server of commit REV, from ``git archive``), ``uvicorn:KEY=VALUE[,KEY=VALUE]``
    (`beam_rnn.service.server.UVICORN_OPTIONS` overridden, e.g. ``uvicorn:loop=asyncio,ws=wsproto``) or
    ``args:FLAGS`` (more serve flags, split at white space, e.g. ``args:--workers=2``)."""
    kind, _, value = spec.partition(":")
    if kind == "rev" and value:
        root = workdir / re.sub(r"[^A-Za-z0-9_.-]", "_", value)
        root.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", value], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        return Variant(spec, root=root)
    if kind == "uvicorn" and value:
        options = dict(item.split("=", 1) for item in value.split(","))
        return Variant(spec, prelude=f"import beam_rnn.service.server as s; s.UVICORN_OPTIONS.update({options!r}); ")
    if kind == "args" and value.split():
        return Variant(spec, extra=tuple(value.split()))
    raise SystemExit(f"load_service: --compare {spec!r}: give rev:REV, uvicorn:KEY=VALUE[,KEY=VALUE] or args:FLAGS")


def server_us_per_message(ws: dict[str, Any]) -> float:
    return 1e6 * ws["cpu_cores_server"] * ws["window_seconds"] / max(ws["messages"], 1)


def client_us_per_message(ws: dict[str, Any]) -> float:
    return 1e6 * ws["cpu_cores_client"] * ws["window_seconds"] / max(ws["messages"], 1)


def compare_run(args: argparse.Namespace, reviews: list[list[str]], extra: list[str]) -> dict[str, list[dict[str, Any]]]:
    """`--rounds` rounds; in each, the same typing load against a fresh server of every variant (this tree first
    in even rounds, last in odd ones, so that a drift of the machine's load does not favour one)."""
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="load-service-variants-") as workdir:
        variants = [Variant("this tree")] + [parse_variant(spec, Path(workdir)) for spec in args.compare]
        for name in (v.name for v in variants):
            results[name] = []
        for round_index in range(args.rounds):
            for variant in variants if round_index % 2 == 0 else variants[::-1]:
                print(f"load_service: round {round_index + 1}/{args.rounds}, {variant.name}: {args.sessions} sessions "
                      f"for up to {args.seconds:.0f} s", file=sys.stderr)
                server = Server([args.model], [*extra, *variant.extra], args.startup_seconds, root=variant.root,
                                prelude=variant.prelude)
                try:
                    asyncio.run(wait_ready(server, args.startup_seconds))
                    ws = asyncio.run(websocket_run(server, ReviewPool(reviews), args))
                    ws.pop("finals")
                finally:
                    ws_exit = server.stop()
                ws["server_exit"] = ws_exit
                results[variant.name].append(ws)
    return results


def compare_report(results: dict[str, list[dict[str, Any]]], sessions: int) -> str:
    """Per variant, the median over rounds; the ratio of server CPU per message against this tree."""
    base = float(np.median([server_us_per_message(ws) for ws in results["this tree"]]))
    lines = [f"beam-rnn serve variants, {sessions} WebSocket sessions, {len(results['this tree'])} round(s) each "
             "(median over rounds; every round in brackets)",
             f"  {'variant':<34} {'server us CPU/msg':>34} {'x this tree':>11} {'tokens/s':>8} "
             f"{'client us/msg':>13} {'p99 ms':>7} {'lost':>4} {'server cores':>12} {'load avg':>8}"]
    for name, runs in results.items():
        per_msg = [server_us_per_message(ws) for ws in runs]
        median = float(np.median(per_msg))
        lines.append(
            f"  {name:<34} {median:>7.0f} [{', '.join(f'{v:.0f}' for v in per_msg):>24}] {median / base:>11.2f} "
            f"{np.median([ws['tokens_per_s_client'] for ws in runs]):>8,.0f} "
            f"{np.median([client_us_per_message(ws) for ws in runs]):>13.0f} "
            f"{np.median([ws['latency_ms']['p99'] for ws in runs]):>7.1f} {sum(ws['lost'] for ws in runs):>4} "
            f"{np.median([ws['cpu_cores_server'] for ws in runs]):>12.2f} "
            f"{np.median([np.mean(ws['load_average_1min']) for ws in runs]):>8.1f}")
    return "\n".join(lines)


# --- Report -----------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(r: dict[str, Any]) -> str:
    ws, alt, inproc, check = r["websocket"], r.get("restart_http"), r.get("restart_in_process"), r["check"]
    lat = ws["latency_ms"]
    per_s = ws["tokens_per_s_by_second"]
    lines = [
        f"beam-rnn serve load test: {ws['sessions']} WebSocket sessions on 127.0.0.1, model {r['model']}, "
        f"{ws['window_seconds']:.1f} s typing window",
        f"  sessions opened / lost               {ws['opened']} / {ws['lost']}"
        + (f"  ({ws['lost_reasons']})" if ws["lost"] else "") + f"  (all open in {ws['open_seconds']:.1f} s)",
        f"  typing messages / texts finished     {ws['messages']:,} / {ws['texts_finished']:,}"
        f"  (decisions {ws['decisions']:,}; mean prefix {ws['mean_prefix_tokens']:.0f} tokens)",
        f"  tokens/s sustained, client side      {ws['tokens_per_s_client']:,.0f}"
        + (f"  (per whole second: min {min(per_s):,}, median {int(np.median(per_s)):,})" if per_s else ""),
        "  tokens/s sustained, server /metrics   "
        + (f"{ws['tokens_per_s_server']:,.0f}" if ws["tokens_per_s_server"] is not None
           else f"n/a (no {r['tokens_metric']} in /metrics)"),
        f"  latency per message p50/p95/p99/max  {lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} ms",
        f"  server RSS start / all open / peak / end   {mb(r['rss']['start'])} / {mb(ws['rss_all_open'])} / "
        f"{mb(r['rss']['peak'])} / {mb(r['rss']['end'])}",
        f"  CPU (cores of {psutil.cpu_count()}) client / server / others  {ws['cpu_cores_client']:.2f} / "
        f"{ws['cpu_cores_server']:.2f} ({ws['server_processes']} processes) / "
        f"{max(0.0, ws['cpu_cores_machine'] - ws['cpu_cores_client'] - ws['cpu_cores_server']):.2f}"
        f"  (load average {ws['load_average_1min'][0]:.1f} -> {ws['load_average_1min'][1]:.1f})",
        f"  per message: client {client_us_per_message(ws):.0f} us CPU, server {server_us_per_message(ws):.0f} us CPU; "
        f"server tokens per server CPU-second {ws['tokens_per_s_client'] / max(ws['cpu_cores_server'], 1e-9):,.0f}",
        f"  final vs serving_default             {check['within_1e-5']} of {check['texts']} within 1e-5, "
        f"max |diff| {check['max_drift']:.2e}, labels differ {check['labels_differ']}, "
        f"tokens_seen differ {check['tokens_seen_differ']}",
        "    max |diff| by length: " + ", ".join(f"{b['tokens']} tokens ({b['texts']}) {b['max_drift']:.1e}"
                                               for b in check["by_length"]),
    ]
    if alt or inproc:
        lines.append(f"  restart-incremental: re-classify the text so far at each keystroke, keystrokes drawn uniformly "
                     f"over every word of whole reviews (mean prefix of all of them {r['keystroke_mean_prefix_tokens']:.0f} tokens)")
    if alt:
        lat = alt["latency_ms"]
        lines += [
            f"    POST /v1/classify, {alt['sessions']} clients, {alt['seconds']:.1f} s: {alt['messages']:,} keystrokes "
            f"(mean prefix {alt['mean_prefix_tokens']:.0f})" + (f", errors {alt['errors']}" if alt["errors"] else "")
            + f", {alt['tokens_per_s']:,.0f} tokens/s, latency p50/p95/p99 {lat['p50']:.1f} / {lat['p95']:.1f} / "
            f"{lat['p99']:.1f} ms",
            f"    -> the per-session service is {ws['tokens_per_s_client'] / alt['tokens_per_s']:.1f}x its tokens/s",
        ]
    if inproc:
        lines += [
            f"    in process, StreamingClassifier.predict_text, 1 thread, {inproc['seconds']:.1f} s: {inproc['messages']:,} "
            f"keystrokes (mean prefix {inproc['mean_prefix_tokens']:.0f}), {inproc['tokens_per_s']:,.0f} tokens/s",
            f"    -> the per-session service is {ws['tokens_per_s_client'] / inproc['tokens_per_s']:.1f}x its tokens/s",
        ]
    lines.append(f"  server exit status after SIGTERM     {r['server_exit']}")
    return "\n".join(lines)


def figure(r: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = r["websocket"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    seconds = np.arange(len(ws["tokens_per_s_by_second"]))
    axes[0].plot(seconds, ws["tokens_per_s_by_second"], label="client side")
    axes[0].axhline(20000, color="grey", ls="--", lw=1, label="goal 20,000")
    if r.get("restart_http"):
        axes[0].axhline(r["restart_http"]["tokens_per_s"], color="C3", lw=1,
                        label="restart-incremental (POST /v1/classify)")
    axes[0].set(xlabel="second of the typing window", ylabel="tokens/s", ylim=(0, None),
                title=f"{ws['sessions']} sessions: tokens per second")
    axes[0].legend(fontsize=8)
    axes[1].plot(seconds, ws["p99_ms_by_second"], color="C1")
    axes[1].axhline(50, color="grey", ls="--", lw=1, label="goal 50 ms")
    axes[1].set(xlabel="second of the typing window", ylabel="ms", ylim=(0, None), title="p99 latency per message")
    axes[1].legend(fontsize=8)
    t, rss = zip(*r["rss"]["samples"]) if r["rss"]["samples"] else ((), ())
    axes[2].plot(t, np.asarray(rss) / 2**20, color="C2")
    axes[2].set(xlabel="seconds since the server was ready", ylabel="MiB", ylim=(0, 1.2 * max(rss, default=1) / 2**20),
                title="server RSS")
    fig.suptitle(f"beam-rnn serve on 2 cores, loopback, model {Path(r['model']).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- Main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Exported streaming (lstm) model dir.")
    p.add_argument("--imdb", type=Path, default=DEFAULT_IMDB, help="IMDB csv with a text column.")
    p.add_argument("--reviews", type=int, default=5000, help="Reviews read (handed out in order, cycling).")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0, help="Typing window (then every session finishes).")
    p.add_argument("--max-messages", type=int, default=2_000_000, help="Typing messages in all, at most.")
    p.add_argument("--message-timeout", type=float, default=60.0, help="A session waiting longer is lost.")
    p.add_argument("--open-concurrency", type=int, default=100, help="WebSocket handshakes at once.")
    p.add_argument("--compression", action="store_true", help="Negotiate permessage-deflate (off: plain frames).")
    p.add_argument("--serve-arg", action="append", default=[], help="Extra `beam-rnn serve` flag (repeatable).")
    p.add_argument("--tokens-metric", default="beam_rnn_serve_tokens_total",
                   help="The /metrics counter of tokens stepped.")
    p.add_argument("--alt-sessions", type=int, default=50, help="Restart-incremental HTTP clients (0: skip).")
    p.add_argument("--alt-seconds", type=float, default=30.0)
    p.add_argument("--alt-max-messages", type=int, default=200_000)
    p.add_argument("--alt-reviews", type=int, default=1000,
                   help="The restart-incremental keystrokes are drawn from every word of the first this many reviews.")
    p.add_argument("--startup-seconds", type=float, default=180.0)
    p.add_argument("--compare", action="append", default=[], metavar="VARIANT",
                   help="Instead of the full run: the typing load (no restart-incremental, no serving_default check) "
                   "against this tree's server and against each VARIANT, rev:REV (another commit's server), "
                   "uvicorn:KEY=VALUE[,...] (uvicorn options overridden) or args:FLAGS (more serve flags, e.g. "
                   "args:--workers=2), --rounds times; prints server CPU per message and its ratio (repeatable).")
    p.add_argument("--rounds", type=int, default=3, help="With --compare: rounds (each runs every variant once).")
    p.add_argument("--json", help="Write the results (without per-text finals) here.")
    p.add_argument("--figure", help="Write tokens/s, p99 latency and RSS over time here (PNG).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * (args.sessions + args.alt_sessions) + 1024
    if soft < want:  # the server inherits it: one socket per session on each side
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    from beam_rnn.stream import StreamingClassifier

    clf = StreamingClassifier.load(args.model)
    reviews = read_reviews(args.imdb, args.reviews)
    keystrokes = Keystrokes(reviews[: args.alt_reviews], clf) if args.alt_sessions and not args.compare else None
    extra = ["--max-sessions", str(args.sessions), *[a for arg in args.serve_arg for a in arg.split()]]
    if args.compare:
        results = compare_run(args, reviews, extra)
        print(compare_report(results, args.sessions))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
        return 0
    print(f"load_service: starting beam-rnn serve ({len(reviews)} reviews read)", file=sys.stderr)
    server = Server([args.model], extra, args.startup_seconds)
    sampler = RssSampler(server)
    result: dict[str, Any] = {"model": args.model, "tokens_metric": args.tokens_metric, "argv": sys.argv[1:],
                              "keystroke_mean_prefix_tokens": keystrokes.mean_prefix() if keystrokes else None}
    try:
        asyncio.run(wait_ready(server, args.startup_seconds))
        rss_start = server.rss()
        sampler.start()
        print(f"load_service: {args.sessions} sessions typing for up to {args.seconds:.0f} s", file=sys.stderr)
        result["websocket"] = asyncio.run(websocket_run(server, ReviewPool(reviews), args))
        time.sleep(1.0)  # the server notices the closed sockets
        sampler.halt()
        result["rss"] = {"start": rss_start, "peak": max(b for _, b in sampler.samples), "end": server.rss(),
                         "samples": sampler.samples}
        if args.alt_sessions:
            print(f"load_service: restart-incremental, {args.alt_sessions} HTTP clients for up to "
                  f"{args.alt_seconds:.0f} s", file=sys.stderr)
            result["restart_http"] = asyncio.run(restart_run(server, keystrokes, args))
    finally:
        if sampler.is_alive():
            sampler.halt()
        result["server_exit"] = server.stop()
    if args.alt_sessions:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # as the server runs its steps
            result["restart_in_process"] = restart_in_process(keystrokes, clf, args.alt_seconds)
    print(f"load_service: checking {len(result['websocket']['finals'])} final predictions against serving_default",
          file=sys.stderr)
    result["check"] = check_finals(args.model, result["websocket"].pop("finals"), clf)
    print(report(result))
    if args.figure:
        figure(result, args.figure)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
