"""Memory and disk a run will need, estimated before any work starts.

A run that cannot fit is refused with one line that gives the estimate, instead of failing an
hour later (or filling the disk, or being killed by the kernel). The estimates are deliberately
simple upper-side figures measured on this code (see the constants); they only have to tell a
run that fits from one that is orders of magnitude too big.

Public API: :func:`set_bytes`, :func:`check_disk`, :func:`check_memory`, :func:`available_memory`,
:func:`human`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cellgen.errors import CellgenError

#: stored/raw size of gzip-4+shuffle chunks, upper side of what sets show: images 0.2-0.9
#: (noise-free simulated images compress best), masks 0.005-0.1
IMAGE_RATIO, MASK_RATIO = 0.9, 0.1
#: peak resident bytes per pixel of one simulated image (float fields, distance maps,
#: layout arrays); measured ~170 at 1024 px
SIMULATE_BYTES_PER_PIXEL = 200
#: peak bytes per pixel per image of a batch through the generator + renderer: ``cellgen sample``
#: with the shipped models at 256 px, batch 8, peaked at 3.8 GB resident; with BASE_BYTES this
#: estimates 4.2 GB for it
MODEL_BYTES_PER_PIXEL = 6144
#: what the interpreter, torch and the models take before any image
BASE_BYTES = 1 << 30


def human(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def set_bytes(n: int, size: tuple[int, int], n_noisy: int, with_images: bool = True) -> int:
    """Estimated bytes on disk of a finished set of ``n`` images."""
    h, w = size
    image = 2 * h * w * 2 * ((1 if with_images else 0) + n_noisy) * IMAGE_RATIO
    masks = h * w * (1 + 4 + 4) * MASK_RATIO
    return int(n * (image + masks)) + (1 << 20)


def check_disk(path, n: int, size: tuple[int, int], n_noisy: int, with_images: bool = True):
    """Refuse a set that cannot fit: while it is written its committed parts and the merged
    file coexist for a moment, so it needs about twice its final size."""
    final = set_bytes(n, size, n_noisy, with_images)
    need = 2 * final
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise CellgenError(
            f"{n} images of {size[0]}x{size[1]} need about {human(need)} of disk while written "
            f"(about {human(final)} when done); {folder} has {human(free)} free. "
            "Write fewer or smaller images, or write elsewhere with -o"
        )


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, or a cgroup limit when lower."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: do not refuse
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            avail = min(avail, int(text))
    return avail


def check_memory(need: int, what: str, hint: str):
    avail = available_memory()
    if need > avail:
        raise CellgenError(f"{what} needs about {human(need)} of memory, {human(avail)} is available; {hint}")


def check_simulation_memory(size: int):
    check_memory(int(size) ** 2 * SIMULATE_BYTES_PER_PIXEL, f"simulating one {size}x{size} image",
                 "use a smaller --size")


def check_model_memory(size: int, batch_size: int):
    need = BASE_BYTES + int(batch_size) * int(size) ** 2 * MODEL_BYTES_PER_PIXEL
    check_memory(need, f"a batch of {batch_size} images of {size}x{size}", "use a smaller --batch-size or --size")
