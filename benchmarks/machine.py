"""What a benchmark ran on: recorded with every result, since numbers mean nothing without it."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict:
    """CPU model, cores, load, library versions and the torch threads the benchmark used."""
    import h5py
    import numpy
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        # the CPU is shared: other jobs' load at the start says how much of it we had
        "load_average_1_5_15min": [round(x, 2) for x in load],
        "note": ("2 cores shared with 2 long single-threaded training jobs running throughout; "
                 "timings are what a benchmark gets on a busy machine"),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def write_results(name: str, what: str, command: str, info: dict, rows: list, **extra) -> "Path":
    """``benchmarks/results/NAME.json``: what was measured, how to rerun it, the machine, the rows."""
    import json
    from pathlib import Path

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    info["load_average_after"] = machine_info()["load_average_1_5_15min"]
    path = out / f"{name}.json"
    path.write_text(json.dumps({"what": what, "command": command, "machine": info, **extra, "results": rows}, indent=2))
    return path
