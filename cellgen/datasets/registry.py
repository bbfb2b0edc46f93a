"""Released benchmark sets: the registry shipped with cellgen, the local cache, downloads
with resume and checksum, and deterministic rebuilds from a set's recipe.

The registry (``cellgen/data/registry.json``, or the file named by ``CELLGEN_REGISTRY``)
lists sets by name and version with their sha256, size, schema version, license, citation,
download addresses (``urls``, ``mirrors``; empty until a set is published somewhere real) and
the ``recipe`` that rebuilds the set and its ``fingerprint`` (:mod:`cellgen.datasets.fingerprint`).
Names and versions are checked when the registry is read (letters, digits, ``.``, ``_``,
``-``; no ``..``), so no registry can make a download land outside the cache.

A download must have the registered sha256. A rebuild is accepted when it has that sha256
or, on a CPU that rounds float32 convolutions differently, when its fingerprint matches:
masks, metadata and attributes identical, images within the stated tolerance. A rebuild
accepted that way gets its own sha256 recorded beside it (``FILE.accepted.json``), so
:func:`is_registered_file` recognises it as that set later.

The cache is ``$CELLGEN_DATA`` or the platform's user cache (``~/.cache/cellgen/datasets``
on Linux); a set lives there as ``NAME-VERSION.h5`` only after its sha256 was checked.
Downloads run through pooch (:mod:`cellgen.datasets.download`): they go to
``NAME-VERSION.h5.part`` first and resume from it with HTTP Range requests.

Public API: :func:`load_registry`, :func:`resolve`, :func:`cache_dir`, :func:`cached_path`,
:func:`download`, :func:`build`, :func:`parse_name`, :func:`check_name`, :func:`is_registered_file`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

from cellgen.datasets.download import cache_dir, cached_path
from cellgen.errors import CellgenError
from cellgen.fileio import sha256_of

REGISTRY_FILE = Path(__file__).resolve().parent.parent / "data" / "registry.json"
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,128}")
__all__ = ["load_registry", "parse_name", "resolve", "cache_dir", "cached_path", "download", "build", "Built",
           "check_name", "is_registered_file"]


def check_name(text, what: str) -> str:
    """A set name, version or file name that is safe as one path component, or a one-line error."""
    if not isinstance(text, str) or not _SAFE.fullmatch(text) or ".." in text:
        raise CellgenError(f"{what} {text!r} is not allowed: use only letters, digits, '.', '_' and '-', "
                           "without '..'")
    return text


def load_registry(path=None) -> dict:
    path = Path(path or os.environ.get("CELLGEN_REGISTRY") or REGISTRY_FILE)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CellgenError(f"dataset registry not found: {path}") from None
    except ValueError as err:
        raise CellgenError(f"dataset registry {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
        raise CellgenError(f"dataset registry {path} has no 'sets' table")
    for name, s in data["sets"].items():
        check_name(name, f"dataset registry {path}: set name")
        if not isinstance(s, dict) or not isinstance(s.get("versions"), dict):
            raise CellgenError(f"dataset registry {path}: set {name!r} has no 'versions' table")
        for version in s["versions"]:
            check_name(version, f"dataset registry {path}: {name} version")
        if s.get("latest") not in s["versions"]:
            raise CellgenError(f"dataset registry {path}: set {name!r} names latest version {s.get('latest')!r}, "
                               "which it does not list")
    return data


def parse_name(text: str) -> tuple[str, str | None]:
    name, _, version = text.partition("@")
    return name, (version or None)


def resolve(text: str, registry: dict | None = None) -> tuple[str, str, dict]:
    """``NAME[@VERSION]`` -> (name, version, entry); latest version when none is given."""
    registry = registry or load_registry()
    name, version = parse_name(text)
    sets = registry["sets"]
    if name not in sets:
        raise CellgenError(f"unknown dataset '{name}'; 'cellgen datasets list' shows: {', '.join(sets)}")
    versions = sets[name]["versions"]
    version = version or sets[name]["latest"]
    if version not in versions:
        raise CellgenError(f"dataset '{name}' has no version '{version}'; versions: {', '.join(versions)}")
    return name, version, versions[version]


def download(text: str, url: str | None = None, progress: bool = True, timeout: float = 30.0,
             registry: dict | None = None) -> Path:
    """Fetch a registered set into the cache (resuming a partial download) and verify it."""
    from cellgen.datasets.download import fetch

    name, version, entry = resolve(text, registry)
    urls = [url] if url else list(entry.get("urls", [])) + list(entry.get("mirrors", []))
    if not urls:
        raise CellgenError(
            f"{name}@{version} has no published download address; rebuild it with "
            f"'cellgen datasets build {name}@{version}' or pass --url MIRROR"
        )
    return fetch(name, version, entry.get("sha256"), urls, size=entry.get("size_bytes"), progress=progress,
                 timeout=timeout)


class Built(NamedTuple):
    path: Path
    sha256: str
    check: str  # which check the rebuild passed, in words


def build(text: str, output=None, check: bool = True, progress: bool = True, registry: dict | None = None) -> Built:
    """Rebuild a registered set from its recipe; returns (path, sha256, check passed).

    With ``check`` the result must be the registered set: the registered sha256, or else a
    fingerprint that matches the registered one (:mod:`cellgen.datasets.fingerprint`; masks,
    metadata and attributes identical, images within tolerance). Only then is it moved to
    ``output`` (default: the cache; there a fingerprint match is recorded beside it). Without
    ``check`` it is written as it comes, which is how a registry entry is made
    (``python -m cellgen.datasets.register``).
    """
    name, version, entry = resolve(text, registry)
    recipe = entry.get("recipe")
    if not recipe:
        raise CellgenError(f"{name}@{version} has no recipe to build from")
    target = Path(output) if output else cached_path(name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.building")
    if staging.exists():
        staging.unlink()
    _run_recipe(recipe, staging, command=f"cellgen datasets build {name}@{version}", progress=progress)
    digest = sha256_of(staging)
    expected = entry.get("sha256")
    record = _accepted_record(target)
    verdict = "not checked"
    if check and expected:
        try:
            verdict = _accept(staging, digest, entry, f"rebuilt {name}@{version}")
        except CellgenError:
            staging.unlink()
            raise
    record.unlink(missing_ok=True)
    os.replace(staging, target)
    if check and expected and digest != expected and output is None:  # only the cache needs to know
        record.write_text(json.dumps({"sha256": digest, "registered_sha256": expected, "check": verdict}, indent=2))
    return Built(target, digest, verdict)


def _accept(path: Path, digest: str, entry: dict, what: str) -> str:
    """Which check ``path`` passes as the registered set, or a one-line error."""
    from cellgen.datasets import fingerprint

    expected = entry["sha256"]
    if digest == expected:
        return "sha256 identical to the registry's"
    if not entry.get("fingerprint"):
        raise CellgenError(f"{what} has sha256 {digest}, the registry says {expected} and holds no fingerprint to "
                           "compare arrays with; nothing was kept")
    checks = fingerprint.compare(fingerprint.fingerprint(path), entry["fingerprint"])
    line = fingerprint.summary_line(checks)
    if not all(c.ok for c in checks):
        raise CellgenError(f"{what} {line}; nothing was kept")
    return f"fingerprint: {line} (the file sha256 differs from the registered one)"


def _accepted_record(path: Path) -> Path:
    return path.with_name(path.name + ".accepted.json")


def is_registered_file(path, entry: dict) -> bool:
    """Whether ``path`` holds the registered set: the registered sha256, or the sha256 that
    :func:`build` recorded beside it after the rebuild passed the fingerprint check."""
    path = Path(path)
    expected = entry.get("sha256")
    if not expected:
        return True
    digest = sha256_of(path)
    if digest == expected:
        return True
    try:
        record = json.loads(_accepted_record(path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("sha256") == digest
            and record.get("registered_sha256") == expected)


def _run_recipe(recipe: dict, path: Path, command: str, progress: bool) -> None:
    from cellgen.density import TierScheme
    from cellgen.simulate import SimulationConfig

    builder = recipe.get("builder")
    tiers = TierScheme.from_json(json.dumps(recipe["tiers"])) if "tiers" in recipe else None
    common = dict(command=command, progress=progress, overwrite=True)
    if tiers is not None:
        common["tiers"] = tiers
    if builder == "simulate-graded":
        from cellgen.pipeline import simulate_graded_set

        cfg = SimulationConfig(**recipe["config"])
        simulate_graded_set(path, cfg, [tuple(g) for g in recipe["groups"]], seed=recipe["seed"],
                            variants=recipe["variants"], **common)
    elif builder == "simulate":
        from cellgen.pipeline import simulate_set

        cfg = recipe["config"]
        if isinstance(cfg.get("count"), list):
            cfg = dict(cfg, count=tuple(cfg["count"]))
        simulate_set(path, SimulationConfig(**cfg), recipe["n"], seed=recipe["seed"], variants=recipe["variants"],
                     **common)
    elif builder == "sample":
        _build_sampled(recipe, path, common)
    elif builder == "real":
        from cellgen.datasets.real import build_real_set

        build_real_set(recipe["name"], path, overwrite=True)
    else:
        raise CellgenError(f"recipe builder '{builder}' is not known to this cellgen; upgrade cellgen")


def _recipe_checkpoint(spec: dict, kind: str) -> Path:
    """The checkpoint a recipe names (by file in the checkpoints folder), checked by sha256."""
    from cellgen.defaults import checkpoints_dir

    path = checkpoints_dir() / check_name(spec["file"], f"the recipe's {kind} file")
    if not path.exists():
        raise CellgenError(f"this set is built with the {kind} {path.name}, which is not installed at {path}")
    digest = sha256_of(path)
    if digest != spec["sha256"]:
        raise CellgenError(f"{path} has sha256 {digest}, the recipe needs {spec['sha256']} "
                           f"(a different {kind}); nothing was built")
    return path


def _build_sampled(recipe: dict, path: Path, common: dict) -> None:
    """A set from the shipped contour generator + renderer: every seed x every psi."""
    from cellgen.gen.generator import ContourGenerator
    from cellgen.pipeline import generated_set
    from cellgen.render.renderer import Renderer

    gen = ContourGenerator.load(_recipe_checkpoint(recipe["generator"], "contour generator"))
    rend = Renderer.load(_recipe_checkpoint(recipe["renderer"], "renderer"))
    first, last = recipe["seeds"]
    pairs = [(s, float(p)) for s in range(int(first), int(last) + 1) for p in recipe["psi"]]
    generated_set(path, gen, pairs, renderer=rend, pixel_size_um=float(recipe["pixel_size_um"]),
                  size=int(recipe["size"]), batch_size=int(recipe.get("batch_size", 8)),
                  variants=recipe["variants"], noise_mode=recipe.get("noise_mode", "const"), **common)
