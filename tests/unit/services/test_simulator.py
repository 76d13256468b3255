"""The simulated wearable's two streams each number their own messages."""

from __future__ import annotations

import json

from models.synthetic import Event, SyntheticPatient

from services.simulator import Wearable

T0 = 1_767_225_600_000


def test_ecg_and_heart_rate_sequences_are_each_gapless_even_through_a_pause():
    w = Wearable("p-1", "dev-1", SyntheticPatient("p-1", 250, events=[Event("pause", 20, 6)]), T0)
    ecg_seq, hr_seq = [], []
    for _ in range(40):
        e, h = w.step()
        ecg_seq.append(json.loads(e)["seq"])
        if h is not None:
            hr_seq.append(json.loads(h)["seq"])
    assert ecg_seq == list(range(40))
    # no heart rate without beats: fewer samples, but numbered without holes
    assert len(hr_seq) < 38 and hr_seq == list(range(len(hr_seq)))
