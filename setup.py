"""Builds put the default models into the package, so a wheel runs ``cellgen sample`` anywhere.

The checkpoints stay in the repository's ``checkpoints/`` folder (where training exports and
model cards land); a build copies the files that ``cellgen/defaults.py`` names in ``FILES``,
with their ``.json``/``.md`` model cards, to ``cellgen/checkpoints/`` in the build. A missing
file, or weights whose sha256 differs from their card's, stops the build: a wheel never
ships without its models or with a card that describes other weights. Editable installs
read ``checkpoints/`` in place and copy nothing.
"""

import ast
import hashlib
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "checkpoints"


def default_files() -> list[str]:
    """The ``FILES`` table of cellgen/defaults.py, read without importing the package."""
    tree = ast.parse((ROOT / "cellgen" / "defaults.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FILES" for t in node.targets):
            return sorted(ast.literal_eval(node.value).values())
    raise RuntimeError("cellgen/defaults.py has no FILES table")


def model_files() -> list[Path]:
    import json

    files = []
    for name in default_files():
        weights, card = SOURCE / name, (SOURCE / name).with_suffix(".json")
        if not weights.exists() or not card.exists():
            raise RuntimeError(f"cannot build cellgen without its default model {weights} and its card {card.name}")
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        recorded = json.loads(card.read_text()).get("sha256")
        if digest != recorded:
            raise RuntimeError(f"{weights} has sha256 {digest}, its card {card.name} says {recorded}")
        files += [weights, card] + [p for p in [weights.with_suffix(".md")] if p.exists()]
    return files


class BuildWithModels(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "cellgen" / "checkpoints"
        target.mkdir(parents=True, exist_ok=True)
        for path in model_files():
            shutil.copyfile(path, target / path.name)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for model_files()
    setup(cmdclass={"build_py": BuildWithModels})
