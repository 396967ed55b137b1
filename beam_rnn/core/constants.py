"""Feature keys, reserved ids and file names shared by every stage.

One place for the names that cross stage boundaries: the raw document dict that
`ReadCorpus` emits, the transformed tf.Example features the trainer reads, and the
layout of an output directory.
"""

# --- Raw documents (ReadCorpus output, preprocessing_fn input) -------------
ID_KEY = "id"
TEXT_KEY = "text"
LABEL_KEY = "label"
# The value documents are grouped by for the train/eval split (`--group-column`, e.g. IMDB's
# film): documents of one group land on the same side; also a transformed feature then.
GROUP_KEY = "group"
# The aclImdb tree names each review's film in urls_{pos,neg}.txt: its one group column.
ACLIMDB_GROUP_COLUMN = "movie"
# IMDB's labels are 0 (aclImdb's neg/) and 1 (pos/; the CSV's label 1): the class names a run on it shows.
IMDB_CLASS_NAMES = ("negative", "positive")

# --- Output vocabulary (score files, summaries, evaluate records, stream outputs,
# `Prediction` objects, extra serving_default outputs): one set of names everywhere.
PREDICTED_LABEL_KEY = "predicted_label"  # class id 0..K-1
PREDICTED_LABEL_NAME_KEY = "predicted_label_name"  # class name (str(id) for int labels)
TRUE_LABEL_KEY = "true_label"  # the document's label as a class id
TRUE_LABEL_NAME_KEY = "true_label_name"
PROBABILITIES_KEY = "probabilities"  # {class name: probability} (JSON), probability_<name> columns (CSV)
CLASS_NAMES_KEY = "class_names"

# --- Transformed features (preprocessing_fn output, trainer input) ---------
TOKEN_IDS_KEY = "token_ids"
# Transformed label (int64, 0..K-1) and id (bytes) reuse the raw names.
TRANSFORMED_LABEL_KEY = LABEL_KEY
TRANSFORMED_ID_KEY = ID_KEY

# --- Token id layout, ready for Embedding(mask_zero=True) ------------------
# 0 = padding, 1..num_oov_buckets = out-of-vocabulary buckets, then words by
# descending frequency (the same layout as Keras TextVectorization with one OOV).
PAD_ID = 0
DEFAULT_NUM_OOV_BUCKETS = 1

# --- Label types ---------------------------------------------------------
LABEL_TYPE_INT = "int"
LABEL_TYPE_STRING = "string"
LABEL_TYPES = (LABEL_TYPE_INT, LABEL_TYPE_STRING)

# --- Corpus formats --------------------------------------------------------
FORMAT_CSV = "csv"
FORMAT_TSV = "tsv"
FORMAT_JSONL = "jsonl"
FORMAT_TEXT = "text"
FORMAT_LABELED_LINES = "labeled_lines"  # "<label> <text>" per line (SST files)
FORMAT_FILE_PER_LABEL = "file_per_label"  # rt-polarity.pos / rt-polarity.neg
FORMAT_ACLIMDB = "aclimdb"  # {train,test}/{pos,neg}/*.txt
FORMAT_TFRECORD = "tfrecord"  # tf.Example
FORMAT_PARQUET = "parquet"
FORMATS = (
    FORMAT_CSV,
    FORMAT_TSV,
    FORMAT_JSONL,
    FORMAT_TEXT,
    FORMAT_LABELED_LINES,
    FORMAT_FILE_PER_LABEL,
    FORMAT_ACLIMDB,
    FORMAT_TFRECORD,
    FORMAT_PARQUET,
)

# --- Dead-letter records -----------------------------------------------------
DEAD_SOURCE_KEY = "source"
DEAD_ROW_KEY = "row"
DEAD_REASON_KEY = "reason"
DEAD_STAGE_KEY = "stage"

# --- Preprocessing output layout (under --output DIR) --------------------------
TRANSFORM_FN_DIR = "transform_fn"
TRANSFORMED_METADATA_DIR = "transformed_metadata"
TRANSFORMED_DIR = "transformed"
TRAIN_PREFIX = "train"
EVAL_PREFIX = "eval"
DEAD_LETTER_DIR = "dead_letter"
STATS_FILE = "stats.json"
PREPROCESS_CONFIG_FILE = "preprocess_config.json"
TMP_DIR = "tmp"
VOCAB_FILENAME = "vocab"  # tft vocab_filename: transform_fn/assets/vocab
LABEL_VOCAB_FILENAME = "label_vocab"

# --- Model output layout (under --output DIR/<model>/) ----------------------------
SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
MODEL_CARD_FILE = "model_card.json"
STEP_WEIGHTS_FILE = "step_weights.npz"
MODEL_BILSTM = "bilstm"
MODEL_LSTM = "lstm"
MODEL_NAMES = (MODEL_BILSTM, MODEL_LSTM)

# --- IMDB -----------------------------------------------------------------
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_ENV_VAR = "BEAM_RNN_IMDB"
CACHE_ENV_VAR = "BEAM_RNN_CACHE"
