"""Image to image as diffusers' `StableDiffusionImg2ImgPipeline`: the init image, the strength, the start latents.

    img = load_init_image("in.png")                          # PIL RGB; TinySDError naming the file
    w, h = init_image_size(img.size, multiple, width, height)
    x = image_to_array(img, w, h)                            # (1, 3, H, W) float32 in [-1, 1]
    i0 = start_index(steps, strength)                        # first step run; steps - i0 steps are run
    z0 = latent_sample(vae.encode_moments(x), noise, vae.scaling_factor)
    latents = sched.add_noise(z0, noise2, i0)                # then the sampler loop from step i0

What diffusers does, step by step (and what tinysd does the same way):

- preprocess (`VaeImageProcessor`): RGB pixels p in 0..255 -> float32 2 * (p / 255) - 1.
- size: without width/height the image keeps its size, rounded down to a multiple of the model's
  size multiple (`Pipeline.size_multiple`: 64 for SD 1.x; diffusers rounds down to a multiple of
  8 and lets the UNet cope) and resized to it with Lanczos (diffusers' default resample); an image
  smaller than one multiple is refused. With width/height the image is resized to that size
  (A1111's "Just resize"). An image with alpha or a palette is converted to RGB (alpha dropped).
- encode: the VAE's latent distribution (moments = mean, logvar; logvar clamped to [-30, 20]) is
  sampled, mean + exp(logvar / 2) * n, and multiplied by the VAE scaling factor.
- timesteps (`get_timesteps`): the full schedule of `steps` is set; k = min(int(steps * strength),
  steps) steps are run, the last k, starting at index i0 = steps - k. k = 0 (steps * strength < 1)
  is refused, as diffusers refuses it.
- the encoded latent is noised to step i0 with the scheduler's `add_noise` (DDPM form for DDIM,
  x0 + sigma n for Euler, the VP form for DPM++ 2M); no `init_noise_sigma` is applied.

Seeded noise (`NoiseSource`, one stream per image): image i draws first the latent sample's noise,
then the noise `add_noise` adds, then (ancestral samplers) one array per step run. The image is
encoded once for the whole batch.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from .errors import TinySDError
from .fileio import open_regular

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.8  # diffusers' StableDiffusionImg2ImgPipeline default
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps logvar to this


def check_strength(strength) -> float:
    """`strength` as a float; TinySDError naming the option unless it is a real number in (0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(strength)) or not 0.0 < float(strength) <= 1.0:
        raise TinySDError(f"strength must be a number in (0, 1] (got {strength!r})")
    return float(strength)


def start_index(steps: int, strength: float) -> int:
    """Index of the first step run (diffusers' `get_timesteps`): steps - min(int(steps * strength), steps).

    TinySDError when no step would run (steps * strength < 1)."""
    init = min(int(steps * strength), steps)
    if init < 1:
        raise TinySDError(f"strength {strength:g} with {steps} steps runs no step (int(steps x strength) = 0); "
                          f"raise --steps or --strength")
    return steps - init


def load_init_image(path: str | Path):
    """The image at `path` as a PIL RGB image; TinySDError naming the file when it is missing, not a
    regular file or not an image PIL can read (also a truncated one)."""
    from PIL import Image, UnidentifiedImageError

    what = f"init image {path}"
    try:
        with open_regular(path) as f, Image.open(f) as im:
            im.load()
            img = im.convert("RGB")
    except FileNotFoundError:
        raise TinySDError(f"{what}: no such file") from None
    except UnidentifiedImageError:
        raise TinySDError(f"{what}: not an image file PIL can read") from None
    except Image.DecompressionBombError as e:
        raise TinySDError(f"{what}: too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for damaged files
        raise TinySDError(f"{what}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    log.info("init image %s: %dx%d", path, *img.size)
    return img


def init_image_size(image_size: tuple[int, int], multiple: int, width: int | None = None,
                    height: int | None = None) -> tuple[int, int]:
    """The output (width, height) of img2img: width/height when given, else the image's size rounded
    down to a multiple of `multiple`; TinySDError when the image is smaller than one multiple."""
    out = []
    for name, given, have in (("width", width, image_size[0]), ("height", height, image_size[1])):
        if given is None:
            given = have - have % multiple
            if given < multiple:
                raise TinySDError(f"init image: {name} {have} is smaller than {multiple} pixels, the size multiple of "
                                  f"this model; give --{name} to resize it")
        out.append(int(given))
    return out[0], out[1]


def image_to_array(image, width: int, height: int) -> np.ndarray:
    """float32 (1, 3, height, width) in [-1, 1]: 2 * (pixels / 255) - 1 of the RGB image, first
    resized to (width, height) with Lanczos when its size differs."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (width, height):
        log.info("init image resized from %dx%d to %dx%d (Lanczos)", *image.size, width, height)
        image = image.resize((width, height), resample=Image.LANCZOS)
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
    x = np.float32(2.0) * x - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # (1, 3, H, W)


def latent_sample(moments: np.ndarray, noise: np.ndarray, scaling_factor: float) -> np.ndarray:
    """scaling_factor * (mean + exp(clip(logvar, -30, 20) / 2) * noise), float64 (B, L, h, w).

    moments: (1 or B, 2L, h, w), the VAE's mean and logvar along axis 1; noise: (B, L, h, w)."""
    m = np.asarray(moments, dtype=np.float64)
    mean, logvar = np.split(m, 2, axis=1)  # 2 x (., L, h, w)
    std = np.exp(0.5 * np.clip(logvar, *LOGVAR_RANGE))
    return float(scaling_factor) * (mean + std * np.asarray(noise, dtype=np.float64))


def as_init_image(image):
    """A PIL RGB image from a PIL image or an image file path (`load_init_image`)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        return load_init_image(image)
    raise TinySDError(f"init image must be a PIL image or an image file path (got {type(image).__name__})")


def check_img2img_args(init_image, strength, steps: int, multiple: int, width: int | None = None,
                       height: int | None = None) -> tuple[int, int]:
    """The img2img checks of `Pipeline.check_args` (TinySDError naming the option); returns the output
    (width, height). init_image: a PIL image; strength: None means DEFAULT_STRENGTH; steps: already checked."""
    if init_image is None:
        raise TinySDError("strength is only used with an init image (--init-image)")
    image = as_init_image(init_image)
    start_index(int(steps), check_strength(DEFAULT_STRENGTH if strength is None else strength))
    return init_image_size(image.size, multiple, width, height)
