"""Shared helpers of the quantized-engine tests: the tiny model quantized from the golden fixture's ranges; run
every integer network on fixed inputs and tap its tensors."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tinysd.interp.record import RecordingInterpreter
from tinysd.paths import TOKENIZER_DIR
from tinysd.quant.engine import build_integer_networks
from tinysd.tokenizer import CLIPTokenizer

KINDS = ("text_encoder", "unet", "vae.decode", "vae.encode")
FIXTURES = Path(__file__).parent / "fixtures"


def golden_qmodels(golden: dict) -> dict:
    """{precision: QuantizedModel} of the tiny model (tests/fixtures/tiny-sd) quantized, w8a8 and w8a16, from the
    float64 activation ranges stored in `golden` (tests/fixtures/golden_hashes.json): no float run."""
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import quantize_model

    loaded = load_checkpoint(FIXTURES / "tiny-sd")
    ranges = {net: {t: tuple(v) for t, v in r.items()} for net, r in golden["ranges"].items()}
    return {p: quantize_model(loaded, p, ranges) for p in ("w8a8", "w8a16")}


def integer_tensors(qmodel, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{call kind: [(tensor name, integer codes), ...]} for one call of each network entry point.

    Every op's output and each network output is tapped before dequantization (integer codes).
    Inputs, fixed by `seed`: the text encoder gets two prompts; the UNet a (2, C, 2h, 2w) sample
    (twice the native latent size), t = 501 and the integer text encoder's output as context; the
    VAE decodes a (1, C, h, w) latent and encodes a (1, 3, 16, 16) image.
    """
    te, unet, vae = build_integer_networks(qmodel)
    for net in (te, unet, vae):
        net.interp = RecordingInterpreter(net.interp)
    cfg = qmodel.config
    rng = np.random.default_rng(seed)
    h = cfg.unet.sample_size
    ids = CLIPTokenizer.from_dir(TOKENIZER_DIR)(["a red circle on a white background", ""])  # (2, 77)
    out: dict[str, list] = {}

    def tap(kind, net, fn):
        net.interp.clear()
        fn()
        out[kind] = [(r.tensor, r.output.data if r.output is not None else r.inputs["x"].data)
                     for r in net.interp.records if r.op != "input"]

    context = {}
    tap("text_encoder", te, lambda: context.setdefault("c", te(ids)))
    sample = rng.standard_normal((2, cfg.unet.in_channels, 2 * h, 2 * h)).astype(np.float32)
    tap("unet", unet, lambda: unet(sample, 501, context["c"]))
    latent = rng.standard_normal((1, cfg.vae.latent_channels, h, h)).astype(np.float32)
    tap("vae.decode", vae, lambda: vae.decode(latent))
    image = rng.uniform(-1, 1, (1, cfg.vae.in_channels, 16, 16)).astype(np.float32)
    tap("vae.encode", vae, lambda: vae.encode(image))
    return out


def digests(tensors: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, str]:
    """{call kind: SHA-256 over every tapped tensor's name, dtype, shape and bytes, in order}."""
    result = {}
    for kind, items in tensors.items():
        h = hashlib.sha256()
        for name, a in items:
            assert a.dtype.kind in "iu", f"{name} is {a.dtype}, not integer"
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        result[kind] = h.hexdigest()
    return result
