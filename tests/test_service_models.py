"""`beam-rnn serve` with real exports: the SavedModel's ``serving_default`` is the reference.

The exports are tests/test_inference.py's (its module fixture `env`: an LSTM, a BiLSTM and a
3-class LSTM trained on one tiny preprocessing, with random weights).
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

from beam_rnn.core.artifacts import ModelDirError
from beam_rnn.core.manifest import write_manifest
from beam_rnn.service.models import load_models
from beam_rnn.stream.classifier import StreamingClassifier
from tests.helpers import p_or_list
from tests.test_inference import env, in_process  # noqa: F401  (env: the module fixture with the exports)
from tests.test_service import assert_same_prediction, chunks_of, make_app, stream_reference

with warnings.catch_warnings():  # Starlette 1.x prefers the httpx2 fork; httpx (the test extra) still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect  # noqa: E402

SERVING_TOL = 1e-5  # float32: the NumPy step against the SavedModel's graph
SHORT = "Good movie, GREAT plot!<br />The actor was fine but the film was awful."


@pytest.fixture(scope="module")
def both(env):  # noqa: F811
    """The training output's layout: ``models/`` holding ``lstm/`` and ``bilstm/`` (and ``multi/``, not picked)."""
    return str(env["root"] / "models")


def test_final_websocket_prediction_equals_serving_default(env):  # noqa: F811
    lstm = env["dirs"]["lstm"]
    clf = StreamingClassifier.load(lstm)
    chunks = chunks_of(SHORT, seed=7, max_len=4)
    with TestClient(make_app([lstm])) as c, c.websocket_connect("/v1/ws") as ws:
        ws.receive_json()
        for chunk in chunks:
            ws.send_json({"text": chunk})
            ws.receive_json()
        ws.send_json({"finish": True})
        final = ws.receive_json()
    assert_same_prediction(final, stream_reference(clf, chunks)[-1])
    probabilities, labels = in_process(lstm, [SHORT])
    assert abs(p_or_list(final) - float(probabilities[0])) <= SERVING_TOL
    assert final["predicted_label"] == int(labels[0])


def test_a_training_output_serves_both_models_in_classify(env, both):  # noqa: F811
    texts = [SHORT, "", "awful", " ".join(d["text"] for d in env["docs"][:3])]
    with TestClient(make_app([both])) as c:
        assert c.get("/readyz").json() == {"ready": True, "models": ["bilstm", "lstm"], "streaming_model": "lstm"}
        results = c.post("/v1/classify", json={"texts": texts}).json()["results"]
        with c.websocket_connect("/v1/ws") as ws:
            assert ws.receive_json()["model"] == "lstm"
    for name in ("bilstm", "lstm"):
        probabilities, labels = in_process(env["dirs"][name], texts)
        for result, p, label in zip(results, probabilities, labels):
            got = result["models"][name]
            assert abs(p_or_list(got) - float(p)) <= SERVING_TOL and got["predicted_label"] == int(label)
            assert got["predicted_label_name"] == str(int(label))
            assert list(got["probabilities"]) == ["0", "1"]
    lstm = StreamingClassifier.load(env["dirs"]["lstm"])
    assert [r["models"]["lstm"] for r in results] == [lstm.predict_text(t) for t in texts]


def test_only_a_bilstm_classifies_and_refuses_sessions_clearly(env):  # noqa: F811
    with TestClient(make_app([env["dirs"]["bilstm"]])) as c:
        assert c.get("/readyz").json()["streaming_model"] is None
        with c.websocket_connect("/v1/ws") as ws:
            frame = ws.receive_json()
            assert frame["type"] == "error" and frame["reason"] == "no_streaming_model"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1011
        r = c.post("/v1/stream/s", json={"text": "good"})
        assert r.status_code == 501 and r.json()["error"] == "no_streaming_model"
        result = c.post("/v1/classify", json={"text": SHORT}).json()["results"][0]["models"]
        assert list(result) == ["bilstm"]


def test_models_that_do_not_share_classes_are_refused(env):  # noqa: F811
    with pytest.raises(ModelDirError, match="do not share classes"):
        load_models([env["dirs"]["lstm"], env["dirs"]["multi"]], max_pending_chars=100)


def test_a_bilstm_whose_saved_model_is_damaged_is_refused(env, tmp_path):  # noqa: F811
    broken = str(tmp_path / "bilstm")
    shutil.copytree(env["dirs"]["bilstm"], broken)
    os.remove(os.path.join(broken, "saved_model", "saved_model.pb"))
    with pytest.raises(ModelDirError, match="saved_model.pb is missing"):
        load_models([broken], max_pending_chars=100)
    shutil.rmtree(broken)
    shutil.copytree(env["dirs"]["bilstm"], broken)
    with open(os.path.join(broken, "saved_model", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    write_manifest(broken)  # intact by the manifest, yet not loadable
    with pytest.raises(ModelDirError, match="cannot be loaded"):
        load_models([broken], max_pending_chars=100)
