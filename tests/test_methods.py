"""Method registry, the built-in watershed baseline and the CellProfiler adapter.

Scores are F1 at IoU 0.5 on simulated images with exact masks (helper below, kept here so
these tests do not move when the bench metrics do).
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from cellgen.bench.methods import METHODS, Method, MethodUnavailable, get_method
from cellgen.bench.methods.base import Segmentation
from cellgen.errors import CellgenError
from cellgen.simulate import SimulationConfig, simulate_image
from tests.conftest import f1_at

PIXEL_SIZE = 0.5



def test_f1_helper():
    a = np.zeros((20, 20), np.uint32)
    a[2:8, 2:8], a[10:18, 10:18] = 1, 2
    assert f1_at(a, a) == 1.0
    b = np.where(a == 2, 7, a)  # ids need not agree
    assert f1_at(a, b) == 1.0
    assert f1_at(a, np.where(a == 1, 1, 0)) == pytest.approx(2 / 3)
    assert f1_at(a, np.zeros_like(a)) == 0.0


@pytest.fixture(scope="module")
def easy():
    """Four 256 px images with 12 cells each, some touching, at 0.5 um/px."""
    cfg = SimulationConfig(size=256, count=12, pixel_size_um=PIXEL_SIZE)
    return [simulate_image(seed, cfg) for seed in range(4)]


def scores(method: Method, sims, pixel_size=PIXEL_SIZE):
    cell, nucleus = [], []
    for sim in sims:
        seg = method.segment(sim.image, pixel_size)
        check_segmentation(seg, sim.image.shape[1:], method.compartments)
        if seg.cell is not None:
            cell.append(f1_at(sim.cell, seg.cell))
        if seg.nucleus is not None:
            nucleus.append(f1_at(sim.nucleus, seg.nucleus))
    return (np.mean(cell) if cell else None), (np.mean(nucleus) if nucleus else None)


def check_segmentation(seg: Segmentation, shape, compartments):
    for name in ("cell", "nucleus"):
        lab = getattr(seg, name)
        if name not in compartments:
            assert lab is None
            continue
        assert lab.dtype == np.uint32 and lab.shape == tuple(shape)


def check_nested_ids(seg: Segmentation):
    """Each nucleus lies in the cell with its own id."""
    inside = seg.nucleus > 0
    assert np.array_equal(seg.cell[inside], seg.nucleus[inside])


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_methods():
    assert {"watershed", "cellprofiler", "cellpose"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name


def test_get_method_builds_with_options():
    m = get_method("watershed", nucleus_diameter_um=10.0)
    assert m.name == "watershed" and m.describe()["nucleus_diameter_um"] == 10.0


def test_unknown_method_names_the_choices():
    with pytest.raises(CellgenError) as err:
        get_method("stardist")
    msg = str(err.value)
    assert "unknown method 'stardist'" in msg
    assert "watershed" in msg and "cellprofiler" in msg and "cellpose" in msg
    assert "\n" not in msg


def test_misspelt_option_is_a_user_error():
    with pytest.raises(CellgenError, match="nucleus_diametr_um"):
        get_method("watershed", nucleus_diametr_um=8.0)


# --------------------------------------------------------------------------- watershed


def test_watershed_scores_well_on_easy_images(easy):
    m = get_method("watershed")
    m.check()  # always available
    cell, nucleus = scores(m, easy)
    # measured: cell ~0.90, nucleus ~0.99 (mean of 4 images)
    assert nucleus > 0.9
    assert cell > 0.8


def test_watershed_keeps_nucleus_ids_inside_their_cells(easy):
    seg = get_method("watershed").segment(easy[0].image, PIXEL_SIZE)
    check_nested_ids(seg)
    assert 0.75 * easy[0].count <= seg.nucleus.max() <= 1.25 * easy[0].count


def test_watershed_defaults_scale_with_pixel_size(easy):
    """The same scenes at twice the magnification score as well when told their pixel size."""
    up = np.ones((2, 2), np.uint32)
    big = [
        SimpleNamespace(image=np.kron(s.image, up[None].astype(np.float32)), cell=np.kron(s.cell, up),
                        nucleus=np.kron(s.nucleus, up))
        for s in easy
    ]
    cell_1x, nucleus_1x = scores(get_method("watershed"), easy, PIXEL_SIZE)
    cell_2x, nucleus_2x = scores(get_method("watershed"), big, PIXEL_SIZE / 2)
    assert nucleus_2x >= nucleus_1x - 0.05 and cell_2x >= cell_1x - 0.05
    assert nucleus_2x > 0.9 and cell_2x > 0.8


def test_watershed_on_empty_and_constant_images():
    m = get_method("watershed")
    for image in (np.zeros((2, 64, 64), np.float32), np.full((2, 64, 64), 0.3, np.float32)):
        seg = m.segment(image, PIXEL_SIZE)
        assert seg.cell.max() == 0 and seg.nucleus.max() == 0


def test_watershed_rejects_bad_input():
    m = get_method("watershed")
    with pytest.raises(CellgenError, match="shape"):
        m.segment(np.zeros((64, 64), np.float32), PIXEL_SIZE)
    with pytest.raises(CellgenError, match="pixel size"):
        m.segment(np.zeros((2, 64, 64), np.float32), 0)


def test_describe_is_json():
    for name in ("watershed", "cellprofiler"):
        d = get_method(name).describe()
        assert d["method"] == name and "versions" in d
        json.dumps(d)


# --------------------------------------------------------------------------- CellProfiler


def test_cellprofiler_missing_library_names_the_install(monkeypatch):
    # None in sys.modules makes the import fail as if the package were absent
    monkeypatch.setitem(sys.modules, "cellprofiler_library", None)
    monkeypatch.setitem(sys.modules, "cellprofiler_library.modules", None)
    with pytest.raises(MethodUnavailable) as err:
        get_method("cellprofiler").check()
    msg = str(err.value)
    assert "pip install cellprofiler-library-nightly==5.0.0.dev784" in msg and "\n" not in msg


def test_cellprofiler_settings_spelling():
    # GUI spellings, or any case/punctuation of them as typed after --set
    m = get_method("cellprofiler", threshold_method="otsu", secondary_method="watershed_gradient")
    assert m.threshold_method == "Otsu" and m.secondary_method == "Watershed - Gradient"
    assert get_method("cellprofiler", threshold_method="minimum-cross-entropy").threshold_method == "Minimum Cross-Entropy"


def test_cellprofiler_rejects_unknown_settings():
    with pytest.raises(CellgenError, match="declump"):
        get_method("cellprofiler", declump="Smart")
    with pytest.raises(CellgenError, match="nucleus_diameter_um"):
        get_method("cellprofiler", nucleus_diameter_um=(20, 5))


def test_cellprofiler_scores_well_on_easy_images(easy):
    pytest.importorskip("cellprofiler_library")
    m = get_method("cellprofiler")
    m.check()
    cell, nucleus = scores(m, easy)
    # measured: 1.00 and 1.00 with the defaults (Minimum Cross-Entropy, Shape declumping)
    assert nucleus > 0.9
    assert cell > 0.85
    seg = m.segment(easy[0].image, PIXEL_SIZE)
    check_nested_ids(seg)
    assert m.describe()["versions"]["cellprofiler-library-nightly"] is not None


def test_cellprofiler_size_range_filters_objects(easy):
    """The diameter range is honoured: nuclei are ~7 um, so a 12-30 um range keeps none."""
    pytest.importorskip("cellprofiler_library")
    seg = get_method("cellprofiler", nucleus_diameter_um=(12.0, 30.0)).segment(easy[0].image, PIXEL_SIZE)
    assert seg.nucleus.max() <= 1
    # the same range in pixels at this pixel size (24-60 px) gives the same
    seg_px = get_method("cellprofiler", nucleus_diameter_px=(24, 60)).segment(easy[0].image, PIXEL_SIZE)
    assert np.array_equal(seg.nucleus, seg_px.nucleus)


@pytest.mark.parametrize("secondary", ["Watershed - Gradient", "Distance - N"])
def test_cellprofiler_other_secondary_methods_run(easy, secondary):
    pytest.importorskip("cellprofiler_library")
    seg = get_method("cellprofiler", secondary_method=secondary).segment(easy[0].image, PIXEL_SIZE)
    check_nested_ids(seg)
    assert f1_at(easy[0].cell, seg.cell) > 0.5
