"""One study run: config, data, training, evaluation, probing, clamping and alignment."""
