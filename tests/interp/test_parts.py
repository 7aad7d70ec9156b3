"""Ops computed as their parts (docs/arithmetic.md section 4.11): every interpreter, bit for bit.

A model whose encodings name the parts of every op that has them (the Sigmoid of each SiLU and
quick_gelu, every node of each GELU, the normalized value of each norm, the scaled attention
operands, a `requant` step after the resnet adds, an `input` step before three norms, and softmax
outputs at AIMET's [0, 1]) is
calibrated (the calibrating interpreter records the parts) and quantized; its integer networks
then run each such op as the sequence of section 4.11, and every op's output must equal that
sequence recomputed from the op's own input with the plain reference kernels.
"""
import math

import numpy as np
import pytest

from tinysd.interp.integer import IntegerInterpreter, QTensor
from tinysd.interp.parts import PARTS, const_name, part_tensor
from tinysd.interp.trace import trace_network
from tinysd.kernels import reference as R
from tinysd.kernels import set_debug
from tinysd.kernels.norm import NormParams, group_norm_reference, layer_norm_reference
from tinysd.kernels.softmax import softmax_reference
from tinysd.kernels.tables import apply_table_reference
from tinysd.models import TextEncoder, UNet
from tinysd.nn.clip import CLIPTextModel
from tinysd.nn.unet import UNet2DConditionModel
from tinysd.quant.calibration import calibrate_observers, model_graphs, quantize_model, ranges_from_observers
from tinysd.quant.observers import encoding_from_range
from tinysd.quant.prepare import encodings_from_ranges, softmax_row_sum_bound

PROMPTS = ["a red circle"]
#: ops given an `input` part (a reader copy of their input, at half its calibrated range, so that it clips)
INPUT_PARTS = ("mid_block.resnets.0.norm1", "down_blocks.0.attentions.0.transformer_blocks.0.norm2",
               "text_model.encoder.layers.0.layer_norm1")


@pytest.fixture(scope="module")
def tiny():
    from tinysd.checkpoint import load_checkpoint
    from pathlib import Path

    return load_checkpoint(Path(__file__).parents[1] / "fixtures" / "tiny-sd")


def _plan(loaded):
    """Every decomposable op of the UNet's first down block, time embedding and mid block and of the text
    encoder's first layer, as all its parts; `requant` after resnet adds and to_out.0 (every kind of part
    is there; the other ops stay fused, which keeps the 16-bit tables few)."""
    plan = {}
    for net, graph in model_graphs(loaded.config).items():
        ops = {}
        for op in trace_network(graph, net).ops:
            if op.name is None or op.kind == "input" or not op.name.startswith(
                    ("down_blocks.0.", "time_embedding", "mid_block", "text_model.encoder.layers.0", "decoder.mid")):
                continue
            if op.name in INPUT_PARTS:  # a reader copy of the input: with the norm's parts, or fused
                ops[op.name] = ("input",) + (tuple(PARTS[op.kind]) if op.kind == "layer_norm" else ())
            elif op.kind in ("silu", "gelu", "quick_gelu", "group_norm", "layer_norm"):
                ops[op.name] = tuple(PARTS[op.kind])
            elif op.kind == "matmul" and op.attrs["alpha"] != 1.0:
                ops[op.name] = ("product",) if net == "text_encoder" else ("a_scaled", "b_scaled")
            elif (op.kind == "add" and op.name.endswith("resnets.0.add")) or op.name.endswith("to_out.0"):
                ops[op.name] = ("requant",)
        plan[net] = ops
    return plan


