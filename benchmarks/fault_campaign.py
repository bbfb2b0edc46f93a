"""Fault campaign: does cellgen keep its promises when things go wrong?

Four kinds of trials, each run against the ``cellgen`` command line in subprocesses, as a
user would meet them:

* **kills** -- ``simulate`` and ``sample`` are SIGKILLed at a random moment, then the same
  command is run again. Passed: the rerun exits 0 (or the killed run had already finished)
  and the file has the sha256 of an uninterrupted run.
* **full disk** -- a small tmpfs (needs root; skipped otherwise). Passed: the run that does
  not fit stops with one ``error:`` line and a non-zero exit (not a crash), and after space
  is freed the same command finishes with the bytes of an uninterrupted run.
* **bad options** -- NaN/inf/negative/huge values and other bad input. Passed: one error line,
  exit 1 or 2, within the time limit, and no output file.
* **tampered sets** -- a good set edited in one way each. Passed: both ``datasets verify``
  and ``bench --method watershed`` refuse it with one line and exit 1 (bench writes no scores).

Figures (tried / passed per kind, and every failure) go to ``results/fault_campaign.json``.

    OMP_NUM_THREADS=1 python benchmarks/fault_campaign.py --kills 100
    # the same campaign against another checkout (e.g. an older commit's cellgen/):
    python benchmarks/fault_campaign.py --code /tmp/old --results /tmp/old-campaign.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SIMULATE = ["simulate", "--n", "24", "--size", "96", "--count", "3", "--seed", "5", "-q"]
SAMPLE = ["sample", "--seeds", "0-11", "--size", "64", "--batch-size", "4", "-q"]


class Campaign:
    def __init__(self, work: Path, code: str | None, timeout: float):
        self.work = work
        self.env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                        CELLGEN_DATA=str(work / "cache"))
        if code:
            self.env["PYTHONPATH"] = code
        self.timeout = timeout
        self.results: dict[str, dict] = {}
        self.on_record = None

    def cellgen(self, args, timeout=None, env=None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cellgen", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout,
                                  env=env or self.env, cwd=self.work)
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(cmd, -999, err.stdout or "", "(timed out)")

    def record(self, kind: str, name: str, ok: bool, detail: str = ""):
        entry = self.results.setdefault(kind, {"tried": 0, "passed": 0, "failures": []})
        entry["tried"] += 1
        entry["passed"] += int(ok)
        if not ok:
            entry["failures"].append({"case": name, "detail": detail[-400:]})
        print(f"[{kind}] {'PASS' if ok else 'FAIL'} {name} {'' if ok else detail[-200:]}", flush=True)
        if self.on_record:
            self.on_record()  # figures so far are on disk even if the campaign is stopped


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def one_line_error(proc) -> bool:
    """A refusal as promised: non-zero exit below 128 (no crash/signal), one non-empty stderr line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return 0 < proc.returncode < 128 and len(lines) == 1 and "Traceback" not in proc.stderr


