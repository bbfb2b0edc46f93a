"""cellgen export --format ome-zarr / ome-tiff, read back with ome-zarr-py's and tifffile's own readers."""

import json

import h5py
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cellgen.cli import cli
from cellgen.datasets.export import export_set, read_label_file
from cellgen.datasets.h5 import BenchmarkSet
from cellgen.errors import CellgenError
from cellgen.pipeline import simulate_set
from cellgen.simulate import SimulationConfig


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """Three 64 px images with a Poisson variant: every file the exports write, quickly."""
    path = tmp_path_factory.mktemp("ome") / "tiny.h5"
    simulate_set(path, SimulationConfig(size=64, count=(1, 4), cell_radius_um=5), 3, seed=5, variants=["poisson"],
                 progress=False)
    return path


def export(*args):
    result = CliRunner().invoke(cli, ["export", *args, "-q"])
    assert result.exit_code == 0, result.output
    return result


def test_ome_zarr_layout_pixel_size_and_labels(tiny_set, tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    out = tmp_path / "zarr"
    export(str(tiny_set), str(out), "--format", "ome-zarr")
    with BenchmarkSet(tiny_set) as ds:
        px, n, meta = ds.pixel_size_um, ds.n, ds.metadata
        assert px == 0.5
        for i in (0, n - 1):
            nodes = list(Reader(parse_url(str(out / "images" / f"{i:05d}.ome.zarr")))())
            image = next(nd for nd in nodes if any(isinstance(s, Multiscales) for s in nd.specs)
                         and not any(isinstance(s, Label) for s in nd.specs))
            assert np.array_equal(np.asarray(image.data[0]), ds.images(i))
            assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
            assert image.metadata["axes"][1]["unit"] == "micrometer"
            scale = image.metadata["coordinateTransformations"][0][0]
            assert scale == {"type": "scale", "scale": [1.0, px, px]}
            assert image.metadata["channel_names"] == ["nucleus", "cytoplasm"]
            labels = {nd.metadata["name"]: np.asarray(nd.data[0]) for nd in nodes
                      if any(isinstance(s, Label) for s in nd.specs)}
            masks = ds.masks(i)
            assert set(labels) == {"cells", "nuclei"}
            assert np.array_equal(labels["cells"], masks.cell) and np.array_equal(labels["nuclei"], masks.nucleus)
            attrs = json.loads((out / "images" / f"{i:05d}.ome.zarr" / ".zattrs").read_text())
            assert attrs["cellgen"]["seed"] == int(meta["seed"][i]) and attrs["cellgen"]["tier"] == meta["tier"][i]
            assert attrs["multiscales"][0]["version"] == "0.4"
            noisy = list(Reader(parse_url(str(out / "noisy" / "poisson" / f"{i:05d}.ome.zarr")))())
            assert np.array_equal(np.asarray(noisy[0].data[0]), ds.images(i, "poisson"))
        assert len((out / "metadata.csv").read_text().splitlines()) == n + 1
    assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]  # no staging folders left


def test_ome_zarr_export_resumes_and_redoes_what_differs(tiny_set, tmp_path, monkeypatch):
    pytest.importorskip("ome_zarr")
    from cellgen.datasets import ome

    out = tmp_path / "z"
    export_set(tiny_set, out, "ome-zarr", variants=["clean"], progress=False)
    stale = out / "images" / "00001.ome.zarr" / ".zattrs"
    attrs = json.loads(stale.read_text())
    attrs["cellgen"]["seed"] = -1  # as if written from another set
    stale.write_text(json.dumps(attrs))
    (out / "images" / "00002.ome.zarr").rename(out / "images" / "gone")  # as if killed before image 2
    written, real = [], ome.write_ome_zarr_image

    def counted(path, *args, **kwargs):
        written.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ome, "write_ome_zarr_image", counted)
    export_set(tiny_set, out, "ome-zarr", variants=["clean"], progress=False)
    assert written == ["00001.ome.zarr", "00002.ome.zarr"]
    assert json.loads(stale.read_text())["cellgen"]["seed"] != -1


def test_ome_zarr_of_nucleus_only_set_has_no_cell_labels(tiny_set, tmp_path):
    pytest.importorskip("ome_zarr")
    nuclei_only = tmp_path / "n.h5"
    nuclei_only.write_bytes(tiny_set.read_bytes())
    with h5py.File(nuclei_only, "r+") as f:
        f.attrs["compartments"] = json.dumps(["nucleus"])
    export(str(nuclei_only), str(tmp_path / "z"), "--format", "ome-zarr", "--variants", "clean")
    labels = json.loads((tmp_path / "z" / "images" / "00000.ome.zarr" / "labels" / ".zattrs").read_text())
    assert labels["labels"] == ["nuclei"]


def test_ome_tiff_pixel_size_channels_and_masks(tiny_set, tmp_path):
    out = tmp_path / "tif"
    export(str(tiny_set), str(out), "--format", "ome-tiff", "--variants", "clean")
    with BenchmarkSet(tiny_set) as ds:
        px = ds.pixel_size_um
        for i in (0, ds.n - 1):
            with tifffile.TiffFile(out / "images" / f"{i:05d}.ome.tif") as tif:
                assert tif.is_ome and tif.series[0].axes == "CYX"
                assert np.array_equal(tif.asarray(), ds.images(i))
                pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
            assert pixels["PhysicalSizeX"] == pixels["PhysicalSizeY"] == px
            assert pixels["PhysicalSizeXUnit"] == "µm"
            assert [c["Name"] for c in pixels["Channel"]] == ["nucleus", "cytoplasm"]
            masks = ds.masks(i)
            for kind in ("cell", "nucleus", "semantic"):
                path = out / "masks" / kind / f"{i:05d}.ome.tif"
                with tifffile.TiffFile(path) as tif:
                    assert tif.is_ome
                    assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["PhysicalSizeX"] == px
                assert np.array_equal(read_label_file(path), getattr(masks, kind))


def test_ome_zarr_without_the_package_is_one_line(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ome_zarr", None)  # as if ome-zarr were not installed
    with pytest.raises(CellgenError, match=r"pip install 'cellgen\[ome-zarr\]'"):
        export_set(tiny_set, tmp_path / "z", "ome-zarr", progress=False)
    assert not list((tmp_path).glob("z/images/*"))