@pytest.fixture(scope="module")
def parted(tiny):
    """(plan, {precision: QuantizedModel}) of the tiny model quantized with every part."""
    plan = _plan(tiny)
    obs = calibrate_observers(tiny, PROMPTS, 2, parts=plan)
    ranges = ranges_from_observers(obs, "minmax")
    for net, ops in plan.items():  # the calibration recorded every part
        for op, parts in ops.items():
            for p in parts:
                assert part_tensor(f"{net}.{op}.out", p) in ranges[net], (net, op, p)
    models = {}
    graphs = model_graphs(tiny.config)
    names = {n: {op.tensor for op in trace_network(graphs[n], n).ops if op.tensor} for n in graphs}
    plain = {n: {t: r for t, r in rs.items() if t in names[n]} for n, rs in ranges.items()}
    models["fused w8a8"] = quantize_model(tiny, "w8a8", plain)  # the same calibration, no parts
    for precision, bits in (("w8a8", 8), ("w8a16", 16)):
        encs = {n: encodings_from_ranges(r, precision) for n, r in ranges.items()}
        for n, e in encs.items():  # softmax outputs at AIMET's fixed [0, 1] range
            for t in [t for t in e if t.endswith(".probs.out")]:
                e[t] = encoding_from_range(0.0, 1.0, bits)
            for t in [t for t in e if t.endswith(".input.out")]:
                lo, hi = ranges[n][t]
                e[t] = encoding_from_range(0.5 * lo, 0.5 * hi, bits)
        models[precision] = quantize_model(tiny, precision, encs, follow_softmax=("text_encoder", "unet", "vae"))
    return plan, models


@pytest.fixture(autouse=True)
def no_saturation():
    set_debug(True)
    yield
    set_debug(False)


class Tap:
    """Keeps each named op's arguments and result (QTensors) of an IntegerInterpreter."""

    def __init__(self, inner):
        self.inner, self.calls = inner, {}

    def __getattr__(self, op):
        f = getattr(self.inner, op)
        if op in ("reshape", "transpose", "split", "input", "output", "timestep_features"):  # not named ops
            return f

        def wrapped(*args, **kwargs):
            y = f(*args, **kwargs)
            name = kwargs.get("name") or [v for v in args if isinstance(v, str)][0]
            self.calls[name] = (args, kwargs, y)
            return y

        return wrapped


