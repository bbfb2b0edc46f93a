import math

import numpy as np
import pytest

from cellgen import density
from cellgen.errors import CellgenError


def test_measures_on_constructed_image():
    cell = np.zeros((100, 100), np.uint32)
    cell[10:20, 10:20] = 1
    cell[10:20, 20:30] = 2  # touches 1
    cell[60:70, 60:70] = 3  # alone
    m = density.measure(cell, pixel_size_um=2.0)
    assert m["count"] == 3
    assert m["cells_per_mm2"] == pytest.approx(3 / (200e-3) ** 2)
    assert m["area_fraction"] == pytest.approx(300 / 10000)
    assert m["touching_fraction"] == pytest.approx(2 / 3)
    # centroids (14.5,14.5), (14.5,24.5), (64.5,64.5): nearest distances 10, 10 and hypot(40, 50) px
    expected = (10 + 10 + math.hypot(40, 50)) / 3 * 2.0
    assert m["mean_nn_distance_um"] == pytest.approx(expected)


def test_empty_and_single_cell_images():
    m = density.measure(np.zeros((10, 10), np.uint32), 0.5)
    assert m["count"] == 0 and math.isnan(m["mean_nn_distance_um"])
    one = np.zeros((10, 10), np.uint32)
    one[2:4, 2:4] = 7
    m = density.measure(one, 0.5)
    assert m["count"] == 1 and m["touching_fraction"] == 0 and math.isnan(m["mean_nn_distance_um"])


def test_tier_assignment_and_storage():
    scheme = density.TierScheme("count", (10, 20))
    assert [scheme.assign(v) for v in (0, 9.9, 10, 19.9, 20, 99)] == ["low", "low", "medium", "medium", "high", "high"]
    assert density.TierScheme.from_json(scheme.to_json()) == scheme
    nn = density.TierScheme("mean_nn_distance_um", (15, 30))
    assert nn.assign(40) == "low" and nn.assign(20) == "medium" and nn.assign(10) == "high"
    assert scheme.assign(float("nan")) == "low"


@pytest.mark.parametrize(
    "args, message",
    [
        (("volume", (1, 2)), "unknown density measure"),
        (("count", (5,)), "need 2 thresholds"),
        (("count", (5, 2)), "must increase"),
    ],
)
def test_bad_tier_schemes(args, message):
    with pytest.raises(CellgenError, match=message):
        density.TierScheme(*args)


def test_parse_from_command_line_strings():
    assert density.TierScheme.parse("count", "5,15").thresholds == (5.0, 15.0)
    with pytest.raises(CellgenError, match="comma-separated"):
        density.TierScheme.parse("count", "a,b")
