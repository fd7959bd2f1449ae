"""Raw-format reading and validation: every bad case is refused with a message naming it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from thesis_mlflow.learn import data


def _write_h5(path, splits, ykeys=("Y_train", "y_val", "y_test"), extra=None, drop=()):
    with h5py.File(path, "w") as f:
        for (s, sp), yk in zip(splits.items(), ykeys, strict=True):
            if f"X_{s}" not in drop:
                f[f"X_{s}"] = sp.X
            if yk not in drop:
                f[yk] = sp.y
        for k, v in (extra or {}).items():
            f[k] = v


def _copy(splits):
    return {k: data.Split(X=v.X.copy(), y=v.y.copy()) for k, v in splits.items()}


def test_read_roundtrip_and_slices(tiny_raw, tiny_splits):
    sp = data.read_raw(tiny_raw)
    assert set(sp) == {"train", "val", "test"}
    tr = sp["train"]
    np.testing.assert_array_equal(tr.X, tiny_splits["train"].X)
    assert tr.ids.shape == (len(tr), 18) and tr.valid.dtype == bool
    assert tr.continuous(4).shape == (len(tr), 18, 3)
    assert tr.continuous(5).shape == (len(tr), 18, 4)
    np.testing.assert_array_equal(tr.continuous(4)[..., 0], tr.feature("pT"))
    np.testing.assert_array_equal(tr.continuous(5)[..., 0], tr.feature("E"))
    np.testing.assert_array_equal(tr.met, tr.X[:, 18])
    # padding mask agrees with zero features
    assert np.all(tr.objects[~tr.valid] == 0)


def test_accepts_extra_keys_and_label_case(tmp_path, tiny_splits):
    p = tmp_path / "alt.h5"
    _write_h5(p, tiny_splits, ykeys=("y_train", "Y_val", "Y_test"), extra={"weights": np.ones(3)})
    sp = data.read_raw(p)
    assert len(sp["val"]) == len(tiny_splits["val"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.__setitem__("val", data.Split(np.zeros((5, 91), np.float32), np.ones(5, int))), "expected [N, 92]"),
        (lambda s: s["train"].X.__setitem__((3, 25), np.nan), "NaN or inf"),
        (lambda s: s["test"].X.__setitem__((0, 25), np.inf), "NaN or inf"),
        (lambda s: s["train"].X.__setitem__((0, 0), 8), "expected integers 0-7"),
        (lambda s: s["train"].X.__setitem__((0, 0), -1), "expected integers 0-7"),
        (lambda s: s["val"].y.__setitem__(0, 6), "expected integers 1-5"),
        (lambda s: s["val"].y.__setitem__(0, 0), "expected integers 1-5"),
    ],
    ids=["width", "nan", "inf", "id8", "id-1", "label6", "label0"],
)
def test_bad_values_refused_and_nothing_written(tmp_path, tiny_splits, mutate, message):
    sp = _copy(tiny_splits)
    mutate(sp)
    bad = tmp_path / "bad.h5"
    _write_h5(bad, sp)
    with pytest.raises(data.DataFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        data.read_raw(bad)
    out = tmp_path / "out.h5"
    with pytest.raises(data.DataFormatError):
        data.write_raw(out, sp)
    assert not out.exists()
    assert list(tmp_path.glob(".out.h5*")) == []


def test_padding_with_features_refused(tmp_path, tiny_splits):
    sp = _copy(tiny_splits)
    row = int(np.argmax((sp["train"].ids == 0).any(1)))
    obj = int(np.argmax(sp["train"].ids[row] == 0))
    sp["train"].X[row, 20 + 4 * obj + 1] = 30.0
    _write_h5(tmp_path / "b.h5", sp)
    with pytest.raises(data.DataFormatError, match="ID 0 \\(padding\\) but non-zero features"):
        data.read_raw(tmp_path / "b.h5")


def test_object_without_features_refused(tmp_path, tiny_splits):
    sp = _copy(tiny_splits)
    sp["train"].X[0, 20:24] = 0
    _write_h5(tmp_path / "b.h5", sp)
    with pytest.raises(data.DataFormatError, match="all features zero"):
        data.read_raw(tmp_path / "b.h5")


@pytest.mark.parametrize("missing", ["X_val", "y_test", "Y_train"])
def test_missing_split_named(tmp_path, tiny_splits, missing):
    p = tmp_path / "m.h5"
    _write_h5(p, tiny_splits, drop=(missing,))
    with pytest.raises(data.DataFormatError, match=missing.split("_")[1]):
        data.read_raw(p)


def test_not_hdf5(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    with pytest.raises(data.DataFormatError, match="not a readable HDF5"):
        data.read_raw(p)
    with pytest.raises(data.DataFormatError, match="file not found"):
        data.read_raw(tmp_path / "nope.h5")


def test_task_labels():
    y = np.array([1, 2, 3, 4, 5, 1])
    keep, t = data.task_labels(y, "4t_vs_bg")
    assert keep.all() and t.tolist() == [1, 0, 0, 0, 0, 1]
    keep, t = data.task_labels(y, "4t_vs_ttH")
    assert keep.tolist() == [True, True, False, False, False, True] and t.tolist() == [1, 0, 1]
    keep, t = data.task_labels(y, "multiclass")
    assert t.tolist() == [0, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="4t_vs_bg, 4t_vs_ttH, multiclass"):
        data.task_labels(y, "bogus")


def test_limits_read_the_first_events_of_each_split(tiny_raw):
    """``limits`` reads only the first N rows of a split from the file: the same rows as reading it all and cutting."""
    full = data.read_raw(tiny_raw)
    some = data.read_raw(tiny_raw, limits={"train": 100, "val": 7, "test": None})
    assert {s: len(v.y) for s, v in some.items()} == {"train": 100, "val": 7, "test": len(full["test"].y)}
    for s, v in some.items():
        np.testing.assert_array_equal(v.X, full[s].X[: len(v.y)])
        np.testing.assert_array_equal(v.y, full[s].y[: len(v.y)])
