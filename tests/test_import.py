"""`cellgen datasets import`: the user's annotated images in, exactly; bad input named per file."""

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cellgen.cli import cli
from cellgen.datasets.export import export_set
from cellgen.datasets.h5 import BenchmarkSet, verify
from cellgen.datasets.importing import combine_masks
from cellgen.datasets.real import load_dsb2018
from cellgen.errors import CellgenError


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_per_problem(result, expected: list[str]):
    assert result.exit_code == 1, result.output
    lines = str(result.exception).splitlines()
    assert lines[0].startswith(f"{len(expected)} problem(s), nothing written")
    for text, line in zip(expected, sorted(lines[1:])):
        assert text in line, (text, line)
    assert len(lines) == len(expected) + 1


def test_dsb_cellpose_folder_nucleus_only(tmp_path):
    raw, nuclei = load_dsb2018()
    src = tmp_path / "dapi"
    src.mkdir()
    tifffile.imwrite(src / "dsb.tif", raw)
    tifffile.imwrite(src / "dsb_masks.tif", nuclei.astype(np.uint16))
    result = invoke("datasets", "import", src, "-o", tmp_path / "dsb.h5", "--channels", "nucleus=0",
                    "--pixel-size", "0.5", "-q")
    assert result.exit_code == 0, result.output
    summary = verify(tmp_path / "dsb.h5")
    assert summary["n_images"] == 1
    with BenchmarkSet(tmp_path / "dsb.h5") as ds:
        assert json.loads(ds.attrs["compartments"]) == ["nucleus"]
        assert np.array_equal(ds.images(0)[0], raw)  # 16-bit values stored exactly
        assert not ds.images(0)[1].any()
        assert ds.masks(0).nucleus.max() == 125
        assert np.array_equal(ds.masks(0).nucleus > 0, nuclei > 0)
        scaling = json.loads(ds.attrs["intensity_scaling"])
        assert scaling["mode"] == "dtype" and scaling["per_image"][0]["nucleus"] == [0.0, 65535.0]
        assert ds.metadata["count"][0] == 125 and ds.metadata["tier"][0] in ("low", "medium", "high")


def _same_set(a, b, exact_images=True):
    with BenchmarkSet(a) as x, BenchmarkSet(b) as y:
        assert len(x) == len(y)
        for i in range(len(x)):
            mx, my = x.masks(i), y.masks(i)
            assert np.array_equal(mx.cell, my.cell) and np.array_equal(mx.nucleus, my.nucleus)
            assert np.array_equal(mx.semantic, my.semantic)
            if exact_images:
                assert np.array_equal(x.images(i), y.images(i))
        for col in ("count", "tier", "cells_per_mm2"):
            assert list(x.metadata[col]) == list(y.metadata[col])
        assert x.attrs["tier_scheme"] == y.attrs["tier_scheme"]


def test_export_layout_and_label_folders_import_back_exactly(tmp_path, small_set):
    out = tmp_path / "export"
    export_set(small_set, out, "tiff", variants=["clean"], progress=False)
    with BenchmarkSet(small_set) as ds:
        pixel = ds.attrs["pixel_size_um"]
    result = invoke("datasets", "import", out, "-o", tmp_path / "a.h5", "--pixel-size", pixel, "-q")
    assert result.exit_code == 0, result.output
    _same_set(small_set, tmp_path / "a.h5")
    with BenchmarkSet(tmp_path / "a.h5") as ds:
        assert json.loads(ds.attrs["compartments"]) == ["cell", "nucleus"]
    # the same files as separate image / label folders, named NAME_masks
    for kind in ("cell", "nucleus"):
        folder = tmp_path / f"{kind}-labels"
        folder.mkdir()
        for f in sorted((out / "masks" / kind).iterdir()):
            f.rename(folder / f"{f.stem}_masks.tif")
    result = invoke("datasets", "import", out / "images", "-o", tmp_path / "b.h5", "--cells", tmp_path / "cell-labels",
                    "--nuclei", tmp_path / "nucleus-labels", "--pixel-size", pixel, "-q")
    assert result.exit_code == 0, result.output
    _same_set(small_set, tmp_path / "b.h5")


