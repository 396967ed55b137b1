"""beam_rnn: recurrent text classifiers for Apache Beam pipelines.

Streaming (unidirectional) and bidirectional LSTM classifiers, trained on a
vocabulary built with tensorflow-transform and served with RunInference.
"""

import os as _os

# One Keras for the whole package, chosen deliberately: tensorflow-transform sets
# TF_USE_LEGACY_KERAS=1 on import, which makes `tf.keras` mean tf_keras (Keras 2)
# only if TFT happened to be imported first.  We pin the choice up front so the
# trainer, the exports and the TFT transform layer always agree, whatever the
# import order of the caller.  Code in this package imports `tf_keras` directly.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