def _expected(qnet, kind, name, args, kwargs, bits):
    """The section 4.11 sequence for op `name`, recomputed with the reference kernels from its inputs."""
    net, qmax, arr = qnet.network, 2**bits - 1, qnet.arrays
    out = f"{net}.{name}.out"
    zp = lambda t: int(qnet.activations[t].zero_point[0])  # noqa: E731
    a = lambda p, f: arr[f"{name}.{p}.{f}" if p else f"{name}.{f}"]  # noqa: E731
    s = lambda p, f: int(a(p, f)[0])  # noqa: E731
    into = part_tensor(out, "requant") if f"{name}.requant.multiplier" in arr else out
    P = lambda p: into if not p else part_tensor(out, p)  # noqa: E731

    def scale(x, xzp, p):
        return R.requantize_tensor_ref(x, xzp, s(p, "multiplier"), s(p, "shift"), zp(P(p)), 0, qmax)

    def mul(x, xzp, y, yzp, p):
        return R.mul_ref(x, xzp, y, yzp, s(p, "multiplier"), s(p, "shift"), zp(P(p)), 0, qmax, s(p, "acc_shift"))

    def add(x, xzp, y, yzp, p):
        return R.add_ref(x, xzp, s(p, "a_multiplier"), s(p, "a_shift"), y, yzp, s(p, "b_multiplier"), s(p, "b_shift"),
                         s(p, "multiplier"), s(p, "shift"), zp(P(p)), 0, qmax, s(p, "left_shift"))

    def const(p, shape):
        return a(p, "const_q").reshape(shape), zp(const_name(out, p))

    x = args[0]
    if f"{name}.input.multiplier" in arr:  # the reader copy first: x requantized to the `input` part
        x = QTensor(scale(x.data, x.zp, "input"), zp(P("input")), bits, P("input"))
    if kind in ("group_norm", "layer_norm") and f"{name}.norm.eps_fx" not in arr:  # fused, on the input part
        np_ = NormParams(s("", "eps_fx"), a("", "gamma_multiplier"), a("", "gamma_shift"), a("", "beta_fx"), bits,
                         bits)
        y = group_norm_reference(x.data, args[2] if len(args) > 2 else kwargs["groups"], np_) \
            if kind == "group_norm" else layer_norm_reference(x.data, np_)
    elif kind in ("silu", "quick_gelu"):
        g, gzp = (scale(x.data, x.zp, "scaled"), zp(P("scaled"))) if kind == "quick_gelu" else (x.data, x.zp)
        sg = apply_table_reference(g, a("sigmoid", "table"))
        y = mul(x.data, x.zp, sg, zp(P("sigmoid")), "")
    elif kind == "gelu":
        d = scale(x.data, x.zp, "div")
        e = apply_table_reference(d, a("erf", "table"))
        c, czp = const("add", (1,) * e.ndim)
        ad = add(e, zp(P("erf")), c, czp, "add")
        m = mul(x.data, x.zp, ad, zp(P("add")), "mul")
        y = scale(m, zp(P("mul")), "")
    elif kind in ("group_norm", "layer_norm"):
        np_ = NormParams(s("norm", "eps_fx"), a("norm", "gamma_multiplier"), a("norm", "gamma_shift"),
                         a("norm", "beta_fx"), bits, bits)
        if kind == "group_norm":
            n = group_norm_reference(x.data, args[2] if len(args) > 2 else kwargs["groups"], np_)
            shape = (x.shape[1],) + (1,) * (x.data.ndim - 2)
        else:
            n = layer_norm_reference(x.data, np_)
            shape = (x.shape[-1],)
        g, gzp = const("mul", shape)
        m = mul(n, zp(P("norm")), g, gzp, "mul")
        b, bzp = const("", shape)
        y = add(m, zp(P("mul")), b, bzp, "")
    elif kind == "matmul":
        b_ = args[1]
        if f"{name}.product.multiplier" in arr:
            p = R.matmul_ref(x.data, x.zp, b_.data, b_.zp, s("product", "multiplier"), s("product", "shift"),
                             zp(P("product")), 0, qmax, s("product", "acc_shift"))
            y = scale(p, zp(P("product")), "")
        else:
            xa = scale(x.data, x.zp, "a_scaled")
            xb = scale(b_.data, b_.zp, "b_scaled")
            y = R.matmul_ref(xa, zp(P("a_scaled")), xb, zp(P("b_scaled")), s("", "multiplier"), s("", "shift"),
                             zp(into), 0, qmax, s("", "acc_shift"))
    elif kind == "softmax":
        y16 = softmax_reference(x.data, a("", "exp_table"), 16, causal=kwargs.get("causal", False))
        y = R.requantize_tensor_ref(y16, 0, s("", "multiplier"), s("", "shift"), zp(out), 0, qmax)
        assert f"{name}.requant.multiplier" not in arr
    else:
        return None
    if into != out:
        y = R.requantize_tensor_ref(y, zp(into), s("requant", "multiplier"), s("requant", "shift"), zp(out), 0, qmax)
    return y


@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_parts_equal_the_reference_sequence(tiny, parted, precision):
    plan, models = parted
    qm = models[precision]
    bits = 8 if precision == "w8a8" else 16
    rng = np.random.default_rng(7)
    checked = set()
    for net, run in (("unet", lambda t: UNet(UNet2DConditionModel(tiny.config.unet), t)(
                         rng.standard_normal((2, 4, 8, 8)).astype(np.float32), 321,
                         rng.standard_normal((2, 5, 8)).astype(np.float32))),
                     ("text_encoder", lambda t: TextEncoder(CLIPTextModel(tiny.config.text_encoder), t)(
                         rng.integers(0, 1000, (2, 7))))):
        qnet = qm.networks[net]
        tap = Tap(IntegerInterpreter(qnet))
        run(tap)
        kinds = {op.name: op.kind for op in trace_network(model_graphs(tiny.config)[net], net).ops if op.name}
        for name, (args, kwargs, y) in tap.calls.items():
            kind = kinds[name]
            if name not in plan[net] and kind != "softmax":
                continue
            if plan[net].get(name) == ("requant",):  # a plain op, then the requant step
                assert y.enc == f"{net}.{name}.out" and f"{name}.requant.multiplier" in qnet.arrays
                checked.add(("requant", net))
                continue
            want = _expected(qnet, kind, name, args, kwargs, bits)
            assert isinstance(y, QTensor) and y.enc == f"{net}.{name}.out"
            np.testing.assert_array_equal(y.data, want, err_msg=f"{net}.{name}")
            checked.add((kind, net))
            if f"{name}.input.multiplier" in qnet.arrays:
                checked.add(("input", net))
    assert {k for k, _ in checked} >= {"silu", "gelu", "quick_gelu", "group_norm", "layer_norm", "matmul", "softmax",
                                         "requant", "input"}


