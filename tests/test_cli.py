import hashlib
import sys

import numpy as np
import pytest
from PIL import Image

from cellgen.datasets.export import read_label_file
from cellgen.datasets.h5 import BenchmarkSet
from tests.cli_runner import run_cli as run


def assert_one_line_error(result, text):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert text in lines[0], lines[0]


def test_simulate_verify_exact_counts_and_identical_rerun(tmp_path):
    args = ["simulate", "--n", "6", "--count", "12", "--size", "256", "--seed", "1", "-q"]
    first = run(*args, "-o", "a.h5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    verified = run("datasets", "verify", "a.h5", cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("OK a.h5: 6 images 256x256")
    with BenchmarkSet(tmp_path / "a.h5") as ds:
        for i in range(6):
            m = ds.masks(i)
            assert len(np.unique(m.cell)) - 1 == 12
            assert len(np.unique(m.nucleus)) - 1 == 12
    second = run(*args, "-o", "b.h5", cwd=tmp_path)
    assert second.returncode == 0
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("a.h5", "b.h5")]
    assert digest[0] == digest[1]


def test_errors_are_one_line_and_non_zero(tmp_path, small_set):
    (tmp_path / "corrupt.h5").write_bytes(small_set.read_bytes()[:3000])
    assert_one_line_error(run("datasets", "verify", str(tmp_path / "corrupt.h5")), "not a readable HDF5 file")
    assert_one_line_error(run("datasets", "verify", str(tmp_path / "missing.h5")), "no such file")
    import h5py

    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(small_set.read_bytes())
    with h5py.File(wrong, "r+") as f:
        del f["images"]
        f["images"] = np.zeros((9, 3, 128, 128), np.uint16)
    assert_one_line_error(run("datasets", "verify", str(wrong)), "'images' has shape (9, 3, 128, 128)")
    assert_one_line_error(run("simulate", "--n", "1", "--count", "x", "-o", str(tmp_path / "x.h5")), "LOW:HIGH")
    assert_one_line_error(run("simulate", "--n", "1", "--variants", "clean,loud", "-o", str(tmp_path / "x.h5")),
                          "unknown noise preset 'loud'")
    assert_one_line_error(run("preview", str(small_set), "-o", str(tmp_path / "p.png"), "--variant", "severe"),
                          "no image variant 'severe'")


def test_help_lists_only_working_commands():
    out = run("--help").stdout
    listed = [ln.split()[0] for ln in out.split("Commands:")[1].splitlines() if ln.strip()]
    for name in listed:
        assert run(name, "--help").returncode == 0


def test_info_preview_and_export(tmp_path, small_set):
    info = run("datasets", "info", str(small_set))
    assert info.returncode == 0 and "variant poisson: SNR" in info.stdout
    png = tmp_path / "grid.png"
    assert run("preview", str(small_set), "-o", str(png), "--per-tier", "2").returncode == 0
    assert Image.open(png).size[0] > 300
    for fmt, ext in (("tiff", "tif"), ("png", "png")):
        out = tmp_path / fmt
        r = run("export", str(small_set), str(out), "--format", fmt, "-q")
        assert r.returncode == 0, r.stderr
        with BenchmarkSet(small_set) as ds:
            for i in (0, 8):
                m = ds.masks(i)
                assert np.array_equal(read_label_file(out / "masks" / "cell" / f"{i:05d}.{ext}"), m.cell)
                assert np.array_equal(read_label_file(out / "masks" / "nucleus" / f"{i:05d}.{ext}"), m.nucleus)
                assert np.array_equal(read_label_file(out / "masks" / "semantic" / f"{i:05d}.png"), m.semantic)
        assert (out / "noisy" / "poisson" / f"00003.{ext}").exists()
        assert len((out / "metadata.csv").read_text().splitlines()) == 10


def test_info_and_summary_count_images_without_cells(tmp_path):
    # count (0, 2) draws some maps with no cell: both the write summary and info must say how many
    r = run("simulate", "--n", "6", "--count", "0:2", "--size", "64", "--seed", "0", "--variants", "clean",
            "-o", "e.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with BenchmarkSet(tmp_path / "e.h5") as ds:
        empty = sum(ds.masks(i).cell.max() == 0 for i in range(len(ds)))
    assert 0 < empty < 6
    line = f"{empty} image{'s' if empty != 1 else ''} without any cell"
    assert line in r.stdout
    assert line in run("datasets", "info", str(tmp_path / "e.h5")).stdout


def test_export_png_channels_and_tiff_image(tmp_path, small_set):
    import cv2
    import tifffile

    run("export", str(small_set), str(tmp_path / "t"), "--format", "tiff", "-q")
    run("export", str(small_set), str(tmp_path / "p"), "--format", "png", "--variants", "clean", "-q")
    with BenchmarkSet(small_set) as ds:
        img = ds.images(2)
    assert np.array_equal(tifffile.imread(tmp_path / "t" / "images" / "00002.tif"), img)
    bgr = cv2.imread(str(tmp_path / "p" / "images" / "00002.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(bgr[..., 0], img[0]) and np.array_equal(bgr[..., 1], img[1])
    assert not (tmp_path / "p" / "noisy").exists()


@pytest.mark.parametrize("bad", ["hello", ""])
def test_read_label_file_rejects_bad_files(tmp_path, bad):
    from cellgen.errors import CellgenError

    p = tmp_path / "x.png"
    p.write_text(bad)
    with pytest.raises(CellgenError, match="not a readable label image"):
        read_label_file(p)


def test_recorded_command_comes_from_the_given_argv_not_sys_argv(tmp_path, monkeypatch):
    """main(argv) and click's test runner record the arguments they were given, so the
    recorded command (and with it the file's bytes) never depends on the calling process."""
    from click.testing import CliRunner

    from cellgen.cli import cli, main

    monkeypatch.setattr(sys, "argv", ["pytest", "--count", "99", "--bogus"])
    args = ["simulate", "--n", "1", "--size", "64", "--count", "3", "--seed", "4", "-q"]
    main([*args, "-o", str(tmp_path / "a.h5")])
    result = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "b.h5"), "--overwrite"])
    assert result.exit_code == 0, result.output
    commands = []
    for name in ("a.h5", "b.h5"):
        with BenchmarkSet(tmp_path / name) as ds:
            commands.append(ds.attrs["command"])
    assert commands == ["cellgen simulate --n 1 --size 64 --count 3 --seed 4"] * 2
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("a.h5", "b.h5")]
    assert digest[0] == digest[1]


def test_data_commands_do_not_import_torch(small_set):
    """Reading sets needs no torch: its import alone takes seconds (a fresh interpreter is the subject)."""
    import subprocess

    code = ("import sys\nfrom cellgen.cli import main\n"
            "for args in (['datasets', 'list'], ['datasets', 'info', sys.argv[1]], ['datasets', 'verify', sys.argv[1]]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, str(small_set)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False", r.stdout
