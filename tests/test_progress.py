"""Progress on the console: the live line, plain lines off a terminal, Beam's Progress step, training's lines."""

import io
import logging

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from beam_rnn.core import progress


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def board():
    clock = _Clock()
    board = progress.Board(clock=clock, ticker=False)
    board.clock = clock
    yield board
    board.close_all()


def test_terminal_line_is_rewritten_in_place_with_rate_and_eta(board):
    out = io.StringIO()
    board.enable(out, tty=True)
    task = board.open("training bilstm")
    board.clock.now += 10
    board.count("epoch 1/2", 0, unit="batches", total=100)
    board.clock.now += 5
    board.count("epoch 1/2", unit="batches", total=100, done=50)
    lines = out.getvalue().split("\r\x1b[K")
    assert lines[0] == "" and all("\n" not in line for line in lines)  # one line, redrawn in place
    assert lines[-1] == "training bilstm 0:15 · epoch 1/2 50/100 batches (50%, 10.0/s, ETA 0:05)"
    board.close(task, summary=False)
    assert out.getvalue().endswith("\r\x1b[K")  # the live line is cleared, not left half-written


def test_a_step_is_named_on_the_line_until_the_next(board):
    out = io.StringIO()
    board.enable(out, tty=True)
    board.open("export lstm")
    board.set_step("SavedModel")
    board.clock.now += 3
    board.set_step("model.keras check")
    assert out.getvalue().split("\r\x1b[K")[-2:] == ["export lstm 0:00 · SavedModel", "export lstm 0:03 · model.keras check"]


def test_off_a_terminal_plain_lines_come_at_an_interval(board, caplog):
    board.enable(io.StringIO(), tty=False)
    with caplog.at_level(logging.INFO, logger="beam_rnn.core.progress"):
        task = board.open("preprocess")
        for _ in range(3):
            board.clock.now += 1
            board.count("read")
        assert not caplog.records  # nothing before LOG_SECONDS
        board.clock.now += progress.LOG_SECONDS
        board.count("read", 997)
        board.close(task)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["preprocess 0:33 · read 1,000 documents (31/s)", "preprocess done in 0:33: read 1,000 documents"]


def test_tenths_of_a_known_total_are_logged_but_not_too_often(board, caplog):
    board.enable(io.StringIO(), tty=False)
    with caplog.at_level(logging.INFO, logger="beam_rnn.core.progress"):
        board.open("training lstm")
        board.count("epoch 1/1", 0, unit="batches", total=10)
        for done in range(1, 11):
            board.clock.now += progress.MIN_LOG_SECONDS / 2
            board.count("epoch 1/1", unit="batches", total=10, done=done)
    logged = [r.getMessage().split("· ")[1].split(" (")[0] for r in caplog.records]
    assert logged == ["epoch 1/1 2/10 batches", "epoch 1/1 4/10 batches", "epoch 1/1 6/10 batches",
                      "epoch 1/1 8/10 batches", "epoch 1/1 10/10 batches"]


def test_log_records_are_written_above_the_live_line(board, monkeypatch):
    monkeypatch.setattr(progress, "BOARD", board)
    out = io.StringIO()
    board.enable(out, tty=True)
    handler = progress.ConsoleHandler(out)
    log = logging.getLogger("beam_rnn.test_progress")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        board.open("score")
        board.count("scored", 5)
        log.info("a project line")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    # The line is cleared, the record written on a line of its own, then the live line redrawn.
    assert "\r\x1b[Ka project line\n\r\x1b[Kscore 0:00 · scored 5 documents" in text


def test_printed_lines_go_above_the_live_line(board, monkeypatch):
    monkeypatch.setattr(progress, "BOARD", board)
    out = io.StringIO()
    board.enable(out, tty=True)
    board.open("score")
    print('{"scored": 5}', file=progress.AboveProgress(out))
    assert out.getvalue() == '\r\x1b[Kscore 0:00\r\x1b[K{"scored": 5}\n\r\x1b[Kscore 0:00'


def test_a_task_that_raises_ends_without_a_summary(board, monkeypatch, caplog):
    monkeypatch.setattr(progress, "BOARD", board)
    board.enable(io.StringIO(), tty=False)
    with caplog.at_level(logging.INFO, logger="beam_rnn.core.progress"), pytest.raises(ValueError), \
            progress.task("preprocess"):
        raise ValueError("boom")
    assert not caplog.records and not board._tasks  # pylint: disable=protected-access


def test_progress_step_passes_elements_through_and_counts_them(monkeypatch):
    from beam_rnn.cli import runtime
    from beam_rnn.io.progress import NAMESPACE, Progress

    board = progress.Board()
    monkeypatch.setattr(progress, "BOARD", board)
    board.enable(io.StringIO(), tty=False)
    task = board.open("test")
    docs = [{"id": str(i), "text": "a b"} for i in range(7)]
    p = beam.Pipeline(options=runtime.pipeline_options([]))
    out = p | beam.Create(docs) | "Progress" >> Progress("read")
    assert_that(out, equal_to(docs))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    assert [(c.key.metric.name, c.committed) for c in counters] == [("read", 7)]
    assert task.counters["read"].done == 7  # shown by the process that built the pipeline
    board.close(task, summary=False)


def test_training_names_the_model_the_splits_and_the_kept_epoch(tmp_path, caplog):
    from beam_rnn.preprocess.tft_graph import PreprocessConfig
    from beam_rnn.train import trainer
    from beam_rnn.train.config import ModelSettings, TrainConfig
    from tests.helpers import preprocess_docs, synthetic_docs

    prep = str(tmp_path / "prep")
    preprocess_docs(prep, synthetic_docs(96, [0, 1], seed=3),
                    PreprocessConfig(vocab_size=30, min_frequency=1, eval_fraction=0.25))
    stats = __import__("json").loads((tmp_path / "prep" / "stats.json").read_text())
    train_docs, eval_docs = stats["splits"]["train"]["documents"], stats["splits"]["eval"]["documents"]
    # patience 0 stops after the second epoch whatever the losses are.
    config = TrainConfig(kinds=("lstm",), epochs=4, early_stopping_patience=0, batch_size=16, verbose=0,
                         monitor="val_loss",
                         model=ModelSettings(embedding_dim=4, units=4, dense_units=4))
    with caplog.at_level(logging.INFO, logger="beam_rnn"):
        metrics = trainer.run_training(prep, str(tmp_path / "models"), config, export=False)["lstm"]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("beam_rnn.train")]
    assert lines[0] == f"training lstm (1 of 1): {train_docs} train / {eval_docs} validation documents, up to 4 epochs"
    epochs = [line for line in lines if line.startswith("lstm epoch ")]
    assert len(epochs) == 2 and all(" train loss " in e and f"| validation ({eval_docs} docs) loss " in e
                                    for e in epochs), epochs
    assert "lstm: early stopping after epoch 2 of up to 4 (val_loss, patience 0)" in lines
    kept = [line for line in lines if line.startswith("lstm: kept epoch ")]
    expected = (f"lstm: kept epoch {metrics['best_epoch']}'s weights (best val_loss): validation "
                f"({eval_docs} docs) loss {metrics['loss']:.3f}, accuracy {metrics['accuracy']:.3f}, "
                f"AUC {metrics['auc']:.3f}")
    assert kept == [expected]
