"""The settings of scoring and evaluation: the one home of their defaults (and of their flags).

No TensorFlow and no Beam here: `pipelines/score.py` and `pipelines/evaluate.py`
generate their flags from these dataclasses (`beam_rnn.cli.flags`) before any
heavy import.
"""

import dataclasses

from beam_rnn.cli.flags import check_options, int_list, option
from beam_rnn.core.errors import InputError

OUTPUT_JSONL = "jsonl"
OUTPUT_CSV = "csv"
OUTPUT_PARQUET = "parquet"
OUTPUT_TFRECORD = "tfrecord"
OUTPUT_FORMATS = (OUTPUT_JSONL, OUTPUT_CSV, OUTPUT_PARQUET, OUTPUT_TFRECORD)

SPLIT_ALL = "all"
SPLITS = (SPLIT_ALL, "eval", "train")
DEFAULT_SORT_BUFFER = 4096
SORT_BUFFER_HELP = "Documents per bundle sorted by length before batching, so batches pad less (0 disables)."


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """How `ScoreCorpus` batches, shares models, retries and summarises; how the score files are written."""

    output_format: str = option(OUTPUT_JSONL, "Score file format.", choices=OUTPUT_FORMATS)
    min_batch_size: int = option(128, "Smallest RunInference batch.", minimum=1)
    max_batch_size: int = option(128, "Largest RunInference batch.", minimum=1)
    max_batch_duration_secs: int | None = option(
        None, "Streaming pipelines: longest time a batch waits (Beam's stateful batching).", cli=False,
        minimum=1,
    )
    sort_buffer: int = option(DEFAULT_SORT_BUFFER, SORT_BUFFER_HELP, minimum=0)
    num_shards: int = option(0, "Score file shards (0: the runner's choice).", minimum=0)
    share_model_across_processes: bool = option(
        False, "One model copy per machine shared by all SDK worker processes (Beam large_model)."
    )
    model_copies: int | None = option(
        None, "Exact number of model copies per machine (implies sharing).", metavar="N", minimum=1
    )
    retry_failed_batches: bool = option(
        False,
        "Re-score the documents of a batch that failed one at a time, so only failing documents are "
        "dead-lettered (on the DirectRunner this buffers all scores in memory).",
    )
    auc_max_bins: int = option(
        1 << 16, "The summary's AUC is exact up to this many distinct scores, a bounded histogram beyond.", minimum=2
    )
    skip_model_load_check: bool = option(
        False,
        "Only check that saved_model.pb and model_card.json exist and parse; do not load the SavedModel "
        "on the launcher.",
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.min_batch_size is not None and self.max_batch_size is not None and (
            self.min_batch_size > self.max_batch_size
        ):
            raise InputError(f"min_batch_size {self.min_batch_size} > max_batch_size {self.max_batch_size}.")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What `EvaluateModels` computes and on which documents."""

    split: str = option(
        SPLIT_ALL,
        "Evaluate only the documents of this split of the models' preprocessing (by hash of the id, or of "
        "the group column the model card names, as preprocess did).",
        choices=SPLITS,
    )
    # 256, not 64: the early passes step every row of a batch together (NumPy), so larger batches cost less
    # per document: 1,024 IMDB reviews took 19.6 s of model time at 64 and 10.3 s at 256 (2 busy cores).
    batch_size: int = option(256, "Documents per model call.", minimum=1)
    sort_buffer: int = option(DEFAULT_SORT_BUFFER, SORT_BUFFER_HELP, minimum=0)
    length_boundaries: tuple[int, ...] | None = option(
        None,
        "Token counts separating the report's length buckets (e.g. 100,300: short < 100 <= medium < 300 <= long).",
        parse=int_list, show_default="the tertiles of the evaluated documents' own token counts",
    )
    incremental_sample: int = option(
        0, "Also read this many documents (the same ones every run: smallest SHA-256 of the id) incrementally, "
        "exactly at every token: the streaming LSTM step by step, the other models re-run on every prefix; "
        "metrics.json 'incremental' gets edit overhead, correction time, relative correctness, reanalysis rate "
        "and the cost per token of each (0 = off).", metavar="N", minimum=0)
    auc_max_bins: int = option(1 << 16, "Distinct scores per model kept exactly for the AUC.", cli=False, minimum=2)
    confidence_level: float = option(
        0.95, "Of the Wilson intervals in the report; the models differ significantly when McNemar's p < 1 - this.",
        cli=False, greater_than=0.0, less_than=1.0,
    )
    mcnemar_exact_below: int = option(
        25, "McNemar's test is the exact binomial test below this many discordant documents, "
        "chi-square with continuity correction from there on.", cli=False,
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.length_boundaries is not None:
            b = tuple(self.length_boundaries)
            if not b or b[0] < 1 or any(x >= y for x, y in zip(b, b[1:])):
                raise InputError(f"--length-boundaries {','.join(map(str, b))}: need increasing positive token counts")
