"""The one stored form of model weights."""

import numpy as np
import pytest

from fl_app.storage import decode_weights, encode_weights


def test_round_trip_keeps_shapes_dtype_and_values() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((4, 16)).astype("float32"),
        rng.standard_normal(16).astype("float32"),
        np.array(3.5, dtype="float32"),  # a 0-d array stays 0-d
    ]
    doc = encode_weights(arrays)
    assert doc["shapes"] == [[4, 16], [16], []]
    assert len(bytes(doc["data"])) == (64 + 16 + 1) * 4  # raw bytes, not a list of floats
    back = decode_weights(doc)
    for a, b in zip(arrays, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_mixed_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match="one dtype"):
        encode_weights([np.zeros(2, "float32"), np.zeros(2, "float64")])


def test_truncated_blob_is_detected() -> None:
    doc = encode_weights([np.zeros((2, 2), "float32")])
    doc["shapes"] = [[2, 3]]
    with pytest.raises(ValueError):
        decode_weights(doc)
