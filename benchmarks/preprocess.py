"""Benchmark: our preprocessing pipeline vs a TFT instance-dict pipeline.

Both start from the same corpus files, use the same reader, split, vocabulary
and tokenisation (the same preprocessing_fn), and write gzipped tf.Example
TFRecords; they differ in how data crosses into and out of TFT:

* ours: Arrow record batches in, `output_record_batches=True` out, C++ example
  encoder (beam_rnn.preprocess.pipeline.run_preprocess: PreprocessCorpus, AnalyzeAndTransform);
* baseline: instance dicts + DatasetMetadata in and out, `ExampleProtoCoder`
  (the style of tensorflow/transform examples/sentiment_example_v2.py).

    python benchmarks/preprocess.py [--input ../shared/data/imdb/train.csv] [--repeats 1]

Prints documents/s of each and the ratio (goal >= 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"


def run_ours(input_path: str, output: str) -> int:
    from beam_rnn.io import CorpusConfig
    from beam_rnn.preprocess.config import Corpus, PreprocessConfig
    from beam_rnn.preprocess.pipeline import run_preprocess

    stats = run_preprocess(Corpus((input_path,), CorpusConfig(format="csv")), PreprocessConfig(), output,
                           pipeline_options=["--runner", "DirectRunner"])
    return stats["documents_out"]


def run_baseline(input_path: str, output: str) -> int:
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from beam_rnn.core import constants as C
    from beam_rnn.io import ReadCorpus
    from beam_rnn.preprocess.config import PreprocessConfig
    from beam_rnn.preprocess.tft_graph import make_preprocessing_fn, raw_feature_spec
    from beam_rnn.preprocess.transform import _split_fn

    # The IMDB CSV's `id` column repeats across labels (0..12499 per label), so both
    # pipelines use ReadCorpus's derived ids (file:row), which are unique.

    config = PreprocessConfig()
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_feature_spec(config)))
    tmp = os.path.join(output, "tmp")
    with beam.Pipeline(argv=["--runner", "DirectRunner"]) as p, tft_beam.Context(temp_dir=tmp):
        docs, _ = p | ReadCorpus(input_path, format="csv")
        train, ev = docs | beam.Partition(_split_fn, 2, config.eval_fraction)
        (train_t, train_meta), tfn = (train, metadata) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(config, weighted_counts=False))
        eval_t, eval_meta = ((ev, metadata), tfn) | "TransformEval" >> tft_beam.TransformDataset()
        for name, data, meta in (("train", train_t, train_meta), ("eval", eval_t, eval_meta)):
            coder = tft.coders.ExampleProtoCoder(meta.schema)
            _ = (data | f"Encode{name}" >> beam.Map(coder.encode)
                 | f"Write{name}" >> beam.io.WriteToTFRecord(os.path.join(output, C.TRANSFORMED_DIR, name),
                                                             file_name_suffix=".tfrecord.gz"))
        _ = tfn | tft_beam.WriteTransformFn(output)
        counts = ((train_t, eval_t) | beam.Flatten() | beam.combiners.Count.Globally())
        _ = counts | beam.io.WriteToText(os.path.join(output, "count"), num_shards=1)
    [count_file] = pathlib.Path(output).glob("count-*")
    return int(count_file.read_text().strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench_preprocess"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not os.path.exists(args.input):
        sys.exit(f"benchmark input {args.input} is absent (needs ../shared/data/imdb/train.csv or --input)")
    results = {}
    for name, fn in (("baseline_instance_dicts", run_baseline), ("ours_record_batches", run_ours)):
        best = None
        for r in range(args.repeats):
            out = os.path.join(args.workdir, f"{name}_{r}")
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            docs = fn(args.input, out)
            seconds = time.perf_counter() - start
            rate = docs / seconds
            print(f"{name}: {docs} docs in {seconds:.1f}s = {rate:.0f} docs/s", flush=True)
            best = rate if best is None else max(best, rate)
        results[name] = best
    ratio = results["ours_record_batches"] / results["baseline_instance_dicts"]
    vocabs = {
        name: (pathlib.Path(args.workdir) / f"{name}_0" / "transform_fn" / "assets" / "vocab").read_bytes()
        for name in results
    }
    identical = len(set(vocabs.values())) == 1
    print(json.dumps({"docs_per_s": {k: round(v) for k, v in results.items()}, "ratio": round(ratio, 2),
                      "goal": 1.3, "identical_vocabulary": identical}))
    if not identical:
        sys.exit("the two pipelines built different vocabularies: the comparison is invalid")


if __name__ == "__main__":
    main()
    from beam_rnn.cli.runtime import hard_exit

    hard_exit(0)
