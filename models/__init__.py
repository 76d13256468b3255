"""Pure ML: signal processing, detectors, training, export, bundles, evaluation."""
