"""The shared autoencoder stage: threshold helpers and the builder's validation (the Detector contract is in test_detector_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.autoencoder import (DetectorError, LSTMAutoencoder, NotFittedError, check_input, padded_batch,
                                threshold_from_scores, validate_fpr)
from models.ecg.features import ECGScore
from models.hr.features import HRScore


def test_threshold_from_scores_is_the_higher_quantile_and_validates() -> None:
    s = np.arange(100, dtype=np.float32)
    assert threshold_from_scores(s, 0.05) == 95.0  # exactly 4 of 100 above
    with pytest.raises(ValueError, match="at least one normal score"):
        threshold_from_scores(np.zeros(0), 0.05)
    with pytest.raises(ValueError, match="non-finite"):
        threshold_from_scores(np.array([1.0, np.nan]), 0.05)
    with pytest.raises(ValueError, match=r"fpr must be in \(0, 1\), got 0"):
        validate_fpr(0)


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        ((1, 3, ECGScore()), {}, "timesteps must be >= 2, got 1"),
        ((80, 0, ECGScore()), {}, "channels must be >= 1, got 0"),
        ((80, 1, ECGScore()), {}, "ECGScore needs channels >= 2"),
        ((80, 3, ECGScore()), {"latent_units": 0}, "latent_units must be >= 1, got 0"),
        ((8, 2, HRScore(trim=4)), {}, r"trim must be in \[0, window // 2\)"),
    ],
)
def test_builder_validates(args: tuple, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LSTMAutoencoder(*args, **kw)


def test_one_error_root_and_shape_check() -> None:
    assert issubclass(NotFittedError, DetectorError)
    from models.bundle import BundleError
    from models.export import ExportError

    assert issubclass(BundleError, DetectorError) and issubclass(ExportError, DetectorError)
    with pytest.raises(ValueError, match=r"x must have shape \[n, 32, 2\], got \(1, 32\)"):
        check_input(np.zeros((1, 32)), 32, 2)


def test_fit_validates_before_training() -> None:
    det = LSTMAutoencoder(32, 2, HRScore(), enc_units=2, latent_units=2, dec_units=2)
    x = np.zeros((4, 32, 2), np.float32)
    with pytest.raises(ValueError, match="need non-empty train and val sets, got 4 and 0"):
        det.fit(x, x[:0], progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        det.fit(x, x, epochs=0, progress=False)
    with pytest.raises(ValueError, match=r"x must have shape \[n, 32, 2\]"):
        det.fit(np.zeros((4, 80, 3), np.float32), x, progress=False)


def test_padded_batch_rounds_up_by_at_most_a_quarter_and_keeps_few_shapes() -> None:
    sizes = {n: padded_batch(n) for n in range(1, 4097)}
    assert all(n <= p <= max(n, 1.25 * n) for n, p in sizes.items())
    assert [padded_batch(n) for n in (1, 8, 9, 10, 11, 17, 100, 129, 4096)] == [1, 8, 10, 10, 12, 20, 112, 160, 4096]
    assert len(set(sizes.values())) == 44  # shapes the CPU kernels keep working memory for
    assert all(padded_batch(p) == p for p in set(sizes.values()))  # a rounded size stays put
