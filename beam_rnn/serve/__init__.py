"""beam_rnn.serve: scoring and evaluating exported models with Beam's RunInference (see docs/ARCHITECTURE.md).

* `config`: `ScoreConfig`, `EvaluateConfig` (defaults and flags; no TF, no Beam).
* `handler`: `ClassifierModelHandler`, the ModelHandler every RunInference here runs.
* `score`: `ScoreCorpus` (validate, sort by length, `Infer`, score records).
* `summary`: `ScoreSummaryFn`, `DistinctIdsFn`, the summary's counts.
* `write`: `WriteScores`, the summary JSON, output patterns.
* `evaluate`: `EvaluateModels` (same `Infer` path, plus early prediction), `ReportCombineFn`.
* `report`: latency, plots, report.html.
* `run`: `run_score`, `run_evaluate` (what the drivers call).

The names below are importable from `beam_rnn.serve`; they load on first use, so
that importing `beam_rnn.serve.config` stays light.
"""

import importlib
from typing import Any

_EXPORTS = {
    "ScoreConfig": "config",
    "EvaluateConfig": "config",
    "OUTPUT_FORMATS": "config",
    "ClassifierModelHandler": "handler",
    "ClassifierModels": "handler",
    "check_model_loads": "handler",
    "ScoreCorpus": "score",
    "ScoreResult": "score",
    "Infer": "score",
    "score_columns": "records",
    "ScoreSummaryFn": "summary",
    "DistinctIdsFn": "summary",
    "WriteScores": "write",
    "write_summary": "write",
    "output_patterns": "write",
    "EvaluateModels": "evaluate",
    "EvaluationModelHandler": "evaluate",
    "ReportCombineFn": "evaluate",
    "write_report": "report",
    "measure_latency": "report",
    "run_score": "run",
    "run_evaluate": "run",
}
_ARTIFACTS = ("ModelDirError", "ModelInfo", "read_model_info", "resolve_models")

__all__ = [
    "ScoreConfig",
    "EvaluateConfig",
    "OUTPUT_FORMATS",
    "ClassifierModelHandler",
    "ClassifierModels",
    "check_model_loads",
    "ScoreCorpus",
    "ScoreResult",
    "Infer",
    "score_columns",
    "ScoreSummaryFn",
    "DistinctIdsFn",
    "WriteScores",
    "write_summary",
    "output_patterns",
    "EvaluateModels",
    "EvaluationModelHandler",
    "ReportCombineFn",
    "write_report",
    "measure_latency",
    "run_score",
    "run_evaluate",
    "ModelDirError",
    "ModelInfo",
    "read_model_info",
    "resolve_models",
]


def __getattr__(name: str) -> Any:
    if name in _ARTIFACTS:
        module = importlib.import_module("beam_rnn.core.artifacts")
    elif name in _EXPORTS:
        module = importlib.import_module(f"beam_rnn.serve.{_EXPORTS[name]}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
