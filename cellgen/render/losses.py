"""Paired losses of the renderer beside pix2pixHD's GAN and feature-matching terms.

The discriminator sees the masks and an image but not the appearance inputs
(:mod:`cellgen.render.appearance`), so nothing in the GAN objective asks the generator to
honour them: a renderer trained only on it drew every background at one level (between-image
spread of the background a sixth of the simulator's) and nuclei 12% dim. And a perceptual
loss on a classification network's features hardly sees the 2-pixel grain of chromatin, so
the finest octave of the power spectrum came out at a quarter of the real one.

* :func:`region_mean_loss`: L1 between each region's mean (the background, every cell's
  nucleus and cytoplasm) in the rendered image and in the real one, the background weighted
  as much as all cells; the real means are the appearance inputs in training, so this is the
  loss that makes them a control.
* :func:`spectrum_loss`: L1 between the log radially averaged power spectra (1-pixel radial
  bins, each octave weighted alike, DC left to the region term) of the rendered and the real
  image, per channel. The two images share their masks, so their spectra should agree; the
  loss does not ask for the same pixels, only for the same amount of texture at each scale.
"""

from __future__ import annotations

import torch


def region_mean_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """|mean(fake) - mean(real)| per region and channel; ``labels`` (B, H, W) int64 region ids, 0 background.

    Half the loss is the background (one region per image), half the cells' regions, so an
    image's background level counts as much as all its cells together rather than as one
    region among dozens (which left it at a single level for every image).
    """
    b, c = fake.shape[:2]
    n_per = int(labels.max()) + 1
    flat = (labels + n_per * torch.arange(b, device=labels.device)[:, None, None]).reshape(-1)
    counts = torch.bincount(flat, minlength=b * n_per).to(fake.dtype)
    diff = (fake - real).permute(1, 0, 2, 3).reshape(c, -1)
    sums = torch.zeros(c, b * n_per, dtype=fake.dtype, device=fake.device).index_add_(1, flat, diff)
    gap = (sums / counts.clamp(min=1)).abs()  # (C, B * n_per)
    present = counts > 0
    is_background = torch.zeros_like(present)
    is_background[::n_per] = True
    parts = [gap[:, present & sel].mean() for sel in (is_background, ~is_background) if bool((present & sel).any())]
    return sum(parts) / len(parts)


def _radial_bins(h: int, w: int, device) -> tuple[torch.Tensor, int]:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    r = torch.sqrt(fy**2 + fx**2) * min(h, w)
    bins = torch.round(r).long()
    n_bins = min(h, w) // 2 + 1
    return bins.clamp(max=n_bins), n_bins


def log_radial_spectrum(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(B, C, n_bins - 1) log of the mean power in each 1-pixel radial frequency bin, DC excluded."""
    b, c, h, w = x.shape
    power = torch.fft.rfft2(x, norm="ortho").abs() ** 2
    bins, n_bins = _radial_bins(h, w, x.device)
    flat = bins.reshape(-1)
    counts = torch.bincount(flat, minlength=n_bins + 1).to(x.dtype)
    sums = torch.zeros(b * c, n_bins + 1, dtype=x.dtype, device=x.device).index_add_(1, flat, power.reshape(b * c, -1))
    mean = sums[:, 1:n_bins] / counts[1:n_bins]  # bin n_bins holds the corners beyond Nyquist
    return torch.log(mean + eps).reshape(b, c, -1)


def spectrum_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean |log P_fake - log P_real| over channels and images; radial bin k weighted 1 / k, so
    that every octave of frequency counts the same (with equal weights the finest octave,
    which holds half the bins, would rule and cell-scale structure would hardly count)."""
    gap = (log_radial_spectrum(fake) - log_radial_spectrum(real)).abs()
    k = torch.arange(1, gap.shape[-1] + 1, device=gap.device, dtype=gap.dtype)
    weights = (1.0 / k) / (1.0 / k).sum()
    return (gap * weights).sum(-1).mean()
