"""Model refresh in `ClassifierModelHandler` (issue 16, item 3): `update_model_path` and RunInference's
``model_metadata_pcoll`` in a streaming pipeline.

The exports are those of tests/test_inference.py (its module fixture `env`: an LSTM, a
BiLSTM and a 3-class LSTM on one tiny preprocessing) plus a second LSTM with other
weights on the same preprocessing: model A is env's LSTM, model B the second one.
"""

import json
import logging
import os

import numpy as np
import pytest

from beam_rnn.core import constants as C
from beam_rnn.serve import handler as handler_lib
from beam_rnn.serve import score as score_lib
from beam_rnn.serve.records import record_model
from beam_rnn.train import export, models
from tests.helpers import p_or_list, randomize_weights
from tests.test_inference import TOL, env, in_process  # noqa: F401  (env: the module fixture with the exports)

MISSING = "/nonexistent/beam_rnn/models/lstm"


@pytest.fixture(scope="module")
def dirs(env):  # noqa: F811
    """``a``/``b``: two LSTMs (same preprocessing, other weights); ``multi``: 3 classes; ``bilstm``: another kind."""
    prep = str(env["root"] / "prep")
    with open(os.path.join(prep, C.STATS_FILE), encoding="utf-8") as f:
        vocab_size = json.load(f)["vocab_size_with_reserved"]
    config = models.ModelConfig(kind="lstm", seed=4, vocab_size=vocab_size, embedding_dim=8, units=6, dense_units=5)
    model = models.build_classifier(config)
    randomize_weights(model, seed=20)
    model_b = str(env["root"] / "models" / "lstm_b")
    export.export_model(model, config, prep, model_b, {}, verify=False)
    return {"a": env["dirs"]["lstm"], "b": model_b, "multi": env["dirs"]["multi"], "bilstm": env["dirs"]["bilstm"]}


@pytest.fixture(scope="module")
def texts(env):  # noqa: F811
    return [d["text"] for d in env["docs"][:12]]


@pytest.fixture
def count():
    """Runs the test inside a Beam metrics container, as a DoFn would; yields ``count(counter name)``."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.metrics.metricbase import MetricName
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    container = MetricsContainer("RunInference")
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)
    sampler.start()
    try:
        with sampler.scoped_state("RunInference", "process", metrics_container=container):
            yield lambda name: container.get_counter(
                MetricName(handler_lib.INFERENCE_METRICS_NAMESPACE, name)).get_cumulative()
    finally:
        sampler.stop()
        statesampler.set_current_tracker(None)


def _score(handler: handler_lib.ClassifierModelHandler, texts: list[str]) -> tuple[set, np.ndarray]:
    """Loads the handler's models and scores `texts`: (model_ids, P(class 1) per text)."""
    results = list(handler.run_inference(texts, handler.load_model()))
    assert [r.example for r in results] == texts
    return {r.model_id for r in results}, np.array([r.inference[0][0] for r in results])


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.getMessage()]


def test_update_model_path_loads_the_new_model_and_names_it(dirs, texts, caplog, count):
    probs_a, _ = in_process(dirs["a"], texts)
    probs_b, labels_b = in_process(dirs["b"], texts)
    assert np.max(np.abs(probs_a - probs_b)) > 1e-3  # the two models really score differently

    handler = handler_lib.ClassifierModelHandler(dirs["a"])
    identifier = handler.model_identifier()
    ids, probs = _score(handler, texts)
    assert ids == {dirs["a"]} and np.max(np.abs(probs - probs_a)) <= TOL

    with caplog.at_level(logging.INFO, logger=handler_lib.__name__):
        handler.update_model_path(dirs["b"])
        handler.update_model_path(dirs["b"])  # RunInference calls it again after loading: no second update
    assert [(i.name, i.model_dir) for i in handler.infos] == [("lstm", dirs["b"])]
    assert handler.model_identifier() != identifier  # names the new model, as the cache key of RunInference steps
    assert len([r for r in caplog.records if "Model update: serving" in r.getMessage()]) == 1
    assert not _refusals(caplog)
    assert count(handler_lib.COUNTER_MODEL_UPDATES) == 1 and count(handler_lib.COUNTER_MODEL_UPDATES_REFUSED) == 0

    model = handler.load_model()
    assert model.model_id() == dirs["b"] and [m.model_dir for m in model.loaded] == [dirs["b"]]
    results = list(handler.run_inference(texts, model))
    assert {r.model_id for r in results} == {dirs["b"]}
    assert np.max(np.abs(np.array([r.inference[0][0] for r in results]) - probs_b)) <= TOL
    assert [r.inference[0][1] for r in results] == labels_b.tolist()
    # A score record names the configured model by its name, a swapped-in one by its export dir.
    configured = handler_lib.ClassifierModelHandler(dirs["a"]).infos[0]
    assert record_model(configured, dirs["a"]) == "lstm" and record_model(configured, None) == "lstm"
    assert record_model(configured, results[0].model_id) == dirs["b"]


