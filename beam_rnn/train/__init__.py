"""Training: config (no TF), tf.data input, the training loop with exact resume, export for serving.

    from beam_rnn.train import run_training
    from beam_rnn.train.config import ModelSettings, TrainConfig

    run_training("out/prep", "out/models", TrainConfig(kinds=("lstm",), model=ModelSettings(units=32)))

`run_training` is imported on first use (PEP 562), so ``import beam_rnn.train.config``
stays free of TensorFlow.
"""


def __getattr__(name: str):
    if name == "run_training":
        from beam_rnn.train.trainer import run_training

        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
