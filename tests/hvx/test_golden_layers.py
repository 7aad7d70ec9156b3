"""Every layer case of the default model (text encoder, UNet step 0, VAE decoder; w8a8 and w8a16) recomputed by
the HVX kernels under qemu-hexagon equals the golden output bit for bit."""
import numpy as np
import pytest

from tinysd.hvx import golden

#: every op kind of the integer networks (tinysd/interp/integer.py) but `scale`, which the default model does not use
#: (tests/hvx/test_kernels.py covers it)
NETWORK_OPS = {"embedding", "linear", "conv2d", "matmul", "group_norm", "layer_norm", "silu", "gelu", "quick_gelu",
               "softmax", "add", "mul", "concat", "upsample_nearest2x"}


@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_every_layer_case_of_the_default_model(default_model_golden, hvx, precision):
    _, folder = default_model_golden[precision]
    cases = [c for c in folder.cases if c["kind"] == "layer"]
    assert {c["network"] for c in cases} == {"text_encoder", "unet", "vae"}
    assert {c["op"] for c in cases} == NETWORK_OPS
    results = golden.check_layer_cases(folder, hvx)
    assert len(results) == len(cases) > 400
    bad = [r.line() for r in results if not r.ok]
    assert not bad, f"{len(bad)} of {len(results)} {precision} layer cases differ:\n" + "\n".join(bad[:30])


def test_a_mismatch_is_reported_with_case_index_and_values():
    want = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got = want.copy()
    got[1, 2, 0] = 200
    got[1, 2, 3] = 201
    r = golden.compare("p000/unet/step000/layers/conv_in", "conv2d", got, want)
    assert not r.ok
    assert r.line() == ("p000/unet/step000/layers/conv_in (conv2d): 2 of 24 differ; first at [1, 2, 0]: "
                        "HVX 200, golden 20")
    assert golden.compare("c", "add", want, want).ok
