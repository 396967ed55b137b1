"""Evaluate exported models on a labelled corpus: the streaming-vs-bidirectional report.

    python -m pipelines.evaluate --models runs/imdb/models --input data.csv --format csv --output runs/imdb/report

`--models` is a `pipelines.train` output holding `bilstm/` and/or `lstm/`. Writes
OUTPUT/metrics.json, OUTPUT/*.png, OUTPUT/report.html, per-document records
(OUTPUT/records-*.jsonl) and dead letters (OUTPUT/dead_letter-*.jsonl). Unknown flags
are Beam pipeline options (e.g. --runner DataflowRunner ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

from beam_rnn.core import constants as C

SPLITS = ("all", "eval", "train")


def build_parser() -> argparse.ArgumentParser:
    from beam_rnn.cli.corpus import add_corpus_args

    parser = argparse.ArgumentParser(prog="beam-rnn evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="Directory with exported bilstm/ and/or lstm/ models.")
    add_corpus_args(parser)
    parser.add_argument("--output", required=True, help="Report directory (local or gs://).")
    parser.add_argument("--split", choices=SPLITS, default="all",
                        help="Evaluate only the documents of this split of the models' preprocessing "
                        "(by hash of the id, as preprocess did); default all.")
    parser.add_argument("--batch-size", type=int, default=64, help="Documents per model call (default 64).")
    parser.add_argument("--length-boundaries", default="100,300",
                        help="Token counts separating short/medium/long documents (default 100,300).")
    return parser


def _check_models(models_dir: str, parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, Any]]:
    from beam_rnn.serve.report import available_models, read_card

    names = available_models(models_dir)
    if not names:
        parser.error(f"--models {models_dir!r} holds no exported model (expected bilstm/ or lstm/ with "
                     f"{C.SAVED_MODEL_DIR}/ and {C.MODEL_CARD_FILE}; run pipelines.train first)")
    try:
        cards = {n: read_card(os.path.join(models_dir, n)) for n in names}
    except (ValueError, OSError) as e:
        parser.error(f"--models {models_dir!r}: unreadable {C.MODEL_CARD_FILE}: {e}")
    from beam_rnn.serve import scoring as I
    from beam_rnn.train.export import VOCAB_TEXT_FILE

    # Before the pipeline: every file the report reads matches the export's manifest,
    # and each SavedModel loads (a damaged model used to fail minutes into the run).
    try:
        for n in names:
            model_dir = os.path.join(models_dir, n)
            info = I.read_model_info(model_dir, n)
            if n == C.MODEL_LSTM:
                I.verify_model_files(model_dir, [C.STEP_WEIGHTS_FILE, VOCAB_TEXT_FILE])
            I.check_model_loads(info)
    except I.ModelDirError as e:
        parser.error(str(e))
    classes = {c.get("num_classes") for c in cards.values()}
    if len(classes) != 1:
        parser.error(f"--models {models_dir!r}: the models disagree on the number of classes ({classes})")
    return names, cards[names[0]]


def _label_mapper(card: dict[str, Any]):
    """Map corpus labels to class ids: ints pass through, names go through the card's label_names."""
    names = card.get("label_names") or []
    k = int(card.get("num_classes", 2))

    def to_class(doc: dict) -> Any:
        import apache_beam as beam

        from beam_rnn.io import dead_letter

        label = doc.get(C.LABEL_KEY)
        if isinstance(label, str) and label in names:
            label = names.index(label)
        if isinstance(label, int) and 0 <= label < k:
            yield dict(doc, **{C.LABEL_KEY: label})
        else:
            yield beam.pvalue.TaggedOutput("dead_letter", dead_letter(
                doc.get(C.ID_KEY, ""), json.dumps(doc, ensure_ascii=False)[:1000],
                f"label_not_in_model: label {label!r} is not one of the model's {k} classes",
                stage="evaluate"))

    return to_class


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> dict[str, Any]:
    """Run the evaluation pipeline and write the report; returns metrics.json's contents."""
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import SetupOptions

    from beam_rnn.io import WriteJsonLines
    from beam_rnn.serve.report import EvaluateModels, measure_latency, write_report
    from beam_rnn.preprocess.transform import SPLIT_EVAL, SPLIT_TRAIN, split_for_id
    from beam_rnn.cli.corpus import read_corpus_transform, resolve_corpus
    from beam_rnn.preprocess.pipeline import maybe_sample

    parser = build_parser()
    known, pipeline_args = parser.parse_known_args(argv)
    if known.unlabelled:
        parser.error("evaluate needs a labelled corpus")
    names, card = _check_models(known.models, parser)
    resolve_corpus(known, parser)
    try:
        boundaries = tuple(int(x) for x in known.length_boundaries.split(","))
        if len(boundaries) != 2 or boundaries[0] >= boundaries[1]:
            raise ValueError("need two increasing token counts")
        read = read_corpus_transform(known)
    except ValueError as e:
        parser.error(str(e))
    eval_fraction = float((card.get("preprocess_config") or {}).get("eval_fraction", 0.2))
    wanted = {"eval": SPLIT_EVAL, "train": SPLIT_TRAIN}.get(known.split)

    output = known.output
    tmp = os.path.join(output, C.TMP_DIR)
    for stale in tf.io.gfile.glob(os.path.join(output, "records-*")) + tf.io.gfile.glob(
            os.path.join(output, "dead_letter-*")):
        tf.io.gfile.remove(stale)
    from beam_rnn.cli.runtime import pipeline_options

    options = pipeline_options(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    with beam.Pipeline(options=options) as p:
        docs, dead = p | "ReadCorpus" >> read
        if wanted is not None:
            docs = docs | "KeepSplit" >> beam.Filter(
                lambda d: split_for_id(d[C.ID_KEY], eval_fraction) == wanted)
        docs = maybe_sample(docs, known.sample_fraction)
        mapped = docs | "MapLabels" >> beam.FlatMap(_label_mapper(card)).with_outputs("dead_letter", main="docs")
        records, metrics = mapped.docs | "EvaluateModels" >> EvaluateModels(
            models_dir=known.models, model_names=names, num_classes=int(card.get("num_classes", 2)),
            batch_size=known.batch_size, length_boundaries=boundaries)
        _ = records | "WriteRecords" >> WriteJsonLines(os.path.join(output, "records"))
        _ = ((dead, mapped.dead_letter) | "AllDeadLetters" >> beam.Flatten()
             | "WriteDeadLetters" >> WriteJsonLines(os.path.join(output, "dead_letter")))
        _ = (metrics | "MetricsJson" >> beam.Map(json.dumps)
             | "WriteMetrics" >> beam.io.WriteToText(os.path.join(tmp, "metrics"), file_name_suffix=".json",
                                                     num_shards=1))
    [path] = tf.io.gfile.glob(os.path.join(tmp, "metrics*.json"))
    with tf.io.gfile.GFile(path) as f:
        metrics_out = json.loads(f.read())
    tf.io.gfile.rmtree(tmp)
    from beam_rnn.cli.runtime import counters

    io_counts = counters(p.result, "beam_rnn.io")
    metrics_out["rows_in"] = io_counts.get("rows_in")
    metrics_out["dead_lettered"] = sum(1 for f in tf.io.gfile.glob(os.path.join(output, "dead_letter-*"))
                                       for line in tf.io.gfile.GFile(f) if line.strip())
    metrics_out["split"] = known.split
    metrics_out["models_dir"] = known.models
    metrics_out["latency"] = measure_latency(known.models, _latency_texts(known.models, names[0]))
    paths = write_report(output, metrics_out)
    metrics_out["report"] = paths["report"]
    return metrics_out


def _latency_texts(models_dir: str, name: str, n: int = 50, words: int = 230) -> list[str]:
    """Documents of a typical IMDB length (230 words) drawn from the model's vocabulary."""
    import numpy as np
    import tensorflow as tf

    from beam_rnn.train.export import VOCAB_TEXT_FILE

    with tf.io.gfile.GFile(os.path.join(models_dir, name, VOCAB_TEXT_FILE)) as f:
        vocab = [w for w in f.read().split("\n") if w] or ["a"]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(vocab[:5000], size=words)) for _ in range(n)]


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.INFO)
    metrics = run(argv)
    summary = {name: {k: m[k] for k in ("accuracy", "auc", "f1")} for name, m in metrics["models"].items()}
    print(json.dumps({"documents": metrics["documents"], "models": summary, "report": metrics["report"]}))
    return 0


if __name__ == "__main__":
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(main(sys.argv[1:]))
