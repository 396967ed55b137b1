"""Names the CBOW stages share: feature keys, output files, layer names (no TF, no Beam)."""

# --- Example records (one block of n examples per record) ----------------------------
CONTEXT_KEY = "context"
TARGET_KEY = "target"

# --- Output directory -------------------------------------------------------------------
EXAMPLES_DIR = "examples"
PASS_PREFIX_TEMPLATE = "pass-{:03d}"
EXAMPLES_SUFFIX = ".tfrecord.gz"
META_FILE = "cbow.json"
VECTORS_TXT = "vectors.txt"
VECTORS_TSV = "vectors.tsv"
METADATA_TSV = "metadata.tsv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "cbow_config.json"

# --- Evaluation files (../shared/data/embedding-eval) -----------------------------------
WORDSIM_FILE = "wordsim353.tsv"
SIMLEX_FILE = "simlex999.txt"
ANALOGY_FILE = "questions-words.txt"

# --- Model --------------------------------------------------------------------------------
EMBEDDING_LAYER = "embedding"  # the CBOW input vectors (what is exported); named like the classifiers' layer
OUTPUT_EMBEDDING_LAYER = "output_embedding"
METRICS_NAMESPACE = "beam_rnn.embeddings"
