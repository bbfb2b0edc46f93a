"""Regenerate the README's pictures from the shipped models, with the commands a user runs.

    OMP_NUM_THREADS=1 python docs/figures/make_figures.py

writes, in this folder (a few minutes on two CPU cores):

- ``preview.png``         ``cellgen preview`` of the README's first set (psi -1..1, seeds 0-19)
- ``bench_summary.png``   ``cellgen bench --method watershed`` on that set: scores per tier and variant
- ``density_vs_psi.png``  ``cellgen gen psi-sweep``: cell count against psi, one line per seed
- ``bench_crowding.png``  ``cellgen bench compare`` of watershed and CellProfiler on that set:
  recall per crowding stratum (touching neighbours, nearest-neighbour distance)

The working files (the set, the bench results, the sweep) go to a temporary folder; pass
``--keep DIR`` to keep them. Every picture is replaced only after all three were made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cellgen(*args: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "cellgen", *args]
    print("+ cellgen", " ".join(args), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(command, cwd=cwd, check=True, env=env)


def _palette_png(src: Path, dst: Path) -> None:
    """The preview in 256 colours: less than half the bytes in the repository, no visible change."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            dst, optimize=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Keep the set, bench results and sweep in this folder.")
    parser.add_argument("-o", "--output", type=Path, default=HERE, help="Folder for the PNGs [default: docs/figures].")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="cellgen-figures-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cellgen("sample", "--psi", "-1,-0.5,0,0.5,1", "--seeds", "0-19", "-o", "demo.h5", "--overwrite", "-q", cwd=work)
        cellgen("preview", "demo.h5", "-o", "preview.png", cwd=work)
        cellgen("bench", "--method", "watershed", "--data", "demo.h5", "-o", "bench", "--n-boot", "200", "-q", cwd=work)
        cellgen("bench", "--method", "cellprofiler", "--data", "demo.h5", "-o", "bench-cp", "--variant", "clean",
                "--n-boot", "200", "-q", cwd=work)
        cellgen("bench", "compare", "bench", "bench-cp", "-o", "compare.png", cwd=work)
        cellgen("gen", "psi-sweep", "--seeds", "0-29", "-o", "sweep", cwd=work)
        made = {"preview.png": work / "preview.png", "bench_summary.png": work / "bench" / "summary.png",
                "density_vs_psi.png": work / "sweep" / "psi_sweep.png",
                "bench_crowding.png": work / "compare-crowding.png"}
        args.output.mkdir(parents=True, exist_ok=True)
        for name, path in made.items():
            if name == "preview.png":
                _palette_png(path, args.output / name)
            else:
                shutil.copyfile(path, args.output / name)
            print(f"wrote {args.output / name}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
