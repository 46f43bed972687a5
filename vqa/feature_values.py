"""Checks on the values of imported image features, before they are stored.

Another project's file can hold NaN or inf (a diverged extraction, a float16 overflow of
its own), or values beyond float16's range that storing as float16 would turn into inf.
Either trains into "the loss became nan" much later, far from the cause, so the importers
(``vqa.grid_features``, ``vqa.matfile``; ``vqa.regions`` checks its rows alike) skip and name
an image with non-finite values and refuse float16 for values it cannot hold.
"""

from __future__ import annotations

import numpy as np

from vqa.errors import VQAError

FLOAT16_MAX = 65504.0  # the largest finite float16


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """bool (N,): which of the N rows (images) of ``values`` (N, ...) hold a NaN or an inf."""
    values = np.asarray(values)
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def check_float16_range(values: np.ndarray, dtype: str, where: str) -> None:
    """Refuse, in one sentence, values that storing as ``dtype`` float16 would turn into inf.

    Args:
        values: finite feature values about to be stored.
        dtype: the storage dtype; only "float16" is checked.
        where: what the values are, for the sentence, e.g. "grid features /data/trainval.h5".

    Raises:
        VQAError: some value is beyond float16's range, naming how many and the largest.
    """
    if str(dtype) != "float16" or not np.asarray(values).size:
        return
    magnitudes = np.abs(np.asarray(values, dtype=np.float64))
    beyond = int(np.count_nonzero(magnitudes > FLOAT16_MAX))
    if beyond:
        raise VQAError(f"{where} hold {beyond} of {magnitudes.size} values beyond float16's range (largest "
                       f"{magnitudes.max():g}, float16 stops at {FLOAT16_MAX:g}), which --feature-dtype float16 "
                       "would store as inf; pass --feature-dtype float32.")
