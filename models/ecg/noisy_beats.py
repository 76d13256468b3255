"""Noisy training beats for the beat classifier: the training records again, with nstdb noise added.

Why. Trained on clean records only, the classifier had never seen a normal beat under
electrode motion: on the Noise Stress Test records it called noisy normal beats
ventricular (P(V) 0.5-0.99 on MIT-BIH 118 at 12 dB) and strung them into false HIGH
``ventricular_run`` alarms. A noisy copy of every training record, labelled by the same
reference beats, teaches it that a noisy N is still N and that a detection with no beat
under it (a noise spike) is X, not V.

How (:func:`noisy_copies`). Record ``i`` of the training folders (in folder, then name
order, counting records without beats too) gets the noise condition
``NOISE_CONDITIONS[i % 6]``, added the way ``nst`` does (:func:`models.noise.add_noise`:
5 noise-free minutes, then 2-minute blocks on and off), and goes through the live front
end (:func:`models.ecg.train.beats_from_signal`). Only the first 5 minutes of each noise
record are used (``NOISE_SPAN_S``, rewound as needed): the nstdb records themselves add
noise only after minute 5, at the noise record's own times, so a noise stress test on
them still meets noise the classifier never saw (the artefact detector keeps the same
rule). The classifier's thresholds stay those of clean normal beats
(:func:`models.ecg.classifier.train_beat_classifier`'s ``calibrate``): the operating
point means what it meant, and noise only teaches.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["NOISE_CONDITIONS", "NOISE_SPAN_S", "noisy_copies"]

#: (noise record, SNR dB) per training record, in turn: electrode motion, the wearable's
#: worst artefact, at three levels; muscle noise at two; baseline wander at one.
NOISE_CONDITIONS: tuple[tuple[str, float], ...] = (("em", 12.0), ("ma", 6.0), ("em", 6.0), ("bw", 6.0),
                                                  ("em", 18.0), ("ma", 12.0))
#: The part of each noise record used (seconds): nstdb's own records never contain it.
NOISE_SPAN_S: tuple[float, float] = (0.0, 300.0)


def noisy_copies(folders: Sequence[Path], noise_dir: Path, progress: bool = True) -> list:
    """One noisy copy of every annotated record of ``folders``, through the live front end.

    Returns :class:`models.ecg.train.LabelledBeats` named ``<folder>/<record>+<noise><snr>``
    with the clean record's patient, so patient folds keep a record and its copy together.

    Raises
    ------
    FileNotFoundError
        ``noise_dir`` lacks one of the noise records ``bw``, ``em``, ``ma``.
    """
    from models.ecg.train import beats_from_signal, patient_of
    from models.noise import add_noise, load_noise
    from models.records import list_records, load_record

    noise = {}
    for name in sorted({n for n, _ in NOISE_CONDITIONS}):
        z, fs = load_noise(Path(noise_dir), name, 0)
        noise[name] = (z[int(NOISE_SPAN_S[0] * fs):int(NOISE_SPAN_S[1] * fs)], fs)
    items = [(Path(f), n) for f in folders for n in list_records(Path(f))]
    out = []
    for i, (folder, name) in enumerate(items):
        rec = load_record(folder, name)
        if rec.beat_samples.size == 0:
            continue
        kind, snr = NOISE_CONDITIONS[i % len(NOISE_CONDITIONS)]
        z, zfs = noise[kind]
        classes = np.asarray(rec.aami_classes)
        # a paced record has no N or S beat to size the signal by: size it by all beats
        sizing = classes if np.isin(classes, ["N", "S"]).any() else None
        mix = add_noise(rec.signal_mv, rec.beat_samples, z, rec.sample_rate_hz, snr, aami_classes=sizing,
                        noise_rate_hz=zfs)
        out.append(beats_from_signal(f"{folder.name}/{rec.name}+{kind}{snr:g}", mix.signal_mv, rec.sample_rate_hz,
                                     rec.beat_samples, rec.aami_classes, patient=patient_of(folder.name, rec.name)))
        if progress and (i % 20 == 0 or i == len(items) - 1):
            print(f"noisy training copies: {i + 1}/{len(items)} records", file=sys.stderr, flush=True)
    return out
