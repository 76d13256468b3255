"""Heart-rate detector kind: RR-window input tensor, its score, training data, training and measurement."""
