"""Distillation from a trained BiLSTM (`train --teacher DIR`, beam_rnn.train.distill)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from beam_rnn.core import constants as C
from beam_rnn.core.errors import InputError
from beam_rnn.train import data, distill, losses, trainer
from beam_rnn.train.config import TrainConfig
from beam_rnn.train.errors import TrainerInputError
from tests.test_trainer import REPO_ROOT, SMALL, _documents, _preprocess


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A preprocessing, a BiLSTM trained and exported on it, and another preprocessing (other words)."""
    root = tmp_path_factory.mktemp("distill")
    # U+0085 is a word of the vocabulary (as in IMDB) and a line break to str.splitlines.
    nel = [{"id": f"nel{i}", "text": f"\x85 w{i} \x85", "label": i % 2} for i in range(20)]
    prep = _preprocess(str(root / "prep"), _documents(320, 2, seed=0) + nel)
    trainer.run_training(prep, str(root / "teacher"), TrainConfig(kinds=("bilstm",), epochs=3, **SMALL))
    other = [dict(d, text=d["text"].replace("w", "x")) for d in _documents(200, 2, seed=4)]
    return {"root": root, "prep": prep, "teacher": str(root / "teacher"),
            "other_prep": _preprocess(str(root / "other"), other)}


def test_the_loss_mixes_the_label_with_the_teacher_and_the_metrics_read_the_label():
    logits = tf.constant([[2.0], [-1.0], [0.5]])
    packed = tf.constant([[1.0, 0.2], [0.0, 0.9], [1.0, 1.0]])  # [label, teacher P(1)]
    for w in (0.3, 1.0):
        target = (1 - w) * packed[:, :1] + w * packed[:, 1:]
        want = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))
        got = losses.ClassifierLoss(2, w)(packed, logits)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    loss, metrics = losses.loss_and_metrics(2, teacher_weight=1.0)
    accuracy = metrics[0]
    accuracy.update_state(packed, logits)  # logits > 0: 1, 0, 1 -> the true labels 1, 0, 1, whatever the teacher says
    assert accuracy.result().numpy() == 1.0
    # K classes: [label, p_1..p_K].
    logits3 = tf.constant([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    packed3 = tf.constant([[2.0, 0.1, 0.2, 0.7], [1.0, 0.3, 0.3, 0.4]])
    w = 0.25
    target3 = 0.75 * tf.one_hot([2, 1], 3) + w * packed3[:, 1:]
    want3 = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=target3, logits=logits3))
    np.testing.assert_allclose(losses.ClassifierLoss(3, w)(packed3, logits3).numpy(), want3.numpy(), rtol=1e-6)
    _, metrics3 = losses.loss_and_metrics(3, teacher_weight=w)
    metrics3[0].update_state(packed3, logits3)
    assert metrics3[0].result().numpy() == pytest.approx(0.5)  # row 0 predicts class 0 (label 2), row 1 class 1


def test_the_teacher_sees_whole_documents_before_prefixes_are_cut(taught):
    teacher = distill.Teacher(taught["teacher"], 2)
    module = tf.saved_model.load(os.path.join(taught["teacher"], C.MODEL_BILSTM, C.SAVED_MODEL_DIR))
    pattern = data.train_pattern(taught["prep"])
    common = dict(batch_size=16, shuffle=True, seed=3, epochs=[0])
    whole = list(data.make_dataset(pattern, **common))
    cut = list(data.make_dataset(pattern, prefix_fraction=0.7, teacher=teacher.pack, **common))
    shortened = 0
    for (ids, labels), (prefix_ids, packed) in zip(whole, cut):
        packed = packed.numpy()
        assert packed.shape == (ids.shape[0], 2)
        np.testing.assert_array_equal(packed[:, 0], labels.numpy()[:, 0])
        want = module.signatures["classify_ids"](token_ids=ids)["probabilities"].numpy()
        np.testing.assert_allclose(packed[:, 1], want, atol=1e-6)  # the whole document's probability
        shortened += int(((prefix_ids.numpy() != 0).sum(1) < (ids.numpy() != 0).sum(1)).sum())
    assert shortened > 0


def test_a_distilled_lstm_trains_exports_and_records_its_teacher(taught):
    out = taught["root"] / "student"
    metrics = trainer.run_training(taught["prep"], str(out), TrainConfig(
        kinds=("lstm",), epochs=4, teacher=taught["teacher"], teacher_weight=0.7, prefix_training=0.5, **SMALL))
    m = metrics["lstm"]
    assert m["teacher"] == {"model_dir": os.path.join(taught["teacher"], "bilstm"), "weight": 0.7}
    assert m["accuracy"] > 0.75, m  # the true-label accuracy of a learnable task, not agreement with the teacher
    card = json.loads((out / "lstm" / C.MODEL_CARD_FILE).read_text())
    assert card["metrics"]["teacher"]["weight"] == 0.7
    config = json.loads((out / "lstm" / trainer.TRAIN_CONFIG_FILE).read_text())
    assert config["teacher"] == taught["teacher"] and config["teacher_weight"] == 0.7


def test_unusable_teachers_are_refused_before_training(taught, tmp_path):
    def refused(prep, match, **settings):
        with pytest.raises(TrainerInputError, match=match):
            trainer.run_training(prep, str(tmp_path / "out"), TrainConfig(epochs=1, **{**SMALL, **settings}))
        assert not (tmp_path / "out").exists()

    refused(taught["other_prep"], "another preprocessing", kinds=("lstm",), teacher=taught["teacher"])
    refused(taught["prep"], "does not exist", kinds=("lstm",), teacher=str(tmp_path / "nowhere"))
    refused(taught["prep"], "trains no lstm", kinds=("bilstm",), teacher=taught["teacher"])
    refused(taught["prep"], "--folds", kinds=("lstm",), teacher=taught["teacher"], folds=3)
    with pytest.raises(InputError, match="--teacher-weight"):
        TrainConfig(teacher=taught["teacher"], teacher_weight=0.0)


def test_cli_bad_teacher_is_one_line_and_exit_2(taught, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "beam_rnn.cli", "train", "--transformed", taught["other_prep"], "--output",
         str(tmp_path / "m"), "--kind", "lstm", "--teacher", taught["teacher"]],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "another preprocessing" in lines[0], proc.stderr
