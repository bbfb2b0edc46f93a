"""SNR tiers: the noise axis of a set, the way density tiers are its density axis.

Each noisy image gets a tier from its measured SNR (the mean over channels of the stored
``snr_db``); the thresholds are stored in the set (root attribute ``snr_tier_scheme``), so a
tier means the same SNR range in every set. Clean images are tier ``clean``.

Public API: :class:`SNRTierScheme`, :data:`DEFAULT_SNR_TIERS`, :data:`CLEAN_TIER`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from cellgen.errors import CellgenError

CLEAN_TIER = "clean"


@dataclass(frozen=True)
class SNRTierScheme:
    """Tiers as consecutive half-open SNR intervals ``[t_i, t_{i+1})`` in dB, lowest SNR first."""

    thresholds: tuple[float, ...] = (10.0, 15.0, 20.0)
    names: tuple[str, ...] = ("snr-very-low", "snr-low", "snr-medium", "snr-high")

    def __post_init__(self):
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if len(self.thresholds) != len(self.names) - 1:
            raise CellgenError(f"{len(self.names)} SNR tiers need {len(self.names) - 1} thresholds, "
                               f"got {len(self.thresholds)}")
        if any(not np.isfinite(t) for t in self.thresholds) or any(
                b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise CellgenError(f"SNR tier thresholds must be finite and increase, got {list(self.thresholds)}")
        if len(set(self.names)) != len(self.names) or CLEAN_TIER in self.names or "" in self.names:
            raise CellgenError(f"SNR tier names must be distinct, non-empty and not '{CLEAN_TIER}'")

    def assign(self, snr_db) -> str:
        """Tier of one image from its per-channel SNR (dB); an infinite SNR is ``clean``."""
        value = float(np.mean(np.asarray(snr_db, np.float64)))
        if value == np.inf:
            return CLEAN_TIER
        if value != value:
            return self.names[0]
        return self.names[int(np.searchsorted(np.asarray(self.thresholds), value, side="right"))]

    def to_json(self) -> str:
        return json.dumps({"measure": "snr_db", "thresholds": list(self.thresholds), "names": list(self.names)})

    @classmethod
    def from_json(cls, text: str) -> "SNRTierScheme":
        try:
            d = json.loads(text)
            return cls(tuple(d["thresholds"]), tuple(d["names"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CellgenError(f"unreadable SNR tier scheme {text!r}: {err}") from None

    @classmethod
    def parse(cls, thresholds: str, names: str | None = None) -> "SNRTierScheme":
        """From command-line strings: ``--snr-thresholds 10,15,20`` [``--snr-tier-names a,b,c,d``]."""
        try:
            values = tuple(float(t) for t in thresholds.split(",") if t.strip())
        except ValueError:
            raise CellgenError(f"--snr-thresholds must be comma-separated dB values, got {thresholds!r}") from None
        if names is None:
            if len(values) + 1 == len(DEFAULT_SNR_TIERS.names):
                return cls(values, DEFAULT_SNR_TIERS.names)
            return cls(values, tuple(f"snr-{i}" for i in range(len(values) + 1)))
        return cls(values, tuple(n.strip() for n in names.split(",") if n.strip()))

    @property
    def all_names(self) -> tuple[str, ...]:
        """Tiers from the noisiest up, then ``clean``."""
        return (*self.names, CLEAN_TIER)


DEFAULT_SNR_TIERS = SNRTierScheme()
