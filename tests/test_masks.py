import numpy as np
import pytest
from scipy import ndimage as ndi

from cellgen import masks as M
from cellgen.errors import InvalidMaskError
from cellgen.simulate import SimulationConfig, simulate_image
from tests.conftest import f1_at


def two_touching_cells():
    cell = np.zeros((20, 24), np.uint32)
    cell[2:12, 2:12] = 1
    cell[2:12, 12:22] = 2
    nucleus = np.zeros_like(cell)
    nucleus[5:8, 5:8] = 1
    nucleus[5:8, 15:18] = 2
    return cell, nucleus


def test_semantic_map_uses_paper_values():
    cell, nucleus = two_touching_cells()
    sem = M.semantic_from_instances(cell, nucleus)
    assert sem.dtype == np.uint8
    assert set(np.unique(sem)) == {0, 128, 255}
    assert (sem[nucleus > 0] == 128).all() and (sem[(cell > 0) & (nucleus == 0)] == 255).all()
    assert (sem[cell == 0] == 0).all()


def test_label_map_marks_both_sides_of_a_contact():
    cell, nucleus = two_touching_cells()
    lm = M.label_map_from_instances(cell, nucleus)
    assert (lm[2:12, 11] == M.BOUNDARY).all() and (lm[2:12, 12] == M.BOUNDARY).all()
    assert (lm[2:12, 10] == M.CYTOPLASM).all()
    assert (lm[nucleus > 0] == M.NUCLEUS).all()


def test_touching_cells_survive_round_trip_exactly():
    cell, nucleus = two_touching_cells()
    back = M.instances_from_label_map(M.label_map_from_instances(cell, nucleus), min_nucleus_area=1, min_cell_area=1)
    assert np.array_equal(back.cell, cell) and np.array_equal(back.nucleus, nucleus)
    # without the boundary class the split still follows the nuclei but is no longer exact
    three = M.one_hot(M.label_map_from_instances(cell, nucleus))[:3]
    three[1] += M.one_hot(M.label_map_from_instances(cell, nucleus))[3]
    split = M.instances_from_label_map(three, min_nucleus_area=1, min_cell_area=1)
    assert split.count == 2


def test_round_trip_on_densest_simulated_tier_keeps_f1_at_09():
    scores = []
    for seed in range(6):
        sim = simulate_image(seed, SimulationConfig(count=(44, 50), touching=1.0))
        assert M.validate(sim.cell, sim.nucleus, sim.semantic) == []
        back = M.instances_from_label_map(M.one_hot(M.label_map_from_instances(sim.cell, sim.nucleus)))
        assert M.validate(back.cell, back.nucleus, back.semantic) == []
        scores.append(f1_at(sim.cell, back.cell, 0.9))
        scores.append(f1_at(sim.nucleus, back.nucleus, 0.9))
    assert min(scores) >= 0.98, scores


def test_soft_noisy_label_map_gives_consistent_masks():
    sim = simulate_image(4, SimulationConfig(count=30, touching=0.9))
    soft = M.one_hot(M.label_map_from_instances(sim.cell, sim.nucleus))
    rng = np.random.default_rng(0)
    soft = ndi.gaussian_filter(soft, (0, 0.7, 0.7)) + rng.normal(0, 0.15, soft.shape).astype(np.float32)
    back = M.instances_from_label_map(soft)
    assert M.validate(back.cell, back.nucleus, back.semantic) == []
    assert np.array_equal(back.semantic, M.semantic_from_instances(back.cell, back.nucleus))
    assert f1_at(sim.cell, back.cell, 0.5) > 0.9
    again = M.instances_from_label_map(soft)
    assert np.array_equal(again.cell, back.cell)


def test_fragments_and_nucleus_free_foreground_are_cleaned():
    classes = np.zeros((30, 30), np.uint8)
    classes[2:14, 2:14] = M.CYTOPLASM
    classes[6:10, 6:10] = M.NUCLEUS
    classes[20:28, 20:28] = M.CYTOPLASM  # a blob with no nucleus
    classes[1, 28] = M.NUCLEUS  # a one-pixel nucleus fragment
    m = M.instances_from_label_map(classes)
    assert m.count == 1
    assert m.cell[24, 24] == 0 and m.nucleus[1, 28] == 0


def test_instances_from_semantic_rejects_foreign_values():
    with pytest.raises(InvalidMaskError, match="0, 128 or 255"):
        M.instances_from_semantic(np.full((4, 4), 7, np.uint8))
    sem = M.semantic_from_instances(*two_touching_cells())
    assert M.instances_from_semantic(sem, min_nucleus_area=1, min_cell_area=1).count == 2


def test_relabel_sequential_orders_by_first_pixel():
    out = M.relabel_sequential(np.array([[0, 9, 9], [4, 0, 2]]))
    assert out.dtype == np.uint32
    assert out.tolist() == [[0, 1, 1], [2, 0, 3]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c, n: (c.astype(np.int32), n), "dtype int32"),
        (lambda c, n: (c, n[:-1]), "shapes differ"),
        (lambda c, n: (np.where(c == 2, 3, c).astype(np.uint32), n), "not contiguous"),
        (lambda c, n: (c, np.where(n == 2, 0, n).astype(np.uint32)), "without a nucleus"),
        (lambda c, n: (c, np.where(n == 1, 2, n).astype(np.uint32)), "outside the cell"),
    ],
)
def test_validator_reports_each_inconsistency(mutate, message):
    cell, nucleus = mutate(*two_touching_cells())
    problems = M.validate(cell, nucleus)
    assert any(message in p for p in problems), problems
    with pytest.raises(InvalidMaskError):
        M.check_masks(cell, nucleus)


def test_validator_catches_semantic_disagreement_and_nucleus_outside_cells():
    cell, nucleus = two_touching_cells()
    sem = M.semantic_from_instances(cell, nucleus)
    sem[0, 0] = 255
    assert any("disagrees" in p for p in M.validate(cell, nucleus, sem))
    nucleus = nucleus.copy()
    nucleus[15, 15] = 1
    assert any("outside every cell" in p for p in M.validate(cell, nucleus))
    assert M.validate(*two_touching_cells()) == []
