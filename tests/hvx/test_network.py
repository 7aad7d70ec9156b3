"""Whole network calls of the default model as chains of HVX kernels under qemu-hexagon, from the golden network
case's integer inputs (HvxInterpreter): the output equals the golden output bit for bit. And the instruction
counts of tinysd.hvx.cost, the first cost model of the kernels."""
import numpy as np
import pytest

from tinysd.hvx import cost, golden, ops
from tinysd.quant.folder import load_quantized


def network_case(folder, network):
    return next(c for c in folder.cases if c["kind"] == "network" and c["network"] == network)


@pytest.mark.parametrize("precision,network", [("w8a8", "text_encoder"), ("w8a16", "text_encoder"),
                                               ("w8a16", "unet")])
def test_network_call_as_a_chain_of_hvx_kernels(default_model_golden, hvx, precision, network):
    model, folder = default_model_golden[precision]
    kinds = set()
    results = golden.check_network_case(folder, network_case(folder, network), load_quantized(model), hvx,
                                        on_call=lambda call: kinds.add(call.what))
    assert results and all(r.ok for r in results), [r.line() for r in results]
    assert results[0].size == {"text_encoder": 2 * 77 * 64, "unet": 2 * 4 * 8 * 8}[network]
    want = {"text_encoder": {"embedding", "add", "layer_norm", "linear", "matmul", "softmax", "table"},
            "unet": {"linear", "table", "conv2d", "group_norm", "add", "layer_norm", "matmul", "softmax", "mul",
                     "concat", "upsample_nearest2x"}}[network]
    assert kinds == want


def test_python_m_tinysd_hvx_runs_layer_and_network_cases(default_model_golden, hvx_exe):
    from click.testing import CliRunner

    from tinysd.hvx.__main__ import main

    model, folder = default_model_golden["w8a8"]
    selected = [c for c in folder.cases if c["id"].startswith("p000/text_encoder")]
    r = CliRunner().invoke(main, [str(folder.path), "--model", str(model), "--cases", "p000/text_encoder*"])
    assert r.exit_code == 0, r.output
    n = len(selected)  # the network case and its layer cases
    assert n > 30 and r.output.strip().splitlines()[-1] == f"{n} cases: {n} equal, 0 differ"
    r = CliRunner().invoke(main, [str(folder.path), "--cases", "nothing*"])
    assert r.exit_code == 2 and "no case" in r.output


SYNTHETIC_LOG = """----------------
IN: op_linear
0x00021000:  0x1c036142\t{\tV2.w += vrmpy(V1.ub,V3.b)
0x00021004:  0x7800c009\t\tR9 = #0x0 }
0x00021008:  0x1c036142\t{\tR1 = add(R1,#0x4)
0x0002100c:  0x1c036142\t\tV0 = vmem(R0+#0x0) }

Trace 0: 0x7f10 [00000000/00021000/00000000/00000200] op_linear
Trace 0: 0x7f10 [00000000/00021000/00000000/00000200] op_linear
----------------
IN: tsd_read
0x00020980:  0x78004023\t{\tR3 = #0x1 }

Trace 0: 0x7f20 [00000000/00020980/00000000/00000200] tsd_read
"""


def test_cost_log_parsing():
    c = cost.parse_log(SYNTHETIC_LOG.splitlines(keepends=True))
    assert c == cost.Cost(hvx=4, packets=4, insns=8)  # the I/O block is not counted


def test_cost_counts_what_executes(hvx_exe):
    """A linear of M rows: every extra row adds the same work, at least its vrmpy (K/4 per 32 outputs)."""
    rng = np.random.default_rng(0)
    k, n_out = 256, 64
    w = rng.integers(-128, 128, (n_out, k)).astype(np.int8)

    def hvx_count(m):
        x = rng.integers(0, 256, (m, k)).astype(np.uint8)
        call = ops.linear_call(x, 7, w, None, np.full(n_out, 2**30), np.full(n_out, -8), 128, 0, 255)
        return cost.measure(hvx_exe, call.request).hvx

    c1, c2, c3 = hvx_count(1), hvx_count(2), hvx_count(3)
    assert c3 - c2 == c2 - c1 >= (k // 4) * (n_out // 32)
