"""ops.young_series: the two trailing means and their pooled WAPE / bias on a hand-computed example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ops.young_series import compare


def test_first_sale_and_padded_means_against_a_hand_computation():
    days = pd.date_range("2026-01-01", periods=60, freq="D")
    units = np.zeros((3, 60))
    o = 40                                   # origin: index 40, forecast days 41..54
    units[0, o - 4] = 10.0                   # young: first sold 5 days before the origin (inclusive), then nothing
    units[0, o + 3] = 2.0
    units[1, :] = 1.0                        # mature: 1 unit every day
    units[2, 5] = 7.0                        # no sale in the 28 days up to the origin: not active
    got = compare(units, days, days[[o]], horizon=14)
    # young series: first-sale mean 10 / 5 = 2 per day, padded 10 / 28; actual 2 units over 14 days
    young_fs = abs(2 - 2.0) + 13 * 2.0
    young_pad = abs(2 - 10 / 28) + 13 * 10 / 28
    assert got.loc[("young", "first_sale"), "n"] == 1
    assert got.loc[("young", "first_sale"), "wape"] == pytest.approx(young_fs / 2)
    assert got.loc[("young", "padded"), "wape"] == pytest.approx(young_pad / 2)
    assert got.loc[("young", "first_sale"), "bias"] == pytest.approx(28 / 2 - 1)
    # all active series: the mature one forecasts 1 per day exactly under both methods
    assert got.loc[("all", "padded"), "n"] == 2
    assert got.loc[("all", "first_sale"), "wape"] == pytest.approx(young_fs / 16)
    assert got.loc[("all", "padded"), "bias"] == pytest.approx((14 + 14 * 10 / 28) / 16 - 1)
    with pytest.raises(ValueError, match="needs 27 days before"):
        compare(units, days, days[[10]], horizon=14)
