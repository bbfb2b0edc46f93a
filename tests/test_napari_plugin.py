"""The napari plugin: manifest, reader, sample data and the sampling widget.

Reader and sample-data functions return layer-data tuples and are tested without napari;
the widget test runs only where napari (with a Qt binding) is installed, offscreen.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from cellgen import napari_plugin
from cellgen.datasets.h5 import BenchmarkSet

MANIFEST = Path(napari_plugin.__file__).with_name("napari.yaml")


def test_manifest_is_valid_and_its_commands_import():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # raises if a python_name does not resolve
    contributions = manifest.contributions
    assert [r.command for r in contributions.readers] == ["cellgen.get_reader"]
    assert {s.key for s in contributions.sample_data} == {"simulated", "generated"}
    assert [w.display_name for w in contributions.widgets] == ["Draw samples"]


def test_reader_accepts_only_cellgen_sets(small_set, tmp_path):
    import h5py

    assert napari_plugin.get_reader(str(small_set)) is napari_plugin.read_set
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    for path in (foreign, tmp_path / "broken.h5", tmp_path / "missing.h5", tmp_path / "image.tif"):
        assert napari_plugin.get_reader(str(path)) is None


def test_reader_layers_hold_images_labels_scale_and_metadata(small_set):
    layers = napari_plugin.read_set(str(small_set))
    with BenchmarkSet(small_set) as ds:
        kinds = [(kwargs["name"], kind) for _, kwargs, kind in layers]
        assert kinds[:2] == [("small nucleus", "image"), ("small cytoplasm", "image")]
        assert kinds[-2:] == [("small cells", "labels"), ("small nuclei", "labels")]
        assert len(layers) == 2 * len(ds.variants) + 2
        by_name = {kwargs["name"]: (data, kwargs) for data, kwargs, _ in layers}
        px = ds.pixel_size_um
        for data, kwargs in by_name.values():
            assert kwargs["scale"] == (1.0, px, px) and data.shape == (ds.n, *ds.image_size)
            per_image = kwargs["metadata"]["per_image"]
            assert per_image["tier"] == list(ds.metadata["tier"]) and per_image["count"] == list(ds.metadata["count"])
            assert kwargs["metadata"]["cellgen"]["pixel_size_um"] == px
        # lazy arrays read the right images
        assert np.array_equal(np.asarray(by_name["small cytoplasm [poisson]"][0][4]), ds.images(4, "poisson")[1])
        assert np.array_equal(np.asarray(by_name["small nuclei"][0][8]), ds.masks(8).nucleus)
        assert by_name["small nucleus"][1]["visible"] and not by_name["small nucleus [gaussian]"][1]["visible"]


def test_simulated_sample_spans_the_three_tiers():
    layers = napari_plugin.simulated_sample()
    data, kwargs, kind = layers[-2]
    assert kind == "labels" and kwargs["name"].endswith("cells") and data.shape == (6, 256, 256)
    tiers = kwargs["metadata"]["per_image"]["tier"]
    assert sorted(set(tiers)) == ["high", "low", "medium"]
    assert [int(data[i].max()) for i in range(6)] == [6, 6, 18, 18, 36, 36]


def test_draw_samples_at_psi_and_at_a_tier(models, monkeypatch):
    monkeypatch.setenv("CELLGEN_GENERATOR", str(models["gen"]))
    monkeypatch.setenv("CELLGEN_RENDERER", str(models["rend"]))
    layers = napari_plugin.draw_samples(psi=(0.0, 1.0), n=2, first_seed=3)
    meta = layers[0][1]["metadata"]["per_image"]
    assert list(zip(meta["seed"], meta["psi"])) == [(3, 0.0), (3, 1.0), (4, 0.0), (4, 1.0)]
    cells = next(layer for layer in layers if layer[2] == "labels")[0]
    assert cells.shape[0] == 4 and (cells[0] == cells[2]).all()  # psi 0: every seed gives the mean layout
    tier = meta["tier"][1]
    targeted = napari_plugin.draw_samples(tier=tier, n=2)
    assert targeted[0][1]["metadata"]["per_image"]["tier"] == [tier, tier]
    with pytest.raises(Exception, match="unknown density tier"):
        napari_plugin.draw_samples(tier="crowded", n=1)


def test_widget_draws_layers_into_a_viewer(models, monkeypatch):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    napari = pytest.importorskip("napari")
    pytest.importorskip("qtpy")
    monkeypatch.setenv("CELLGEN_GENERATOR", str(models["gen"]))
    monkeypatch.setenv("CELLGEN_RENDERER", str(models["rend"]))
    viewer = napari.Viewer(show=False)
    try:
        _, widget = viewer.window.add_plugin_dock_widget("cellgen", "Draw samples")
        widget.psi.value, widget.n.value = 0.5, 2
        widget()
        names = [layer.name for layer in viewer.layers]
        assert "psi 0.5 nucleus" in names and "psi 0.5 cells" in names
        cells = viewer.layers["psi 0.5 cells"]
        assert cells.data.shape[0] == 2 and cells.metadata["per_image"]["psi"] == [0.5, 0.5]
    finally:
        viewer.close()