def clean(path: Path):
    for p in path.parent.glob(path.name + "*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


# -- kills ------------------------------------------------------------------------------------
def kills(c: Campaign, n_kills: int, rng: random.Random):
    refs = {}
    for name, args in (("simulate", SIMULATE), ("sample", SAMPLE)):
        out = c.work / f"ref-{name}.h5"
        clean(out)
        t0 = time.perf_counter()
        proc = c.cellgen([*args, "-o", str(out)])
        if proc.returncode != 0:
            raise SystemExit(f"reference {name} run failed: {proc.stderr}")
        refs[name] = (sha256(out), time.perf_counter() - t0)
    for k in range(n_kills):
        name = ("simulate", "sample")[k % 2]
        args = SIMULATE if name == "simulate" else SAMPLE
        digest, duration = refs[name]
        out = c.work / f"kill-{name}.h5"
        clean(out)
        # sometimes kill twice in a row: a resumed run must survive being killed too
        delays = [rng.uniform(0.3, duration)] + ([rng.uniform(0.3, duration)] if rng.random() < 0.3 else [])
        for delay in delays:
            proc = subprocess.Popen([sys.executable, "-m", "cellgen", *args, "-o", str(out)], env=c.env, cwd=c.work,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        rerun = c.cellgen([*args, "-o", str(out)])
        finished_before = rerun.returncode != 0 and "already exists" in rerun.stderr and out.exists()
        ok = (rerun.returncode == 0 or finished_before) and out.exists() and sha256(out) == digest
        leftovers = [p.name for p in out.parent.glob(out.name + ".*")]
        ok = ok and not leftovers
        c.record("kills", f"{name} killed at {', '.join(f'{d:.2f}' for d in delays)} s", ok,
                 f"rerun rc={rerun.returncode} {rerun.stderr.strip()} leftovers={leftovers}")


# -- full disk --------------------------------------------------------------------------------
def full_disk(c: Campaign):
    mnt = c.work / "small"
    mnt.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        c.results["full_disk"] = {"tried": 0, "passed": 0, "failures": [], "skipped": "cannot mount a tmpfs (needs root)"}
        print("[full_disk] skipped: cannot mount a tmpfs", flush=True)
        return
    try:
        for name, args in (("simulate", [*SIMULATE[:2], "60", *SIMULATE[3:]]), ("sample", SAMPLE)):
            ref = c.work / f"ref-disk-{name}.h5"
            clean(ref)
            if c.cellgen([*args, "-o", str(ref)]).returncode != 0:
                c.record("full_disk", f"{name} reference", False, "reference run failed")
                continue
            size = ref.stat().st_size
            for how in ("too small from the start", "filled while running"):
                out = mnt / f"{name}.h5"
                subprocess.run(["mount", "-o", "remount,size=3m", str(mnt)], check=True)
                for p in mnt.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                if how == "too small from the start":
                    subprocess.run(["mount", "-o", f"remount,size={max(1, size // 3 // 1024)}k", str(mnt)], check=True)
                    proc = c.cellgen([*args, "-o", str(out)])
                else:
                    subprocess.run(["mount", "-o", f"remount,size={3 * size // 1024 + 4096}k", str(mnt)], check=True)
                    runner = subprocess.Popen([sys.executable, "-m", "cellgen", *args, "-o", str(out)], env=c.env,
                                              cwd=c.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    time.sleep(2.5)
                    free = shutil.disk_usage(mnt).free
                    with open(mnt / "filler", "wb") as fh:  # another program takes what is left
                        try:
                            fh.write(b"\0" * max(0, free - 4096))
                        except OSError:
                            pass
                    stdout, stderr = runner.communicate(timeout=c.timeout)
                    proc = subprocess.CompletedProcess(runner.args, runner.returncode, stdout, stderr)
                refused = one_line_error(proc) or proc.returncode == 0  # finishing before the filler is fine
                # free space, rerun the same command
                (mnt / "filler").unlink(missing_ok=True)
                subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
                rerun = c.cellgen([*args, "-o", str(out)]) if proc.returncode != 0 else proc
                ok = refused and rerun.returncode == 0 and out.exists() and sha256(out) == sha256(ref)
                c.record("full_disk", f"{name}: disk {how}", ok,
                         f"first rc={proc.returncode} stderr={proc.stderr.strip()[-300:]} | rerun rc={rerun.returncode} "
                         f"{rerun.stderr.strip()[-200:]}")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# -- bad options ----------------------------------------------------------------------------------
def bad_option_cases(good: str, work: Path) -> list[tuple[str, list[str]]]:
    sim = ["simulate", "-q", "--n", "2", "--size", "64", "--count", "2"]
    smp = ["sample", "-q", "--seeds", "0-1", "--size", "64"]
    cases = []
    for opt in ("--density", "--pixel-size", "--cell-radius", "--touching", "--clustering"):
        for value in ("nan", "inf", "-inf", "-1"):
            cases.append((f"simulate {opt} {value}", [*sim, opt, value]))
    cases += [
        ("simulate --density 1e9", [*sim, "--density", "1e9"]),
        ("simulate --count 100000", [*sim, "--count", "100000"]),
        ("simulate --count 5:2", [*sim, "--count", "5:2"]),
        ("simulate --count -3", [*sim, "--count", "-3"]),
        ("simulate --size 100000", ["simulate", "-q", "--n", "2", "--size", "100000"]),
        ("simulate --n 1000000000", ["simulate", "-q", "--n", "1000000000", "--size", "64", "--count", "1"]),
        ("simulate --n 0", [*sim, "--n", "0"]),
        ("simulate --n -5", [*sim, "--n", "-5"]),
        ("simulate --seed -1", [*sim, "--seed", "-1"]),
        ("simulate --seed 2**70", [*sim, "--seed", str(2 ** 70)]),
        ("simulate --tier-thresholds nan,5", [*sim, "--tier-thresholds", "nan,5"]),
        ("simulate --tier-thresholds 5,1", [*sim, "--tier-thresholds", "5,1"]),
        ("simulate --tier-thresholds 1,inf", [*sim, "--tier-thresholds", "1,inf"]),
        ("simulate --tier-thresholds 3,3", [*sim, "--tier-thresholds", "3,3"]),
        ("simulate --tier-thresholds abc", [*sim, "--tier-thresholds", "abc"]),
        ("simulate --tier-measure bogus", [*sim, "--tier-measure", "bogus"]),
        ("simulate --variants bogus", [*sim, "--variants", "clean,bogus"]),
        ("simulate -o ''", [*sim, "-o", ""]),
        ("simulate -o a folder", [*sim, "-o", str(work)]),
        ("simulate -o in a missing read-only place", [*sim, "-o", "/proc/nope/x.h5"]),
    ]
    for value in ("nan", "inf", "-inf"):
        cases.append((f"sample --psi {value}", [*smp, "--psi", value]))
        cases.append((f"sample --pixel-size {value}", [*smp, "--pixel-size", value]))
    cases += [
        ("sample --pixel-size -1", [*smp, "--pixel-size", "-1"]),
        ("sample --psi 1,nan", [*smp, "--psi", "1,nan"]),
        ("sample --size 100000", ["sample", "-q", "--seeds", "0", "--size", "100000"]),
        ("sample --size 0", [*smp, "--size", "0"]),
        ("sample --device bogus", [*smp, "--device", "bogus"]),
        ("sample --device cuda:99", [*smp, "--device", "cuda:99"]),
        ("sample --device mps", [*smp, "--device", "mps"]),
        ("sample --seeds 5-x", ["sample", "-q", "--seeds", "5-x"]),
        ("sample --seeds 0-1000000000", ["sample", "-q", "--seeds", "0-1000000000", "--size", "64"]),
        ("sample --batch-size 0", [*smp, "--batch-size", "0"]),
        ("sample --batch-size 100000000", [*smp, "--batch-size", "100000000"]),
        ("sample --tier-thresholds nan", [*smp, "--tier-thresholds", "nan"]),
        ("sample --checkpoint missing", [*smp, "--checkpoint", str(work / "missing.pt")]),
        ("sample --checkpoint not a checkpoint", [*smp, "--checkpoint", good]),
        ("sample --renderer not a checkpoint", [*smp, "--renderer", good]),
        ("sample -o ''", [*smp, "-o", ""]),
        ("bench --n-boot 5", ["bench", "--method", "watershed", "--data", good, "--n-boot", "5"]),
        ("bench --limit 0", ["bench", "--method", "watershed", "--data", good, "--limit", "0"]),
        ("bench --diameter nan", ["bench", "--method", "watershed", "--data", good, "--diameter", "nan"]),
        ("bench --diameter -4", ["bench", "--method", "cellpose", "--data", good, "--diameter", "-4"]),
        ("bench --method bogus", ["bench", "--method", "bogus", "--data", good]),
        ("bench --variant bogus", ["bench", "--method", "watershed", "--data", good, "--variant", "bogus"]),
        ("bench --tier bogus", ["bench", "--method", "watershed", "--data", good, "--tier", "bogus"]),
        ("bench --data missing", ["bench", "--method", "watershed", "--data", str(work / "missing.h5")]),
        ("bench --set threshold_method=bogus", ["bench", "--method", "watershed", "--data", good, "--set",
                                                "threshold_method=bogus"]),
        ("bench cellpose --model evil.pt", ["bench", "--method", "cellpose", "--data", good, "--model",
                                            str(work / "evil.pt")]),
        ("bench cellpose --model garbage.pt", ["bench", "--method", "cellpose", "--data", good, "--model",
                                               str(work / "garbage.pt")]),
        ("bench cellpose --model missing.pt", ["bench", "--method", "cellpose", "--data", good, "--model",
                                               str(work / "missing.pt")]),
        ("render --checkpoint evil.pt", ["render", "--data", good, "-o", str(work / "r.h5"), "--checkpoint",
                                         str(work / "evil.pt")]),
        ("sample --checkpoint evil.pt", [*smp, "--checkpoint", str(work / "evil.pt")]),
        ("datasets verify garbage", ["datasets", "verify", str(work / "garbage.pt")]),
        ("datasets verify missing", ["datasets", "verify", str(work / "missing.h5")]),
        ("export --variants bogus", ["export", good, str(work / "exp"), "--variants", "bogus"]),
        ("preview --variant bogus", ["preview", good, "-o", str(work / "p.png"), "--variant", "bogus"]),
    ]
    return cases


def _make_evil(work: Path):
    """A pickle that would run a command if loaded with full unpickling (it is not run here)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(work / "PWNED"),))

    (work / "evil.pt").write_bytes(pickle.dumps({"state": Evil()}))
    (work / "garbage.pt").write_bytes(os.urandom(4096))


def bad_options(c: Campaign, good: Path):
    _make_evil(c.work)
    for name, args in bad_option_cases(str(good), c.work):
        out = c.work / "bad-out.h5"
        clean(out)
        has_out = "-o" in args
        argv = args if has_out or args[0] in ("bench", "datasets", "export", "preview") else [*args, "-o", str(out)]
        t0 = time.perf_counter()
        proc = c.cellgen(argv, timeout=240)
        wrote = out.exists() or any(out.parent.glob(out.name + ".*"))
        ok = one_line_error(proc) and not wrote and not (c.work / "PWNED").exists()
        c.record("bad_options", name, ok,
                 f"rc={proc.returncode} in {time.perf_counter() - t0:.1f}s wrote={wrote} stderr={proc.stderr.strip()[-300:]}")
        clean(out)
        shutil.rmtree(c.work / "results", ignore_errors=True)


# -- tampered sets ------------------------------------------------------------------------------
def tamperings():
    import h5py
    import numpy as np

    def attr(name, value):
        return lambda f: f.attrs.__setitem__(name, value)

    def data(name, fn):
        def edit(f):
            arr = f[name][()]
            f[name][...] = fn(arr)
        return edit

    def replace(name, fn):
        def edit(f):
            arr = fn(f[name][()])
            attrs = dict(f[name].attrs)
            del f[name]
            d = f.create_dataset(name, data=arr)
            for k, v in attrs.items():
                d.attrs[k] = v
        return edit

    def nucleus_outside(f):
        nuc = f["masks/nucleus"][0]
        cell = f["masks/cell"][0]
        ys, xs = np.nonzero(cell == 0)
        nuc[ys[0], xs[0]] = 1
        f["masks/nucleus"][0] = nuc

    def set_string(column, value):
        def edit(f):
            col = f[f"metadata/{column}"]
            current = col.asstr()[0]
            col[0] = value if value != current else ("low" if current != "low" else "high")
        return edit

    def tier_thresholds(values):
        def edit(f):
            scheme = json.loads(f.attrs["tier_scheme"])
            scheme["thresholds"] = values
            f.attrs["tier_scheme"] = json.dumps(scheme)
        return edit

    def delete(name):
        return lambda f: f.__delitem__(name)

    def truncate(path: Path):
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) * 2 // 3])

    def flip_bytes(path: Path):
        raw = bytearray(path.read_bytes())
        for k in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[k] ^= 0xFF
        path.write_bytes(bytes(raw))

    return [
        ("all-zero images", data("images", np.zeros_like)),
        ("all-zero noisy images", data("noisy/poisson/images", np.zeros_like)),
        ("nucleus outside its cell", nucleus_outside),
        ("cell ids not contiguous", data("masks/cell", lambda a: np.where(a > 0, a + 1, 0).astype(a.dtype))),
        ("semantic map disagrees", data("masks/semantic", lambda a: np.where(a == 128, 255, a).astype(a.dtype))),
        ("masks/cell as int64", replace("masks/cell", lambda a: a.astype(np.int64))),
        ("images as float32", replace("images", lambda a: a.astype(np.float32))),
        ("masks/semantic as uint16", replace("masks/semantic", lambda a: a.astype(np.uint16))),
        ("images wrong shape", replace("images", lambda a: a[:, :1])),
        ("missing masks/nucleus", delete("masks/nucleus")),
        ("missing metadata/tier", delete("metadata/tier")),
        ("edited tier", set_string("tier", "high")),
        ("unknown tier name", set_string("tier", "bogus")),
        ("count column edited", data("metadata/count", lambda a: a + 1)),
        ("density column edited", data("metadata/cells_per_mm2", lambda a: a * 3 + 100)),
        ("area_fraction column edited", data("metadata/area_fraction", lambda a: a * 0 + 0.99)),
        ("NaN density", data("metadata/cells_per_mm2", lambda a: a * np.nan)),
        ("NaN SNR", data("noisy/gaussian/snr_db", lambda a: a * np.nan)),
        ("NaN tier thresholds", tier_thresholds([float("nan"), 1600.0])),
        ("decreasing tier thresholds", tier_thresholds([1600.0, 700.0])),
        ("recipe not JSON", attr("recipe", "{not json")),
        ("tier_scheme not JSON", attr("tier_scheme", "{not json")),
        ("NaN pixel size", attr("pixel_size_um", float("nan"))),
        ("negative pixel size", attr("pixel_size_um", -0.5)),
        ("n_images larger than datasets", attr("n_images", 99)),
        ("schema_version 99", attr("schema_version", 99)),
        ("not a cellgen set", attr("format", "something-else")),
        ("variants attribute lists a missing variant", attr("variants", json.dumps(["clean", "gaussian", "poisson",
                                                                                     "ghost"]))),
        ("noise params not JSON", lambda f: f["noisy/poisson/images"].attrs.__setitem__("params", "{")),
        ("truncated file", ("file", truncate)),
        ("flipped bytes mid-file", ("file", flip_bytes)),
    ]


def tampered(c: Campaign):
    good = c.work / "good.h5"
    clean(good)
    proc = c.cellgen(["simulate", "-q", "--n", "4", "--size", "64", "--count", "2", "--seed", "3", "-o", str(good)])
    if proc.returncode:
        raise SystemExit(f"cannot make the good set: {proc.stderr}")
    base = c.cellgen(["datasets", "verify", str(good)])
    c.record("tampered", "untouched set verifies", base.returncode == 0, base.stderr)
    for name, edit in tamperings():
        bad = c.work / "tampered.h5"
        shutil.copyfile(good, bad)
        if isinstance(edit, tuple):
            edit[1](bad)
        else:
            import h5py

            with h5py.File(bad, "r+") as f:
                edit(f)
        verify = c.cellgen(["datasets", "verify", str(bad)])
        out = c.work / "bench-out"
        shutil.rmtree(out, ignore_errors=True)
        bench = c.cellgen(["bench", "--method", "watershed", "--data", str(bad), "-o", str(out), "-q", "--n-boot", "10"])
        scored = (out / "per_image.csv").exists() or (out / "summary.csv").exists()
        ok_v, ok_b = one_line_error(verify), one_line_error(bench) and not scored
        c.record("tampered", f"{name}: verify", ok_v, f"rc={verify.returncode} {verify.stderr.strip()[-300:]}")
        c.record("tampered", f"{name}: bench", ok_b,
                 f"rc={bench.returncode} scored={scored} {bench.stderr.strip()[-300:]}")
    # a cached registered set whose bytes are not the registered ones
    registry = json.loads((HERE.parent / "cellgen" / "data" / "registry.json").read_text())
    name = next(iter(registry["sets"]))
    version = registry["sets"][name]["latest"]
    cache = c.work / "cache"
    cache.mkdir(exist_ok=True)
    shutil.copyfile(good, cache / f"{name}-{version}.h5")
    verify = c.cellgen(["datasets", "verify", name])
    bench = c.cellgen(["bench", "--method", "watershed", "--data", name, "-o", str(c.work / "bench-reg"), "-q",
                       "--n-boot", "10"])
    c.record("tampered", "cached registered set with a wrong sha256: verify", one_line_error(verify), verify.stderr)
    c.record("tampered", "cached registered set with a wrong sha256: bench",
             one_line_error(bench) and not (c.work / "bench-reg" / "per_image.csv").exists(), bench.stderr)
    return good


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=100, help="random SIGKILLs (half simulate, half sample)")
    ap.add_argument("--only", nargs="*", choices=["kills", "full_disk", "bad_options", "tampered"])
    ap.add_argument("--work", default="/tmp/cellgen-fault-campaign", help="scratch folder (emptied first)")
    ap.add_argument("--code", help="PYTHONPATH holding the cellgen package to test [default: the installed one]")
    ap.add_argument("--results", default=str(HERE / "results" / "fault_campaign.json"))
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=300, help="seconds before a run counts as hung")
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    c = Campaign(work, args.code, args.timeout)
    only = set(args.only or ["kills", "full_disk", "bad_options", "tampered"])
    t0 = time.time()
    sys.path.insert(0, str(HERE))
    from machine import cpu_model

    def save(finished=False):
        out = {
            "what": "fault campaign: benchmarks/fault_campaign.py",
            "finished": finished,
            "code": args.code or "installed cellgen",
            "cpu": cpu_model(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 1),
            "minutes": round((time.time() - t0) / 60, 1),
            "summary": {k: f"{v['passed']}/{v['tried']}" for k, v in c.results.items()},
            "results": c.results,
        }
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(out, indent=2))
        return out

    c.on_record = save
    good = tampered(c) if "tampered" in only else None
    if "bad_options" in only:
        if good is None:
            good = work / "good.h5"
            c.cellgen(["simulate", "-q", "--n", "4", "--size", "64", "--count", "2", "--seed", "3", "-o", str(good)])
        bad_options(c, good)
    if "full_disk" in only:
        full_disk(c)
    if "kills" in only:
        kills(c, args.kills, random.Random(args.seed))
    out = save(finished=True)
    print(json.dumps(out["summary"]))


if __name__ == "__main__":
    main()
