"""Run the single-layer cases of a golden folder (`tinysd golden --layers ...`) on the HVX kernels.

    from tinysd.golden import GoldenFolder
    from tinysd.hvx import golden, runner
    folder = GoldenFolder("golden/")
    with runner.HvxProcess() as hvx:
        results = golden.check_layer_cases(folder, hvx)
    [r.line() for r in results if not r.ok]

Each layer case is sent as it is stored (inputs, the quantized model's run-time parameters, the
attributes) to the kernel of its op (`tinysd.hvx.ops`), and the HVX output is compared with the
case's expected output element by element.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.norm import NormParams
from . import ops
from .runner import STATUS, HvxProcess

TABLE_OPS = ("silu", "gelu", "quick_gelu")


@dataclass
class CaseResult:
    case: str
    op: str
    size: int
    mismatches: int
    first_index: tuple | None = None  # coordinates in the output (C order)
    hvx_value: int | None = None
    golden_value: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.mismatches == 0

    def line(self) -> str:
        if self.error is not None:
            return f"{self.case} ({self.op}): {self.error}"
        if self.ok:
            return f"{self.case} ({self.op}): {self.size} values equal"
        return (f"{self.case} ({self.op}): {self.mismatches} of {self.size} differ; first at {list(self.first_index)}: "
                f"HVX {self.hvx_value}, golden {self.golden_value}")


def compare(case: str, op: str, got: np.ndarray, want: np.ndarray) -> CaseResult:
    """Element-by-element comparison; the first mismatch as coordinates with both values."""
    if got.shape != want.shape:
        return CaseResult(case, op, want.size, want.size,
                          error=f"HVX shape {list(got.shape)}, golden {list(want.shape)}")
    diff = np.flatnonzero(got.astype(np.int64).reshape(-1) != want.astype(np.int64).reshape(-1))
    if diff.size == 0:
        return CaseResult(case, op, want.size, 0)
    i = int(diff[0])
    return CaseResult(case, op, want.size, int(diff.size), tuple(int(v) for v in np.unravel_index(i, want.shape)),
                      int(got.reshape(-1)[i]), int(want.reshape(-1)[i]))


def case_tensors(folder, case: dict, entries: list[dict] | None = None) -> dict[str, np.ndarray]:
    """The case's tensors by short name (`x`, `weight_q`, `xs.0`, `out`, ...) in engine layout (NCHW).

    entries: the case's tensor entries when the caller has grouped them already (default: searched).
    """
    prefix = f"{case['network']}.{case['layer']}."
    if entries is None:
        entries = [t for t in folder.tensors if t["case"] == case["id"]]
    return {t["name"][len(prefix):]: folder.load(t, engine_layout=True) for t in entries}


def layer_case_call(case: dict, T: dict[str, np.ndarray]) -> ops.Call:
    """The HVX call that recomputes layer case `case` from its tensors `T` (see case_tensors)."""
    op, a = case["op"], case["attrs"]
    s = lambda f: int(np.asarray(T[f]).reshape(-1)[0])  # noqa: E731  per-tensor scalar parameter
    rng = (a["out_zp"], a["qmin"], a["qmax"])
    if op == "conv2d":
        return ops.conv2d_call(T["x"], a["x_zp"], T["weight_q"], T.get("bias_q"), T["multiplier"], T["shift"], *rng,
                               stride=tuple(a["stride"]), padding=tuple(a["padding"]), acc_shift=T["acc_shift"])
    if op == "linear":
        return ops.linear_call(T["x"], a["x_zp"], T["weight_q"], T.get("bias_q"), T["multiplier"], T["shift"], *rng,
                               acc_shift=T["acc_shift"])
    if op == "matmul":
        return ops.matmul_call(T["a"], a["a_zp"], T["b"], a["b_zp"], s("multiplier"), s("shift"), *rng,
                               acc_shift=s("acc_shift"))
    if op == "add":
        return ops.add_call(T["a"], a["a_zp"], s("a_multiplier"), s("a_shift"), T["b"], a["b_zp"], s("b_multiplier"),
                            s("b_shift"), s("multiplier"), s("shift"), *rng, s("left_shift"))
    if op == "mul":
        return ops.mul_call(T["a"], a["a_zp"], T["b"], a["b_zp"], s("multiplier"), s("shift"), *rng,
                            acc_shift=s("acc_shift"))
    if op == "scale":
        return ops.requantize_tensor_call(T["x"], a["x_zp"], s("multiplier"), s("shift"), *rng)
    if op == "concat":
        keys = sorted((k for k in T if k.startswith("xs.")), key=lambda k: int(k.split(".")[1]))
        return ops.concat_call([T[k] for k in keys], [a[f"{k}_zp"] for k in keys], [int(v) for v in T["multipliers"]],
                               [int(v) for v in T["shifts"]], a["axis"], *rng)
    if op == "upsample_nearest2x":
        rq = None if "multiplier" not in T else (a["x_zp"], s("multiplier"), s("shift"), *rng)
        return ops.upsample_nearest2x_call(T["x"], rq)
    if op in TABLE_OPS:
        return ops.table_call(T["x"], T["table"])
    if op == "softmax":
        return ops.softmax_call(T["x"], T["exp_table"], a["bits"], bool(a.get("causal", False)))
    if op in ("layer_norm", "group_norm"):
        p = NormParams(s("eps_fx"), T["gamma_multiplier"], T["gamma_shift"], T["beta_fx"],
                       8 if T["x"].dtype == np.uint8 else 16, a["bits"])
        if op == "layer_norm":
            return ops.layer_norm_call(T["x"], p)
        return ops.group_norm_call(T["x"], int(a["groups"]), p)
    if op == "embedding":
        return ops.embedding_call(T["ids"], T["table_q"])
    raise ValueError(f"{case['id']}: no HVX kernel for op {op!r}")


def check_layer_cases(folder, proc: HvxProcess, cases: list[dict] | None = None) -> list[CaseResult]:
    """Run every layer case of `folder` (or `cases`) in one batch and compare with the expected outputs."""
    cases = [c for c in (folder.cases if cases is None else cases) if c["kind"] == "layer"]
    by_case: dict[str, list[dict]] = {}
    for t in folder.tensors:
        by_case.setdefault(t["case"], []).append(t)
    calls, wants = [], []
    for c in cases:
        T = case_tensors(folder, c, by_case.get(c["id"], []))
        wants.append(T.pop("out"))
        calls.append(layer_case_call(c, T))
    responses = proc.run([c.request for c in calls])
    results = []
    for c, call, resp, want in zip(cases, calls, responses, wants):
        if resp.status != 0:
            results.append(CaseResult(c["id"], c["op"], want.size, want.size,
                                      error=f"HVX status {STATUS.get(resp.status, resp.status)}"))
        else:
            results.append(compare(c["id"], c["op"], call.decode(resp), want))
    return results


def check_network_case(folder, case: dict, qmodel, proc: HvxProcess, on_call=None) -> list[CaseResult]:
    """Run network case `case` (a text encoder, UNet or VAE decoder call) as a chain of HVX kernels.

    The call's recorded integer inputs enter the network (`HvxInterpreter(inputs=...)`); every op
    runs on the HVX program with the quantized model `qmodel`'s parameters (the golden folder's
    model, e.g. `tinysd.quant.folder.load_quantized(path)`), its output feeding the next op. The
    integer output is compared with the case's. on_call(Call): called before every request.
    """
    from ..models import UNet, VAE, TextEncoder
    from ..quant.calibration import model_graphs
    from .interp import HvxInterpreter

    net = case["network"]
    entries = [t for t in folder.tensors if t["case"] == case["id"]]
    T = {t["name"]: folder.load(t, engine_layout=True) for t in entries}
    inputs = {t["name"]: T[t["name"]] for t in entries if t["role"] == "input" and not t["name"].endswith(".ids")}
    interp = HvxInterpreter(qmodel.networks[net], proc, inputs=inputs, on_call=on_call)
    graph = model_graphs(qmodel.config)[net]
    if net == "text_encoder":
        ids = next(a for n, a in T.items() if n.endswith("token_embedding.ids"))
        TextEncoder(graph, interp)(ids)
    elif net == "unet":
        UNet(graph, interp)(np.zeros(T["unet.sample"].shape, np.float32), 0,
                            np.zeros(T["unet.encoder_hidden_states"].shape, np.float32))
    elif net == "vae":
        VAE(graph, interp).decode(np.zeros(T["vae.latent"].shape, np.float32))
    else:
        raise ValueError(f"{case['id']}: unknown network {net!r}")
    return [compare(f"{case['id']}:{t['name']}", net, interp.outputs[t["name"]], T[t["name"]])
            for t in entries if t["role"] == "output"]
