"""Datasets: the built-ins (digits, photos, the analytic Gaussian mixture), user arrays,
image folders and VAE latents, behind one `--data` grammar (`parse_data_spec`, `load_data`).

Modules: `base` (Dataset), `mixture` (GaussianMixture, MixtureDenoiser, make_gmm), `builtin`
(digits, photos), `files` (arrays, latents), `images` (image folders), `spec` (the grammar).
"""

from .base import Dataset, check_finite
from .builtin import PHOTO_HELD_OUT, load_digits, load_photos, upsample
from .files import load_array, load_latents
from .images import IMAGE_SUFFIXES, load_image_folder
from .mixture import DATA_END, DEFAULT_T_GRID, GaussianMixture, MixtureDenoiser, make_gmm, t_grid
from .spec import BUILTINS, check_shape, describe_spec, load_data, parse_data_spec

__all__ = [
    "BUILTINS", "DATA_END", "DEFAULT_T_GRID", "IMAGE_SUFFIXES", "PHOTO_HELD_OUT", "Dataset",
    "GaussianMixture", "MixtureDenoiser", "check_finite", "check_shape", "describe_spec",
    "load_array", "load_data", "load_digits", "load_image_folder", "load_latents",
    "load_photos", "make_gmm", "parse_data_spec", "t_grid", "upsample",
]