@pytest.mark.parametrize("bad", ["multi", "bilstm", "missing", "two"])
def test_a_refused_update_keeps_the_current_model_and_does_not_raise(dirs, texts, caplog, count, bad):
    path = {"multi": dirs["multi"], "bilstm": dirs["bilstm"], "missing": MISSING,
            "two": f"{dirs['a']},{dirs['b']}"}[bad]
    reason = {"multi": "3 classes", "bilstm": "(bilstm,", "missing": "does not exist", "two": "2 model(s) given"}[bad]
    probs_b, _ = in_process(dirs["b"], texts)
    handler = handler_lib.ClassifierModelHandler(dirs["a"])
    handler.update_model_path(dirs["b"])  # the current model is B, not the configured A
    with caplog.at_level(logging.INFO, logger=handler_lib.__name__):
        handler.update_model_path(path)
        handler.update_model_path(path)
    [line] = _refusals(caplog)  # one line, however often Beam repeats the path
    assert count(handler_lib.COUNTER_MODEL_UPDATES_REFUSED) == 1 and count(handler_lib.COUNTER_MODEL_UPDATES) == 1
    assert path in line and f"still serving {dirs['b']}" in line and reason in line
    assert [(i.name, i.model_dir, i.num_classes) for i in handler.infos] == [("lstm", dirs["b"], 2)]
    ids, probs = _score(handler, texts)
    assert ids == {dirs["b"]} and np.max(np.abs(probs - probs_b)) <= TOL


def test_an_update_whose_model_fails_to_load_falls_back_to_the_models_it_replaced(
        dirs, texts, caplog, count, monkeypatch):
    real = handler_lib.LoadedSavedModel

    def loaded(model_dir: str):
        if model_dir == dirs["b"]:
            raise OSError("simulated: the variables cannot be read")
        return real(model_dir)

    monkeypatch.setattr(handler_lib, "LoadedSavedModel", loaded)
    probs_a, _ = in_process(dirs["a"], texts)
    handler = handler_lib.ClassifierModelHandler(dirs["a"])
    with caplog.at_level(logging.INFO, logger=handler_lib.__name__):
        handler.update_model_path(dirs["b"])  # the export is complete: accepted until it is loaded
        assert handler.infos[0].model_dir == dirs["b"]
        ids, probs = _score(handler, texts)
    assert ids == {dirs["a"]} and np.max(np.abs(probs - probs_a)) <= TOL
    assert handler.infos[0].model_dir == dirs["a"]
    [line] = _refusals(caplog)
    assert dirs["b"] in line and "simulated" in line and f"still serving {dirs['a']}" in line
    assert count(handler_lib.COUNTER_MODEL_UPDATES) == 1 and count(handler_lib.COUNTER_MODEL_UPDATES_REFUSED) == 1
    with pytest.raises(OSError, match="simulated"):  # without an update to undo, a failed load still fails
        handler_lib.ClassifierModelHandler(dirs["b"]).load_model()