def test_parts_keep_accuracy(tiny, parted):
    """Parts add quantization points; the w8a8 UNet with them stays within a few dB of the same UNet run
    fused, both against float on the same input (the text encoder's own context)."""
    from tinysd.models import UNet as FloatUNet
    from tinysd.quant.calibration import sqnr_db
    from tinysd.quant.engine import build_integer_networks
    from tinysd.tokenizer import CLIPTokenizer
    from tinysd.paths import TOKENIZER_DIR
    from tinysd.models import TextEncoder as FloatTE

    plan, models = parted
    ids = CLIPTokenizer.from_dir(TOKENIZER_DIR)(["a red circle", ""])
    ctx = FloatTE.from_params(tiny.config.text_encoder, tiny.params["text_encoder"])(ids)
    sample = np.random.default_rng(8).standard_normal((2, 4, 8, 8)).astype(np.float32)
    ref = FloatUNet.from_params(tiny.config.unet, tiny.params["unet"])(sample, 500, ctx)
    db = {k: sqnr_db(ref, build_integer_networks(m)[1](sample, 500, ctx)) for k, m in
          (("parts", models["w8a8"]), ("fused", models["fused w8a8"]))}
    assert db["parts"] > db["fused"] - 3.0, db


@pytest.mark.parametrize("bits", [8, 16])
def test_softmax_row_sum_bound_with_a_given_encoding(bits):
    """The probs @ v budget of a softmax requantized to a given encoding (zero point 0): every row's codes
    sum to at most softmax_row_sum_bound(bits, T, scale) (section 4.11), on random, tied and one-hot rows."""
    from tinysd.kernels.softmax import make_exp_table
    from tinysd.quant.prepare import multipliers

    rng = np.random.default_rng(1)
    qmax = 2**bits - 1
    scale = 1.0 / qmax  # AIMET's [0, 1]
    m, s = multipliers(2.0**-16 / scale, "test")
    for in_scale in (0.05, 0.5):
        table = make_exp_table(in_scale, bits)
        for t in (1, 7, 300):
            rows = [rng.integers(0, qmax + 1, (50, t)), np.full((3, t), 9), np.eye(t, dtype=np.int64)[:3] * qmax]
            for x in rows:
                x = x.astype(np.uint8 if bits == 8 else np.uint16)
                y16 = softmax_reference(x, table, 16)
                y = R.requantize_tensor_ref(y16, 0, int(m[0]), int(s[0]), 0, 0, qmax).astype(np.int64)
                assert y.sum(axis=-1).max() <= softmax_row_sum_bound(bits, t, scale)
                assert math.isclose(y.sum(axis=-1).mean() * scale, 1.0, abs_tol=t * scale)


def test_ops_with_parts_have_no_layer_case(parted):
    """golden: an op run as its parts (an `input` step included) is a sequence of kernels: no layer case."""
    from tinysd.golden.cases import ops_with_parts, runs_as_parts
    from tinysd.interp.record import OpRecord

    _, models = parted
    parted = ops_with_parts(models["w8a16"].networks["unet"])
    rec = lambda op, name: OpRecord(op, name, f"unet.{name}.out", {}, None)  # noqa: E731
    assert runs_as_parts(rec("group_norm", "mid_block.resnets.0.norm1"), parted)  # input step, fused norm
    assert runs_as_parts(rec("silu", "down_blocks.0.resnets.0.act1"), parted)  # sigmoid part
    assert not runs_as_parts(rec("conv2d", "down_blocks.0.resnets.0.conv1"), parted)
    assert not runs_as_parts(rec("group_norm", "up_blocks.0.resnets.0.norm1"), parted)
