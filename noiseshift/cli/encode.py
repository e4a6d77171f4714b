"""`noiseshift encode`: image data into VAE latents (diffusers AutoencoderKL)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data import load_data
from ..integrations.encode import encode_latents
from ..io.paths import check_output_file, refuse_overwriting_inputs
from .common import app, console, data_option, print_json, progress, size_option
from .inputs import data_spec


@app.command("encode")
def encode_command(
    vae: str = typer.Option(..., "--vae", help="diffusers AutoencoderKL: a folder "
                            "(save_pretrained layout, or a pipeline folder with vae/), or a "
                            "Hub id ORG/NAME[@REVISION] from the local Hugging Face cache."),
    allow_download: bool = typer.Option(False, "--allow-download", help="Download a Hub id "
                                        "--vae that is not in the cache (default: local "
                                        "files only; HF_HUB_OFFLINE=1 still forbids it)."),
    data: str = data_option(..., "Image data to encode."),
    out: Path = typer.Option(..., "--out", "-o", help="Latents file to write (HDF5)."),
    size: int = size_option(),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or "
                               "cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Encode images into VAE latents, with the VAE's scaling and shift factors applied and
    stored, so `--data latents:OUT` trains an estimator where a latent model's states live.

    Needs the diffusers extra (`pip install 'noiseshift[diffusers]'`).

    Example: `noiseshift encode --vae sd-vae/ --data images/ --size 256 --out latents.h5`,
    then `noiseshift train-estimator --data latents:latents.h5 --out est.pt`.
    """
    check_output_file(out)
    refuse_overwriting_inputs(out, vae, data)
    dataset = load_data(data_spec(data, size))
    with progress(json_out) as p:
        task = p.add_task(f"encoding {len(dataset)} images", total=len(dataset))
        summary = encode_latents(vae, dataset, out, batch_size=batch_size, device=device,
                                 progress=lambda done, total: p.update(task, completed=done),
                                 allow_download=allow_download)
    if json_out:
        print_json(summary)
        return
    console.print(f"wrote [bold]{out}[/]: {summary['n']} latents of shape {summary['shape']}, "
                  f"scaling factor {summary['scaling_factor']}, shift {summary['shift_factor']}")
