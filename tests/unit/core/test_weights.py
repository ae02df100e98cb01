"""The one stored form of model weights, and their packed form in Flower messages."""

import numpy as np
import pytest

from core.messages import LocalUpdate, TrainInstruction, pack, unpack
from core.storage import decode_weights, encode_weights


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


def test_packed_weights_travel_as_one_array_and_come_back_whole() -> None:
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal((16, 6)).astype("float32"), rng.standard_normal(16).astype("float32"),
               np.array(2.0, dtype="float32")]
    arrays, layout = pack(weights)
    assert len(arrays) == 1 and arrays[0].shape == (16 * 6 + 16 + 1,)
    assert layout == [2, 16, 6, 1, 16, 0]
    for a, b in zip(weights, unpack(arrays, layout), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    back = TrainInstruction.from_record(TrainInstruction(weights, 4, 0.5, 1).to_record())
    assert [w.shape for w in back.weights] == [w.shape for w in weights] and back.server_round == 4
    assert LocalUpdate.from_record(LocalUpdate(7, 4, 0, []).to_record()).weights == []  # "no new data"


def test_packed_weights_that_do_not_fit_their_layout_are_refused() -> None:
    arrays, layout = pack([np.zeros((3, 2), dtype="float32")])
    with pytest.raises(ValueError, match="do not fit"):
        unpack([arrays[0][:-1]], layout)
    with pytest.raises(ValueError, match="mixed dtypes"):
        pack([np.zeros(2, dtype="float32"), np.zeros(2, dtype="float64")])
    update = LocalUpdate(7, 4, 5, [np.zeros((3, 2), dtype="float32")]).to_record()
    update.config_records["config"]["layout"] = [2, 3, 3]
    with pytest.raises(ValueError, match="malformed reply"):
        LocalUpdate.from_record(update)


@pytest.mark.parametrize(("centre", "scale", "reason"), [
    ([0.0, 1.0], [1.0], "as long"),
    ([0.0], [0.0], "scale > 0"),
    ([0.0], [-1.0], "scale > 0"),
    ([float("inf")], [1.0], "finite number"),
    ([0.0] * 10_000, [1.0] * 10_000, "at most"),
])
def test_a_train_message_with_a_normalisation_no_model_can_use_is_refused(centre: list[float], scale: list[float],
                                                                          reason: str) -> None:
    """The device's side of the normalisation: a train message it cannot apply is an error reply, not a
    model trained on NaN."""
    weights = [np.zeros((2, 2), np.float32)]
    record = TrainInstruction(weights, 4, 0.5, 1, centre, scale).to_record()
    with pytest.raises(ValueError, match=reason):
        TrainInstruction.from_record(record)
    back = TrainInstruction.from_record(TrainInstruction(weights, 4, 0.5, 1, [20.0], [2.0]).to_record())
    assert (back.centre, back.scale) == ([20.0], [2.0])
