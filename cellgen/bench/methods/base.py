"""The one small interface every segmentation method implements.

A method takes one two-channel image and returns instance label maps. Channel order is
fixed across cellgen: ``image[0]`` is the nucleus channel, ``image[1]`` the cytoplasm
channel, float32, any range (methods normalise for themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellgen.errors import CellgenError


class MethodUnavailable(CellgenError):
    """The method cannot run here: a package, an environment or a weights file is missing.

    The message is one line that names what is missing and how to get it.
    """


@dataclass
class Segmentation:
    """Instance label maps (uint32, 0 = background); ``None`` for a compartment the method does not segment."""

    cell: np.ndarray | None
    nucleus: np.ndarray | None


class Method:
    """Base class of segmentation adapters.

    Subclasses set ``name`` and implement :meth:`segment`; :meth:`check` raises
    :class:`MethodUnavailable` before any work starts when something is missing, so a bench
    run fails in its first second rather than after the first image.
    """

    name: str = ""
    #: compartments the method produces, subset of {"cell", "nucleus"}
    compartments: tuple[str, ...] = ("cell", "nucleus")

    def check(self) -> None:
        """Raise :class:`MethodUnavailable` if the method cannot run."""

    def describe(self) -> dict:
        """Settings and versions recorded beside the results (JSON-serialisable)."""
        return {"method": self.name}

    def settings_for_set(self, pixel_size_um: float) -> dict:
        """The settings that follow from a set's pixel size, as the method will apply them
        (e.g. diameters in pixels); recorded beside :meth:`describe`. Raise
        :class:`MethodUnavailable` or :class:`CellgenError` for a set the settings contradict."""
        return {}

    def segment(self, image: np.ndarray, pixel_size_um: float) -> Segmentation:
        raise NotImplementedError

    def close(self) -> None:
        """Release worker processes or models; called once after the last image."""


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a (2, H, W) nucleus+cytoplasm image and return it as float32."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 2:
        raise CellgenError(f"expected an image of shape (2, H, W) (nucleus, cytoplasm), got {image.shape}")
    return image.astype(np.float32, copy=False)
