"""Engine: evaluation (and, later, meta-training) loops and their reports."""
