"""The smallest training run the tests use: a convnet on tiny synthetic images."""

TINY_TRAINING = {
    "dataset": "synthetic:images=8,size=64",
    "backbone": "convnet",
    "hidden": 8,
    "inner_steps": 1,
    "meta_batch": 2,
    "val_every": 0,
}
