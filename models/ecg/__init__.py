"""ECG beat detector kind: beat input tensor, its score, training data and training."""