def test_ome_tiff_stacks_take_the_pixel_size_from_metadata(tmp_path, small_set):
    with BenchmarkSet(small_set) as ds:
        images = np.stack([ds.images(i) for i in range(len(ds))])
        cells = np.stack([ds.masks(i).cell for i in range(len(ds))])
        nuclei = np.stack([ds.masks(i).nucleus for i in range(len(ds))])
        pixel = ds.attrs["pixel_size_um"]
    tifffile.imwrite(tmp_path / "stack.ome.tif", images, ome=True,
                     metadata={"axes": "QCYX", "PhysicalSizeX": pixel, "PhysicalSizeY": pixel})
    tifffile.imwrite(tmp_path / "cells.tif", cells)
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei)
    result = invoke("datasets", "import", tmp_path / "stack.ome.tif", "-o", tmp_path / "s.h5",
                    "--cells", tmp_path / "cells.tif", "--nuclei", tmp_path / "nuclei.tif", "-q")
    assert result.exit_code == 0, result.output
    _same_set(small_set, tmp_path / "s.h5")
    # without metadata and without --pixel-size: refused, nothing written
    tifffile.imwrite(tmp_path / "plain.tif", images)
    result = invoke("datasets", "import", tmp_path / "plain.tif", "-o", tmp_path / "p.h5",
                    "--cells", tmp_path / "cells.tif", "--nuclei", tmp_path / "nuclei.tif", "-q")
    assert result.exit_code == 1 and "pass --pixel-size" in str(result.exception)
    assert not (tmp_path / "p.h5").exists()


