"""The ``noise`` group: camera presets, the photon-transfer check, SNR of the variants."""

from __future__ import annotations

import click

from cellgen.cli.options import parse_floats, parse_list
from cellgen.cli.root import cli


@cli.group("noise")
def noise_group():
    """Camera presets, photon-transfer check and SNR of the noise variants."""


@noise_group.command("cameras")
def cameras():
    """The camera presets with their units and sources."""
    from cellgen.noise import CAMERAS

    for cam in CAMERAS.values():
        qe = ", ".join(f"{q:.2f}@{w:g}nm" for w, q in cam.qe)
        extra = f", EM gain {cam.em_gain:g}x (register well {cam.em_full_well_e:,.0f} e-)" if cam.kind == "emccd" else ""
        if cam.read_noise_median_e:
            extra += f", per-pixel read noise (median {cam.read_noise_median_e:g} e-)"
        click.echo(f"{cam.name} ({cam.kind}): QE {qe}; read noise {cam.read_noise_e:g} e- rms; full well "
                   f"{cam.full_well_e:,.0f} e-; dark {cam.dark_current_e_per_s:g} e-/px/s; CIC "
                   f"{cam.clock_induced_charge_e:g} e-; ADC {cam.adc_gain_e_per_adu:.4g} e-/ADU, offset "
                   f"{cam.offset_adu:g} ADU, {cam.bit_depth}-bit{extra}")
        click.echo(f"    source: {cam.source}")


@noise_group.command("ptc")
@click.option("--camera", required=True, help="Camera preset (see 'cellgen noise cameras').")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for ptc.png/json/csv.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(16, 2048), help="Flat-field side, px.")
@click.option("--levels", default=12, show_default=True, type=click.IntRange(3, 100), help="Light levels (with dark).")
@click.option("--seed", default=0, show_default=True, type=int)
def ptc(camera, output, size, levels, seed):
    """Photon-transfer curve: flat fields at rising light, variance against mean, fitted gain and read noise."""
    from cellgen.noise.ptc import photon_transfer, write_ptc

    result = photon_transfer(camera, size=size, n_levels=levels, seed=seed)
    out = write_ptc(result, output)
    p = result.preset
    click.echo(f"{result.camera}: gain {result.adc_gain_e_per_adu:.4g} e-/ADU (preset {p['adc_gain_e_per_adu']:.4g}, "
               f"{100 * result.gain_error:+.2f}%), read noise {result.read_noise_e:.3g} e- (preset "
               f"{p['read_noise_e']:g}, {100 * result.read_noise_error:+.2f}%), system gain "
               f"{result.system_gain_e_per_adu:.4g} photo-e-/ADU")
    click.echo(f"wrote {out / 'ptc.png'}, ptc.json, ptc.csv")


@noise_group.command("snr")
@click.option("--variants", default="clean,gaussian,poisson,mild,moderate,severe", show_default=True)
@click.option("--photons", default="50,100,200,500,1000", show_default=True, help="Ladder for each --camera.")
@click.option("--camera", "cameras_", default="ccd-icx285,emccd-ixon888,scmos-orca-fusion", show_default=True)
@click.option("--n", "n_images", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="Simulated images (count 5..40) to average over.")
def snr(variants, photons, cameras_, n_images):
    """Measured SNR (dB) and SNR tier of each variant on simulated images."""
    import numpy as np

    from cellgen import noise
    from cellgen.pipeline import to_uint16
    from cellgen.simulate import SimulationConfig, simulate_image

    names = parse_list(variants)
    for cam in parse_list(cameras_):
        names += noise.ladder(cam, parse_floats(photons, "--photons"))
    params = noise.resolve_all(names)
    sims = [simulate_image(i, SimulationConfig(count=int(5 + 35 * i / max(n_images - 1, 1)))) for i in range(n_images)]
    click.echo(f"{'variant':<28}{'SNR dB':>8}{'min':>8}{'max':>8}  tier ({noise.DEFAULT_SNR_TIERS.to_json()})")
    for name, p in params.items():
        values = [float(np.mean(noise.apply_noise(to_uint16(s.image), p, noise.variant_seed(s.seed, name),
                                                  pixel_size_um=0.5, cell=s.cell)[1])) for s in sims]
        click.echo(f"{name:<28}{np.mean(values):8.1f}{min(values):8.1f}{max(values):8.1f}  "
                   f"{noise.DEFAULT_SNR_TIERS.assign(np.mean(values))}")