def test_replacement_models_keep_names_and_match_them(dirs):
    current = handler_lib.ClassifierModelHandler({"bi": dirs["bilstm"], "uni": dirs["a"]}).infos
    # Matched by name when the update names the current models, whatever its order.
    swapped = handler_lib.replacement_models(current, f"uni={dirs['b']}, bi={dirs['bilstm']}")
    assert [(i.name, i.model_dir) for i in swapped] == [("bi", dirs["bilstm"]), ("uni", dirs["b"])]
    # Otherwise by position, under the current names.
    swapped = handler_lib.replacement_models(current, f"{dirs['bilstm']},{dirs['b']}")
    assert [(i.name, i.model_dir) for i in swapped] == [("bi", dirs["bilstm"]), ("uni", dirs["b"])]
    with pytest.raises(handler_lib.ModelDirError, match="cannot replace bi"):
        handler_lib.replacement_models(current, f"{dirs['b']},{dirs['bilstm']}")


def test_streaming_documents_after_the_model_event_are_scored_by_the_new_model(dirs, texts):
    import apache_beam as beam
    from apache_beam.ml.inference.base import ModelMetadata
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms import window

    # As Beam's own side-input RunInference tests: the model events and the documents are in the
    # same fixed windows, and a window's documents wait for the model events' watermark to pass
    # its end, so each window is scored with that window's ModelMetadata (none: the configured
    # model).  [0, 10): before any event -> A; [10, 20): after B's event -> B; [20, 30): after a
    # 3-class model's event, refused -> the handler's current model.  The DirectRunner starts each
    # bundle from a fresh copy of the DoFn, so that is the configured A here.
    windows = [(0, None, dirs["a"]), (10, dirs["b"], dirs["b"]), (20, dirs["multi"], dirs["a"])]
    expected = {}
    stream = TestStream().advance_watermark_to(0, tag="docs").advance_watermark_to(0, tag="models")
    for w, (start, event, scored_by) in enumerate(windows):
        batch = texts[4 * w: 4 * w + 4]
        probs, labels = in_process(scored_by, batch)
        if event is not None:
            stream = stream.add_elements([window.TimestampedValue(ModelMetadata(event, f"m{w}"), start + 1)],
                                         tag="models")
        docs = []
        for i, text in enumerate(batch):
            doc_id = f"w{w}_{i}"
            docs.append(window.TimestampedValue(((doc_id, i % 2), text), start + 2 + i))
            expected[doc_id] = ("lstm" if scored_by == dirs["a"] else scored_by, float(probs[i]), int(labels[i]))
        stream = stream.add_elements(docs, tag="docs").advance_watermark_to(start + 10, tag="models")
    stream = stream.advance_watermark_to_infinity(tag="models").advance_watermark_to_infinity(tag="docs")

    def check(records):
        got = {r["id"]: r for r in records}
        assert sorted(got) == sorted(expected), sorted(got)
        for doc_id, (model, probability, label) in expected.items():
            record = got[doc_id]
            assert record["model"] == model, (doc_id, record["model"], model)
            assert abs(p_or_list(record) - probability) <= TOL, (doc_id, record, probability)
            assert record["predicted_label"] == label and record["true_label"] == int(doc_id[-1]) % 2

    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    handler = handler_lib.ClassifierModelHandler(dirs["a"], min_batch_size=1, max_batch_size=8)
    p = beam.Pipeline(options=options)
    events = p | stream
    metadata = events["models"] | "ModelWindows" >> beam.WindowInto(window.FixedWindows(10))
    keyed = events["docs"] | "DocumentWindows" >> beam.WindowInto(window.FixedWindows(10))
    inferred = keyed | score_lib.Infer(handler, model_metadata=metadata)
    records = inferred.results[0] | beam.ParDo(score_lib._ToRecordFn(handler.infos, labelled=True))
    assert_that(records, check)
    assert_that(inferred.dead_letter[0], equal_to([]), label="NoDeadLetters")
    p.run().wait_until_finish()
    # (No counter check here: the streaming DirectRunner reports no metrics of a ParDo with side
    # inputs, Beam's own RunInference counters included; the unit tests above count them.)
