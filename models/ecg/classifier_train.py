"""Beat-classifier stage on its own: train an existing ECG bundle's classifier again.

``cardiowatch train classifier --bundle B --records DIR... [--noise-dir NSTDB]`` keeps the
bundle's autoencoder and replaces its beat classifier (:mod:`models.ecg.classifier`),
trained on every beat of the records and, with ``--noise-dir``, of a noisy copy of each
(:mod:`models.ecg.noisy_beats`), at the operating point the bundle's classifier had.
Cross-validation calls :func:`refit_classifier` per fold with the fold's training
patients only.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.cli_help import HelpFormatter
from models.ecg.scorer import CLASSIFIER_FILE
from models.ecg.train import LabelledBeats, _fit_classifier, load_labelled_records

__all__ = ["main", "refit_classifier"]


def refit_classifier(bundle_dir: str | Path, patients: Sequence[LabelledBeats], noisy: Sequence[LabelledBeats] = (),
                     *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train a bundle's beat classifier again (its autoencoder unchanged) on ``patients``
    and their ``noisy`` copies, at the operating point the bundle's classifier had, and
    write it into the bundle (:func:`models.bundle.update_extras`). Its figures.

    A cross-validation fold passes only its training patients; the bundle's own held-out
    patients must not be among them (the caller's check)."""
    from models.bundle import load_bundle, read_meta, update_extras

    b = load_bundle(bundle_dir, runtime="keras", kind="ecg")
    old = read_meta(bundle_dir).extra.get("beat_classifier", {})
    clf, metrics = _fit_classifier(b.detector, b.meta.input.normaliser, patients, seed,  # type: ignore[union-attr]
                                   float(old.get("ventricular_fpr", 0.008)),
                                   float(old.get("supraventricular_fpr", 0.008)), progress, noisy)
    metrics = _json_safe(metrics)  # an AUROC with no beats of a class is NaN: null in bundle.json
    section = {**clf.settings(), "file": CLASSIFIER_FILE, "metrics": metrics}
    if noisy:
        from models.ecg.noisy_beats import NOISE_CONDITIONS, NOISE_SPAN_S

        section["noise_augmented"] = {"conditions": [f"{n}{snr:g}" for n, snr in NOISE_CONDITIONS],
                                      "noise_span_s": list(NOISE_SPAN_S), "copies": len(noisy)}
    update_extras(bundle_dir, files={CLASSIFIER_FILE: clf.trees.to_bytes()}, extra={"beat_classifier": section})
    return metrics


def _json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train classifier``: train an ECG bundle's beat classifier again (its
    autoencoder unchanged), optionally with a noisy copy of every record."""
    ap = argparse.ArgumentParser(prog="cardiowatch train classifier", description=main.__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path, help="ECG bundle whose classifier is replaced (in place)")
    ap.add_argument("--records", nargs="+", required=True, type=Path, metavar="DIR", help="annotated WFDB folders")
    ap.add_argument("--noise-dir", type=Path, metavar="NSTDB_DIR",
                    help="train with a noisy copy of every record too (noise records bw, em, ma of this folder)")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    patients = load_labelled_records(a.records, progress=not a.quiet)
    noisy: list[LabelledBeats] = []
    if a.noise_dir is not None:
        from models.ecg.noisy_beats import noisy_copies

        noisy = noisy_copies(a.records, a.noise_dir, progress=not a.quiet)
    print(json.dumps(refit_classifier(a.bundle, patients, noisy, seed=a.seed, progress=not a.quiet), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
