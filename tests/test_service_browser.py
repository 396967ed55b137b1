"""The page of ``beam-rnn serve`` in a real browser (issue 16 item 2).

``beam-rnn serve`` runs as a subprocess on a free port with a tiny exported LSTM (3 classes,
built like tests/test_streaming.py's fixture: the real preprocessing and export, random
weights) and a decision policy; Debian's headless Chromium, driven by Playwright, types a text
into ``#text`` key by key.  The page must then show what `StreamingClassifier` computes for
the same text: the label (``#label``), the tokens seen (``#tokens``), one bar per class as wide
as its probability, and the decision (``#decision``) only once the policy has fired.  The
screenshot is written to the test's tmp dir and its path printed (``pytest -s`` shows it).

Needs /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it) and the
``playwright`` package (the test extra); without either it is skipped.  Playwright's own
browser downloads are never used.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("neg", "neu", "pos")
# Typed in two parts: the decision may not fire in the first (min_tokens), and does in the second.
FIRST = "The movie was GREAT, "
SECOND = "but the plot was awful and the actor poor; a good film of fine actors "
TIMEOUT_MS = 15_000

if not os.path.exists(CHROMIUM):
    pytest.skip(f"needs Debian's headless Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A 3-class streaming LSTM export, as tests/test_streaming.py builds its models."""
    from beam_rnn.core import constants as C
    from beam_rnn.preprocess import tft_graph as preprocessing
    from beam_rnn.train import export, models
    from tests.helpers import preprocess_docs, randomize_weights, synthetic_docs

    root = tmp_path_factory.mktemp("browser")
    cfg = preprocessing.PreprocessConfig(vocab_size=50, min_frequency=1, label_type=C.LABEL_TYPE_STRING,
                                         label_set=CLASSES, eval_fraction=0.25)
    prep = str(root / "prep")
    stats = preprocess_docs(prep, synthetic_docs(60, list(CLASSES), 3), cfg)
    mcfg = models.ModelConfig(kind="lstm", vocab_size=stats["vocab_size_with_reserved"], seed=3, num_classes=3,
                              embedding_dim=8, units=6, dense_units=5)
    model = models.build_classifier(mcfg)
    randomize_weights(model, seed=13)
    out = str(root / "lstm")
    export.export_model(model, mcfg, prep, out, {}, verify=False)
    shutil.rmtree(prep)
    return out


def _policy(clf) -> tuple[float, int, int]:
    """(decide_at, min_tokens, the position it fires at): never inside FIRST, inside SECOND."""
    first, state = clf.feed(clf.start(), FIRST)
    second, _ = clf.feed(state, SECOND)
    min_tokens = len(first) + 1
    tops = sorted(max(p.probabilities.values()) for p in second)
    decide_at = tops[len(tops) // 2]
    fired, _ = clf.decide(clf.start(), first + second, decide_at, min_tokens)
    assert fired is not None and fired.tokens_seen > len(first)
    return decide_at, min_tokens, fired.tokens_seen


class Serve:
    """``beam-rnn serve`` on 127.0.0.1, port 0: the URL from its one stdout line."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from beam_rnn.cli import main; main()", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            cwd=str(REPO_ROOT), env=env)
        lines: queue.Queue = queue.Queue()

        def read() -> None:  # keeps draining stdout; "" at its end
            for out in self.proc.stdout:
                lines.put(out)
            lines.put("")

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            line = ""
        match = re.fullmatch(r"serving (.+) on (http://127\.0\.0\.1:\d+/)\n?", line)
        if match is None:
            self.stop()
            pytest.fail(f"serve printed {line!r} instead of its serving line; stderr: {self.proc.stderr.read()[-3000:]}")
        self.url = match.group(2)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "/readyz never answered 200"
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _bar_share(page, name: str) -> float:
    """The rendered width of the class's bar as a share of its track (the bar's parent element)."""
    return page.eval_on_selector(
        f'div.bar[data-class="{name}"]',
        "el => el.getBoundingClientRect().width / el.parentElement.getBoundingClientRect().width")


def test_page_shows_the_prediction_and_the_decision_while_typing(model_dir, tmp_path):
    from beam_rnn.stream import StreamingClassifier

    clf = StreamingClassifier.load(model_dir)
    decide_at, min_tokens, position = _policy(clf)
    serve = Serve(["--model", model_dir, "--decide-at", repr(decide_at), "--min-tokens", str(min_tokens)])
    frames: list[dict] = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(json.loads(payload))))
            page.goto(serve.url)
            _wait(page, lambda: any(f.get("type") == "hello" for f in frames), lambda: "the page's WebSocket hello")
            hello = next(f for f in frames if f["type"] == "hello")
            assert hello["classes"] == list(CLASSES) and hello["min_tokens"] == min_tokens
            assert abs(hello["decide_at"] - decide_at) < 1e-9

            text = page.locator("#text")
            text.press_sequentially(FIRST)  # key by key
            _expect_page(page, clf, FIRST)
            sync_api.expect(page.locator("#decision")).to_be_empty()
            assert not [f for f in frames if f.get("type") == "decision"]

            text.press_sequentially(SECOND)
            _expect_page(page, clf, FIRST + SECOND)
            sync_api.expect(page.locator("#decision")).not_to_be_empty(timeout=TIMEOUT_MS)
            _wait(page, lambda: any(f.get("type") == "decision" for f in frames), lambda: "the decision frame")
            decisions = [f for f in frames if f.get("type") == "decision"]
            assert len(decisions) == 1 and decisions[0]["position"] == position
            assert decisions[0]["predicted_label_name"] in page.locator("#decision").inner_text()
            assert not [f for f in frames if f.get("type") == "error"]

            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            browser.close()
    finally:
        code = serve.stop()
    assert code == 0, f"serve exited {code} after SIGTERM"


def _expect_page(page, clf, typed: str) -> None:
    """The page shows the prediction of everything typed so far (every word is complete: `typed` ends in a space)."""
    want = clf.predict_text(typed)
    tokens = len(clf.text_ids(typed))
    sync_api.expect(page.locator("#tokens")).to_have_text(str(tokens), timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("#label")).to_have_text(want["predicted_label_name"], timeout=TIMEOUT_MS)
    for name, p in want["probabilities"].items():
        _wait(page, lambda: abs(_bar_share(page, name) - p) < 0.02,
              lambda: f"the {name} bar at {p:.3f} of its track (it is at {_bar_share(page, name):.3f})")


def _wait(page, condition, what, seconds: float = TIMEOUT_MS / 1000) -> None:
    """Polls `condition` until true; after `seconds`, fails naming `what()`.  Waits through the page, so
    that Playwright delivers its events (the WebSocket frames) meanwhile."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what()}"
        page.wait_for_timeout(50)