def test_every_bad_file_gets_its_own_line_and_nothing_is_written(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    image = np.zeros((32, 32), np.uint16)
    good = np.zeros((32, 32), np.uint16)
    good[4:10, 4:10] = 1
    tifffile.imwrite(src / "ok.tif", image)
    tifffile.imwrite(src / "ok_masks.tif", good)
    tifffile.imwrite(src / "alone.tif", image)  # no labels
    tifffile.imwrite(src / "ghost_masks.tif", good)  # no image
    tifffile.imwrite(src / "shape.tif", image)
    tifffile.imwrite(src / "shape_masks.tif", np.ones((16, 16), np.uint16))
    tifffile.imwrite(src / "frac.tif", image)
    tifffile.imwrite(src / "frac_masks.tif", good.astype(np.float32) * 1.5)
    tifffile.imwrite(src / "neg.tif", image)
    tifffile.imwrite(src / "neg_masks.tif", -good.astype(np.int16))
    tifffile.imwrite(src / "empty.tif", image)
    tifffile.imwrite(src / "empty_masks.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(src / "corrupt.tif", image)
    (src / "corrupt_masks.tif").write_bytes(b"II*\x00 definitely not a tiff")
    result = invoke("datasets", "import", src, "-o", tmp_path / "out.h5", "--pixel-size", "1", "-q")
    one_line_per_problem(result, ["alone.tif: no alone_masks.tif", "corrupt_masks.tif: not a readable label file",
                                  "empty_masks.tif: the mask is empty", "frac_masks.tif: labels must be whole numbers",
                                  "ghost_masks.tif: a label file with no image", "neg_masks.tif: negative label ids",
                                  "shape_masks.tif: labels are 16x16, the image 32x32"])
    assert not (tmp_path / "out.h5").exists() and not list(tmp_path.glob("out.h5*"))


def test_nuclei_are_assigned_to_cells_by_overlap_and_ambiguity_is_refused():
    cells = np.zeros((20, 40), np.int32)
    cells[:, :20], cells[:, 20:] = 7, 3
    nuclei = np.zeros_like(cells)
    nuclei[5:10, 2:8] = 1     # inside cell 7
    nuclei[5:10, 24:30] = 2   # inside cell 3
    nuclei[12:15, 19:21] = 9  # a brush slip: 3 of 6 pixels in the other cell -> spans two cells
    with pytest.raises(CellgenError, match="1 nuclei span two cells"):
        combine_masks(cells, nuclei)
    nuclei[12:15, 19:21] = 0
    nuclei[12:15, 17:20] = 1  # a second piece of cell 7's nucleus
    masks, _ = combine_masks(cells, nuclei)
    assert masks.cell.max() == 2 and set(np.unique(masks.nucleus)) == {0, 1, 2}
    for cid in (1, 2):  # each nucleus carries its cell's id and lies inside it
        assert np.all(masks.cell[masks.nucleus == cid] == cid)
    assert np.array_equal(masks.nucleus == 1, (nuclei == 1))
    nuclei[nuclei == 2] = 0
    with pytest.raises(CellgenError, match="1 cells have no nucleus"):
        combine_masks(cells, nuclei)
    masks, notes = combine_masks(cells, nuclei, drop_cells_without_nucleus=True)
    assert masks.cell.max() == 1 and notes == {"cells_dropped_without_nucleus": 1}


def test_seg_npy_with_code_is_refused(tmp_path):
    from cellgen.datasets.importing import read_labels

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    np.save(tmp_path / "x_seg.npy", np.array({"masks": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(CellgenError, match="not a readable label file"):
        read_labels(tmp_path / "x_seg.npy")
    masks = np.zeros((8, 8), np.uint16)
    masks[2:5, 2:5] = 4
    np.save(tmp_path / "y_seg.npy", np.array({"masks": masks, "outlines": masks * 0}, dtype=object),
            allow_pickle=True)
    assert np.array_equal(read_labels(tmp_path / "y_seg.npy"), masks)


def test_nucleus_only_sets_export_and_preview_their_nuclei_alone(tmp_path):
    raw, nuclei = load_dsb2018()
    src = tmp_path / "dapi"
    src.mkdir()
    tifffile.imwrite(src / "dsb.tif", raw[:128, :128])
    tifffile.imwrite(src / "dsb_masks.tif", nuclei[:128, :128].astype(np.uint16))
    assert invoke("datasets", "import", src, "-o", tmp_path / "n.h5", "--channels", "nucleus=0",
                  "--pixel-size", "0.5", "-q").exit_code == 0
    export_set(tmp_path / "n.h5", tmp_path / "out", "tiff", progress=False)
    assert (tmp_path / "out" / "masks" / "nucleus" / "00000.tif").exists()
    assert not (tmp_path / "out" / "masks" / "cell").exists()
    # and back: the export of a nucleus-only set imports as a nucleus-only set
    result = invoke("datasets", "import", tmp_path / "out", "-o", tmp_path / "back.h5", "--pixel-size", "0.5",
                    "--channels", "nucleus=0", "-q")
    assert result.exit_code == 0, result.output
    with BenchmarkSet(tmp_path / "back.h5") as ds:
        assert ds.compartments == ["nucleus"]
    result = invoke("preview", tmp_path / "n.h5", "-o", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).reshape(-1, 3)
    from cellgen.preview import CELL_OUTLINE, NUCLEUS_OUTLINE

    near = lambda colour: (np.abs(pixels / 255.0 - np.asarray(colour)) < 0.04).all(1).sum()  # noqa: E731
    assert near(NUCLEUS_OUTLINE) > 100 and near(CELL_OUTLINE) == 0


@pytest.mark.parametrize("mode", ["max", "percentile"])
def test_intensity_scalings_are_applied_and_recorded(tmp_path, mode):
    raw, nuclei = load_dsb2018()
    src = tmp_path / "dapi"
    src.mkdir()
    for i in range(2):  # the second image is half as bright: 'max' scales both by the set's maximum
        tifffile.imwrite(src / f"d{i}.tif", (raw[:128, :128] // (i + 1)).astype(np.uint16))
        tifffile.imwrite(src / f"d{i}_masks.tif", nuclei[:128, :128].astype(np.uint16))
    out = tmp_path / f"{mode}.h5"
    result = invoke("datasets", "import", src, "-o", out, "--channels", "nucleus=0", "--pixel-size", "0.5",
                    "--intensity", mode, "-q")
    assert result.exit_code == 0, result.output
    with BenchmarkSet(out) as ds:
        scaling = json.loads(ds.attrs["intensity_scaling"])
        first, second = ds.images(0)[0].astype(float), ds.images(1)[0].astype(float)
    assert scaling["mode"] == mode
    top = float(raw[:128, :128].max())
    if mode == "max":
        assert scaling["per_image"][0]["nucleus"] == scaling["per_image"][1]["nucleus"] == [0.0, top]
        assert np.allclose(first, np.round(raw[:128, :128] / top * 65535))
        assert second.max() < 0.6 * first.max()
    else:
        lo, hi = scaling["per_image"][0]["nucleus"]
        assert 0 <= lo < hi <= top and first.max() == 65535 and second.max() == 65535
