"""Tree ensembles: numpy evaluation equals LightGBM's own predict, missing values included."""

from __future__ import annotations

import numpy as np
import pytest

from models.trees import TreeEnsemble, TreeEnsembleError, train_gbdt

lgb = pytest.importorskip("lightgbm")


def _data(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).astype(int) + (x[:, 2] > 1.0).astype(int)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values in every column
    x[:, 4] = np.where(rng.random(n) < 0.3, 0.0, x[:, 4])  # many exact zeros
    return x, y


@pytest.mark.parametrize("k", [2, 3])
def test_numpy_evaluation_matches_lightgbm(k: int) -> None:
    x, y = _data()
    y = np.minimum(y, k - 1)
    names = [f"f{i}" for i in range(x.shape[1])]
    classes = [f"c{i}" for i in range(k)]
    params = {"objective": "binary"} if k == 2 else {"objective": "multiclass", "num_class": k}
    params.update(verbosity=-1, num_leaves=15, deterministic=True, force_row_wise=True, num_threads=1, seed=1)
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=40)
    te = TreeEnsemble.from_lightgbm(booster, names, classes)
    xt, _ = _data(500, seed=7)
    want = booster.predict(xt)
    if k == 2:
        want = np.stack([1 - want, want], axis=1)
    np.testing.assert_allclose(te.predict_proba(xt), want, rtol=1e-9, atol=1e-12)
    # the one-row path (used inside sequential loops) gives the same numbers
    rows = np.array([te.predict_proba_row(r) for r in xt.tolist()])
    np.testing.assert_allclose(rows, want, rtol=1e-9, atol=1e-12)


def test_train_is_reproducible_and_round_trips(tmp_path) -> None:
    x, y = _data()
    names = [f"f{i}" for i in range(5)]
    a = train_gbdt(x, y, ["a", "b", "c"], names, n_trees=30, seed=3)
    b = train_gbdt(x, y, ["a", "b", "c"], names, n_trees=30, seed=3)
    np.testing.assert_array_equal(a.predict_proba(x[:200]), b.predict_proba(x[:200]))
    a.save(tmp_path / "t.npz")
    c = TreeEnsemble.load(tmp_path / "t.npz")
    assert c.feature_names == tuple(names) and c.classes == ("a", "b", "c")
    np.testing.assert_array_equal(a.predict_proba(x[:200]), c.predict_proba(x[:200]))
    # the model learnt something: the majority class is not all it predicts
    assert len(set(a.predict_proba(x).argmax(axis=1).tolist())) == 3


def test_bad_inputs_name_the_problem(tmp_path) -> None:
    x, y = _data(300)
    te = train_gbdt(x, np.minimum(y, 1), ["n", "p"], [f"f{i}" for i in range(5)], n_trees=5)
    with pytest.raises(TreeEnsembleError, match=r"shape \[n, 5\]"):
        te.predict_proba(np.zeros((3, 4)))
    with pytest.raises(TreeEnsembleError, match="row must have 5 values"):
        te.predict_proba_row([0.0] * 4)
    with pytest.raises(TreeEnsembleError, match="class indices"):
        train_gbdt(x, y + 5, ["a", "b"], [f"f{i}" for i in range(5)])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(TreeEnsembleError, match="not a tree ensemble"):
        TreeEnsemble.load(tmp_path / "bad.npz")
