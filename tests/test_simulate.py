import numpy as np
import pytest

from cellgen import density
from cellgen.errors import CellgenError
from cellgen.masks import validate
from cellgen.simulate import SimulationConfig, count_for_density, simulate_image


@pytest.mark.parametrize("count", [0, 1, 12, 40])
def test_exact_cell_and_nucleus_count(count):
    sim = simulate_image(11, SimulationConfig(count=count, touching=0.9))
    assert sim.count == count
    assert len(np.unique(sim.cell)) - 1 == count
    assert len(np.unique(sim.nucleus)) - 1 == count
    assert validate(sim.cell, sim.nucleus, sim.semantic) == []


def test_same_seed_same_arrays_other_seed_differs():
    cfg = SimulationConfig(size=128, count=10)
    a, b, c = simulate_image(3, cfg), simulate_image(3, cfg), simulate_image(4, cfg)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.cell, b.cell)
    assert not np.array_equal(a.cell, c.cell)


def test_count_range_is_drawn_per_image():
    counts = {simulate_image(s, SimulationConfig(size=128, count=(2, 9))).count for s in range(12)}
    assert len(counts) > 3 and min(counts) >= 2 and max(counts) <= 9


def test_signal_sits_where_the_masks_say():
    sim = simulate_image(2, SimulationConfig(count=20))
    nuc, cyto = sim.image
    in_nuc, in_cell = sim.nucleus > 0, sim.cell > 0
    cyto_only = in_cell & ~in_nuc
    assert nuc[in_nuc].mean() > 4 * nuc[~in_cell].mean()
    assert cyto[cyto_only].mean() > 3 * cyto[~in_cell].mean()
    assert nuc[in_nuc].mean() > nuc[cyto_only].mean() * 2
    assert sim.image.dtype == np.float32 and 0 <= sim.image.min() and sim.image.max() <= 1


def test_touching_raises_contact_fraction():
    def touching(t):
        return np.mean([density.measure(simulate_image(s, SimulationConfig(count=30, touching=t, clustering=0.5)).cell,
                                        0.5)["touching_fraction"] for s in range(4)])

    assert touching(1.0) > touching(0.0) + 0.2


def test_density_target_and_impossible_requests():
    assert count_for_density(1000, 256, 0.5) == 16
    with pytest.raises(CellgenError, match="400 cells .* cannot fit a 128x128 image"):
        SimulationConfig(size=128, count=400)  # refused before any layout is tried
    with pytest.raises(CellgenError, match="count"):
        SimulationConfig(count=(5, 2))
    with pytest.raises(CellgenError, match="touching"):
        SimulationConfig(touching=2.0)


def test_crowded_layout_starts_over_smaller_instead_of_failing(monkeypatch):
    """Large early cells can leave no room for the last ones; the layout then restarts with
    all cells smaller rather than refusing a count that fits (46 cells in 128 um squared)."""
    import cellgen.simulate as sim

    outcomes = []
    original = sim._try_place

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        outcomes.append(result is not None)
        return result

    monkeypatch.setattr(sim, "_try_place", recording)
    cfg = SimulationConfig(size=128, pixel_size_um=1.0, count=46, touching=0.8, clustering=0.4)
    img = sim.simulate_image(14, cfg)
    assert outcomes == [False, True]  # the first layout got stuck, the smaller one fitted
    assert len(np.unique(img.cell)) - 1 == 46
    assert set(np.unique(img.nucleus)) == set(np.unique(img.cell))
