"""The tf_keras CBOW model: averaged context vectors scored against output vectors.

`CbowModel.sgd_step` is word2vec's negative-sampling update with closed-form
gradients; `train_cbow` (`beam_rnn.embeddings.training`) drives it.
"""

import tensorflow as tf
import tf_keras as keras

from beam_rnn.embeddings.layout import EMBEDDING_LAYER, OUTPUT_EMBEDDING_LAYER


def build_cbow_model(vocab_size: int, dim: int, *, window: int, seed: int) -> "CbowModel":
    """A built `CbowModel` (input vectors uniform ±1/dim, output vectors zero)."""
    model = CbowModel(vocab_size, dim, seed=seed)
    model(tf.zeros([1, 2 * window], tf.int64))
    return model


class CbowModel(keras.Model):
    """CBOW: Embedding(vocab, dim) → masked average of the context → scores
    against an output embedding matrix.

    `call(context)` returns the hidden vector h [batch, dim] (average of the
    non-zero context ids' vectors).  `sgd_step` is one word2vec negative-sampling
    update on a batch (closed-form gradients, sparse row updates).
    """

    def __init__(self, vocab_size: int, dim: int, *, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.dim = int(dim)
        self.seed = int(seed)
        self.embedding = keras.layers.Embedding(
            vocab_size,
            dim,
            embeddings_initializer=keras.initializers.RandomUniform(-1.0 / dim, 1.0 / dim, seed=seed),
            name=EMBEDDING_LAYER,
        )
        self.output_embedding = keras.layers.Embedding(
            vocab_size, dim, embeddings_initializer="zeros", name=OUTPUT_EMBEDDING_LAYER
        )

    def call(self, context):
        context = tf.cast(context, tf.int64)
        e = self.embedding(context)
        mask = tf.cast(tf.not_equal(context, 0), e.dtype)
        self.output_embedding(context[:, :1])  # builds the output matrix with the model
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        return tf.reduce_sum(e * mask[..., None], axis=1) / tf.maximum(count, 1.0)

    def scores(self, context, candidates):
        """Logits h·u_c of candidate ids [batch, m] given contexts [batch, 2w]."""
        h = self(context)
        u = tf.gather(self.output_embedding.embeddings, candidates)
        return tf.einsum("bd,bmd->bm", h, u)

    def sgd_step(self, context, target, negatives, learning_rate):
        """One negative-sampling SGD step; returns (summed loss, examples used)."""
        w_in = self.embedding.embeddings
        w_out = self.output_embedding.embeddings
        context = tf.cast(context, tf.int64)
        target = tf.cast(target, tf.int64)
        negatives = tf.cast(negatives, tf.int64)
        mask = tf.cast(tf.not_equal(context, 0), tf.float32)  # [B, C]
        cw = tf.reduce_sum(mask, axis=1)  # [B]
        h = tf.reduce_sum(tf.gather(w_in, context) * mask[..., None], axis=1) / tf.maximum(cw, 1.0)[:, None]
        samples = tf.concat([target[:, None], negatives], axis=1)  # [B, 1+K]
        batch = tf.shape(target)[0]
        k = tf.shape(negatives)[1]
        labels = tf.concat([tf.ones([batch, 1]), tf.zeros([batch, k])], axis=1)
        weights = tf.concat(
            [tf.ones([batch, 1]), tf.cast(tf.not_equal(negatives, target[:, None]), tf.float32)], axis=1
        ) * tf.cast(cw > 0, tf.float32)[:, None]
        u = tf.gather(w_out, samples)  # [B, 1+K, d]
        s = tf.einsum("bd,bkd->bk", h, u)
        loss = -tf.reduce_sum(
            weights * (labels * tf.math.log_sigmoid(s) + (1.0 - labels) * tf.math.log_sigmoid(-s))
        )
        g = (labels - tf.sigmoid(s)) * weights * learning_rate  # word2vec's g * alpha
        neu1e = tf.einsum("bk,bkd->bd", g, u)  # error for the context (computed before u moves)
        w_out.scatter_add(
            tf.IndexedSlices(tf.reshape(g[..., None] * h[:, None, :], [-1, self.dim]), tf.reshape(samples, [-1]))
        )
        w_in.scatter_add(
            tf.IndexedSlices(
                tf.reshape(neu1e[:, None, :] * mask[..., None], [-1, self.dim]), tf.reshape(context, [-1])
            )
        )
        return loss, tf.reduce_sum(tf.cast(cw > 0, tf.int64))

    def get_config(self):
        return {"vocab_size": self.vocab_size, "dim": self.dim, "seed": self.seed}
