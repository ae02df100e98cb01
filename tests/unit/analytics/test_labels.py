"""The batch's compact labels take only a data set's own numbering (seq = position, each once): any other
would make a seq the data set does not have read as normal."""

from __future__ import annotations

import pandas as pd
import pytest

from analytics.batch import Labels


@pytest.mark.parametrize("seqs", [[1, 2, 3], [0, 1, 1], [0, 2, 3], [-1, 0, 1]])
def test_labels_refuse_seqs_that_are_not_positions(seqs: list[int]) -> None:
    labels = pd.DataFrame({"seq": seqs, "label": [True, False, True]})
    with pytest.raises(ValueError, match="positions"):
        Labels.of(None, labels)  # type: ignore[arg-type]  # refused before Spark is asked
