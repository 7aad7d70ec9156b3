"""AdaRound: learned up/down rounding of int8 weights (Nagel et al. 2020, "Up or Down? Adaptive Rounding").

Per linear / conv2d layer with float weight W (OUT, K) (a conv's weight flattened to (OUT, C*KH*KW))
and the per-output-channel scale s (OUT,) of `tinysd.quant.weights.quantize_weight` (unchanged: AdaRound
only decides, per weight, between floor(W/s) and floor(W/s) + 1):

    h(V)    = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)          rectified sigmoid, zeta 1.1, gamma -0.1
    W_soft  = s * clip(floor(W/s) + h(V), -128, 127)
    recon   = mean over the N sampled inputs x of sum over channels of ((W_soft - W) x)^2
            = sum_o D_o G D_o^T,  D = W_soft - W,  G = X X^T / N  (X (K, N) the sampled input columns)
    reg     = sum over weights of 1 - |2 h(V) - 1|^beta                  (0 during the warm start)
    loss    = recon + lambda * reg

V starts where h(V) = frac(W/s) (so W_soft = W up to the clip); Adam minimises the loss for
`iterations` steps with the full batch of sampled columns; beta is 0-weighted for the first
`warm_start` fraction of the steps, then decays from `beta_start` to `beta_end` on AIMET's cosine
schedule (beta = end + (start - end) (1 + cos(pi t')) / 2, t' the fraction of the annealing steps
done). The result is the hard rounding q = clip(floor(W/s) + [V >= 0], -128, 127) (int8), so every
weight ends at floor or floor + 1 of W/s: at most one step from round-to-nearest. The defaults are
AIMET's (`aimet_torch` AdaroundParameters: reg_param 0.01, beta_range (20, 2), warm_start 0.2, Adam)
except the iteration count and learning rate (AIMET: 10000 steps at 1e-3; here 1000 at 1e-2 by default:
the same total movement of V in a tenth of the steps).

Layer inputs (`AdaRoundSettings.inputs`): "float" (the default) takes them from the float network on
the calibration data (`sample_layer_inputs`: every recorded call of the calibration run is replayed
through a float interpreter that samples input columns of each linear / conv2d layer), so every layer
is optimised independently of the others, in one pass over the data, against the float layer's own
output, as in the paper. "quantized" (`adaround_network_sequential`, AIMET's way) fits the layers one
after the other in run order, each on its input in the network whose earlier layers already carry
their AdaRounded weights (float activations), against the float layer's output on the float network's
input: one replay of the calibration data per layer, and each layer compensates the rounding of the
ones before it (docs/quantization.md section 11.2: 46.8 dB against float inputs' 43.3 dB and AIMET's
45.7 dB on the shipped model's w8a16 UNet). A layer with
K <= 2 samples inputs keeps only G (summed while sampling, float64); a wider one keeps its columns
and computes (D X) X^T / N each step (`adaround_layer` takes either).

Determinism: the column samples come from a generator seeded by (seed, crc32(layer name), call
index); everything after sampling is float64 NumPy with one fixed sequence of operations (the
matrix products are OpenBLAS GEMMs, which split work over output blocks, not the reduction, so their
result does not depend on the thread count; `tests/quant/test_adaround.py` asserts equal int8 weights
with 1 and 2 threads).
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import TinySDError
from ..interp.float import FloatInterpreter, _pad4
from .weights import quantize_weight

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1
QMIN, QMAX = -128, 127
WEIGHT_METHODS = ("nearest", "adaround")
INPUT_MODES = ("float", "quantized")
FLOAT_COLUMNS_BYTES = 1 << 30  # inputs="quantized": keep the float network's sampled columns up to this size


@dataclass(frozen=True)
class AdaRoundSettings:
    """The knobs of AdaRound (module docstring); `asdict` of it is what quantization.json records."""

    iterations: int = 1000  # Adam steps per layer
    samples: int = 2048  # input columns (conv: im2col columns) sampled per layer
    reg_weight: float = 0.01  # lambda
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2  # fraction of the steps without the regularizer
    lr: float = 1e-2
    seed: int = 0
    inputs: str = "float"  # layer inputs: "float" network, or "quantized" (AdaRounded-so-far weights; AIMET's)
    calls: int = 0  # at most this many recorded calls per call kind, evenly spaced (0: all)

    def check(self) -> "AdaRoundSettings":
        for name in ("iterations", "samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TinySDError(f"AdaRound {name} must be an integer >= 1 (got {v!r})")
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 0:
            raise TinySDError(f"AdaRound calls must be an integer >= 0 (got {self.calls!r})")
        for name in ("reg_weight", "lr", "beta_start", "beta_end"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise TinySDError(f"AdaRound {name} must be a finite number >= 0 (got {v!r})")
        if self.inputs not in INPUT_MODES:
            raise TinySDError(f"AdaRound inputs must be one of {', '.join(INPUT_MODES)} (got {self.inputs!r})")
        if not 0 <= self.warm_start < 1:
            raise TinySDError(f"AdaRound warm_start must be in [0, 1) (got {self.warm_start!r})")
        return self

    def record(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# the optimisation of one layer
# ---------------------------------------------------------------------------------------------
def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), float64."""
    return np.clip(_sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow for large |v|


def initial_v(frac: np.ndarray) -> np.ndarray:
    """V with h(V) = frac (frac in [0, 1)): the logit of (frac - gamma) / (zeta - gamma)."""
    p = (frac - GAMMA) / (ZETA - GAMMA)
    return np.log(p) - np.log1p(-p)


def beta_at(step: int, settings: AdaRoundSettings) -> float | None:
    """The regularizer's beta at Adam step `step` (0-based); None during the warm start."""
    warm = int(settings.warm_start * settings.iterations)
    if step < warm:
        return None
    span = max(settings.iterations - warm, 1)
    t = (step - warm) / span
    return settings.beta_end + 0.5 * (settings.beta_start - settings.beta_end) * (1.0 + math.cos(math.pi * t))


def reconstruction_error(w: np.ndarray, w_hat: np.ndarray, x: np.ndarray) -> float:
    """mean over columns of sum over channels of ((w_hat - w) x)^2: w, w_hat (OUT, K), x (K, N); float64."""
    d = (np.asarray(w_hat, np.float64) - np.asarray(w, np.float64)) @ np.asarray(x, np.float64)  # (OUT, N)
    return float(np.sum(d * d) / x.shape[1])


@dataclass
class LayerResult:
    """q int8 (OUT, K) the hard rounding; the reconstruction error of nearest and AdaRound rounding on the
    sampled columns; `soft` the fraction of weights whose h(V) was not exactly 0 or 1 at the end; `flipped`
    the fraction that differ from round-to-nearest."""

    q: np.ndarray
    error_nearest: float
    error_adaround: float
    soft: float
    flipped: float


def adaround_layer(w, scale, x=None, settings: AdaRoundSettings = AdaRoundSettings(), gram=None, dx=None,
                   gram_dq=None, gram_dd=None) -> LayerResult:
    """AdaRound of one layer (module docstring). w (OUT, K) float weights, scale (OUT,) > 0 the per-channel
    scale, and either x (K, N) sampled input columns or gram = X X^T / N (K, K) of them (float64). Returns
    LayerResult (q int8 (OUT, K) in [-128, 127]; errors on the same columns).

    Inputs from a quantized network (`inputs="quantized"`, AIMET's reconstruction): x are the quantized
    network's input columns X_q and the target is the float layer on the float network's columns
    X_f = X_q + dX at the same positions, so the reconstruction term is mean over columns of
    sum over channels ((W_soft X_q - W X_f)^2) = ((D X_q - W dX)^2), D = W_soft - W. Give dx (K, N) with x,
    or with gram (= X_q X_q^T / N) gram_dq = dX X_q^T / N and gram_dd = dX dX^T / N (K, K). Then the
    gradient in W_soft is 2 (D G - W G_dq) and the error tr(D G D^T) - 2 tr(D (W G_dq)^T) + tr(W G_dd W^T).
    Without dx / gram_dq (dX = 0) this is the float-input reconstruction above, computed as before."""
    w = np.asarray(w, np.float64)
    s = np.asarray(scale, np.float64).reshape(-1, 1)  # (OUT, 1)
    if (x is None) == (gram is None):
        raise ValueError("adaround_layer: give either x or gram")
    if (dx is not None and x is None) or ((gram_dq is None) != (gram_dd is None)) or (
            gram_dq is not None and gram is None):
        raise ValueError("adaround_layer: dx goes with x, gram_dq and gram_dd with gram")
    xd = None  # dX (K, N) when the columns are kept
    if gram is not None:
        g = np.asarray(gram, np.float64)
        k = g.shape[0]
        if g.shape != (k, k):
            raise ValueError(f"adaround_layer: gram must be square, got {g.shape}")
        gdq = None if gram_dq is None else np.asarray(gram_dq, np.float64)
        gdd = None if gram_dd is None else np.asarray(gram_dd, np.float64)
    else:
        x = np.asarray(x, np.float64)
        if x.ndim != 2:
            raise ValueError(f"adaround_layer: x must be (K, N), got {x.shape}")
        n, k = x.shape[1], x.shape[0]
        xd = None if dx is None else np.asarray(dx, np.float64)
        if xd is not None and xd.shape != x.shape:
            raise ValueError(f"adaround_layer: dx {xd.shape} must have the shape of x {x.shape}")
        # G = X X^T / N (K, K) once, or (D X) X^T / N every step when N < K (cheaper then)
        g = x @ x.T / n if n >= k else None
        gdq = gdd = None
        if xd is not None and g is not None:
            gdq, gdd, xd = xd @ x.T / n, xd @ xd.T / n, None
    if w.ndim != 2 or s.shape[0] != w.shape[0] or w.shape[1] != k:
        raise ValueError(f"adaround_layer: shapes w {w.shape}, scale {np.shape(scale)}, inputs ({k}, ...) do not fit")
    r = None if gdq is None else w @ gdq  # (OUT, K): W G_dq
    wdx = None if xd is None else w @ xd  # (OUT, N): W dX

    def times_g(a):  # a (OUT, K) -> a G
        return a @ g if g is not None else (a @ x) @ x.T / n

    def recon_grad(d):  # half the gradient of the reconstruction term in W_soft, (OUT, K)
        if r is not None:
            return d @ g - r
        if wdx is not None:
            return (d @ x - wdx) @ x.T / n
        return times_g(d)

    def error(q):  # the reconstruction term at W_soft = q s
        d = q * s - w
        if r is not None:
            return float(np.sum((d @ g) * d) - 2.0 * np.sum(d * r) + np.sum((w @ gdd) * w))
        if wdx is not None:
            e = d @ x - wdx
            return float(np.sum(e * e) / n)
        return float(np.sum(times_g(d) * d))

    ws = w / s
    floor = np.floor(ws)
    frac = ws - floor
    # round half away from zero, as quantize_weight
    nearest = np.clip(np.where(ws >= 0, np.floor(ws + 0.5), np.ceil(ws - 0.5)), QMIN, QMAX)
    v = initial_v(frac)
    m1 = np.zeros_like(v)
    m2 = np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(settings.iterations):
        sig = _sigmoid(v)
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(h_raw, 0.0, 1.0)
        grid = floor + h
        w_soft = np.clip(grid, QMIN, QMAX) * s
        d = w_soft - w  # (OUT, K)
        grad_h = 2.0 * recon_grad(d) * s * ((grid >= QMIN) & (grid <= QMAX))
        beta = beta_at(step, settings)
        if beta is not None and settings.reg_weight > 0:
            u = 2.0 * h - 1.0
            grad_h = grad_h - settings.reg_weight * 2.0 * beta * np.sign(u) * np.abs(u) ** (beta - 1.0)
        grad_v = grad_h * (ZETA - GAMMA) * sig * (1.0 - sig) * ((h_raw > 0.0) & (h_raw < 1.0))
        m1 = b1 * m1 + (1.0 - b1) * grad_v
        m2 = b2 * m2 + (1.0 - b2) * grad_v * grad_v
        t = step + 1
        v = v - settings.lr * (m1 / (1.0 - b1**t)) / (np.sqrt(m2 / (1.0 - b2**t)) + eps)
    h = rectified_sigmoid(v)
    q = np.clip(floor + (v >= 0.0), QMIN, QMAX)
    return LayerResult(q=q.astype(np.int8), error_nearest=error(nearest), error_adaround=error(q),
                       soft=float(np.mean((h > 0.0) & (h < 1.0))), flipped=float(np.mean(q != nearest)))


# ---------------------------------------------------------------------------------------------
# sampling layer inputs
# ---------------------------------------------------------------------------------------------
def calls_by_kind(calls, network: str, cap: int = 0) -> dict[str, list]:
    """{call kind: the recorded calls of `network` of that kind, in order}; with cap > 0 at most cap of them per
    kind, evenly spaced: every ceil(n / cap)-th from the first."""
    kinds: dict[str, list] = {}
    for c in calls:
        if c.kind.split(".")[0] == network:
            kinds.setdefault(c.kind, []).append(c)
    if cap > 0:
        kinds = {k: cs[::-(-len(cs) // cap)] for k, cs in kinds.items()}
    return kinds


class ColumnSampler(FloatInterpreter):
    """FloatInterpreter (arithmetic unchanged) that samples `per_call` input columns of every linear / conv2d
    layer per call (conv: the im2col columns of random output positions, in the weight's (c, kh, kw) order,
    zero padding; linear: rows of the input). A layer with K <= `gram_max_k` inputs keeps only the sum of
    x x^T (`gram_sum[name]`, float64 (K, K), summed call by call in call order) and the column count
    (`counts[name]`); the others keep the columns, `columns[name]`, a list of (K, n) float32 arrays."""

    def __init__(self, params: Mapping[str, np.ndarray], network: str, per_call: int, seed: int = 0,
                 layers: Sequence[str] | None = None, gram_max_k: int = 0):
        super().__init__(params, network)
        self.per_call, self.seed, self.gram_max_k = int(per_call), int(seed), int(gram_max_k)
        self.layers = None if layers is None else set(layers)
        self.columns: dict[str, list[np.ndarray]] = {}
        self.gram_sum: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self._calls: dict[str, int] = {}

    def _rng(self, name: str) -> np.random.Generator:
        i = self._calls.get(name, 0)
        self._calls[name] = i + 1
        return np.random.default_rng([self.seed, zlib.crc32(name.encode()), i])

    def _keep(self, name: str) -> bool:
        return self.layers is None or name in self.layers

    def _store(self, name: str, cols: np.ndarray) -> None:  # cols (K, n) float32
        self.counts[name] = self.counts.get(name, 0) + cols.shape[1]
        if cols.shape[0] <= self.gram_max_k:
            c = cols.astype(np.float64)
            g = c @ c.T
            if name in self.gram_sum:
                self.gram_sum[name] += g
            else:
                self.gram_sum[name] = g
        else:
            self.columns.setdefault(name, []).append(cols)

    def sample_linear(self, x: np.ndarray, name: str) -> None:
        """Sample rows of the input x (..., IN) of linear `name` (no forward)."""
        if self._keep(name):
            rows = x.reshape(-1, x.shape[-1])  # (M, IN)
            pick = self._rng(name).choice(rows.shape[0], size=min(self.per_call, rows.shape[0]), replace=False)
            self._store(name, np.ascontiguousarray(rows[np.sort(pick)].T, np.float32))

    def sample_conv2d(self, x: np.ndarray, name: str, stride=1, padding=0) -> None:
        """Sample im2col columns of the input x (N, C, H, W) of conv2d `name` (no forward)."""
        if self._keep(name):
            _, _, kh, kw = np.shape(self.param(f"{name}.weight"))
            top, bottom, left, right = _pad4(padding)
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
            win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, KH, KW)
            n, c, ho, wo = win.shape[:4]
            total = n * ho * wo
            pick = np.sort(self._rng(name).choice(total, size=min(self.per_call, total), replace=False))
            i, rest = np.divmod(pick, ho * wo)
            r, q = np.divmod(rest, wo)
            cols = win[i, :, r, q]  # (n_pick, C, KH, KW)
            self._store(name, np.ascontiguousarray(cols.reshape(len(pick), -1).T, np.float32))

    def linear(self, x, name):
        self.sample_linear(x, name)
        return super().linear(x, name)

    def conv2d(self, x, name, stride=1, padding=0):
        self.sample_conv2d(x, name, stride, padding)
        return super().conv2d(x, name, stride, padding)

    def inputs(self) -> dict[str, dict]:
        """{layer: {"gram": X X^T / N} or {"x": X (K, N) float32}}, what `adaround_layer` takes."""
        out = {name: {"gram": g / self.counts[name]} for name, g in self.gram_sum.items()}
        out.update({name: {"x": np.concatenate(cols, axis=1)} for name, cols in self.columns.items()})
        return out


def sample_layer_inputs(loaded, calls, network: str, settings: AdaRoundSettings) -> dict[str, dict]:
    """{layer name: {"gram": G} or {"x": X}} (`ColumnSampler.inputs`) of every linear / conv2d layer of
    `network`, from its recorded float calls (`NetworkCall`s of the calibration run) replayed through a
    float interpreter. Each call contributes up to ceil(samples / calls of its kind) columns per layer
    (fewer when the layer's input has fewer positions). Layers with K <= 2 samples keep G = X X^T / N
    (no more memory than the columns), the others the columns."""
    from ..models import VAE, TextEncoder, UNet
    from .calibration import model_graphs

    graph = model_graphs(loaded.config)[network]
    wrapper = {"text_encoder": TextEncoder, "unet": UNet, "vae": VAE}[network]
    kinds = calls_by_kind(calls, network, settings.calls)
    sampler = ColumnSampler(loaded.params[network], network, 1, settings.seed, gram_max_k=2 * settings.samples)
    net = wrapper(graph, sampler)
    for kind, cs in kinds.items():
        sampler.per_call = -(-settings.samples // len(cs))
        fn = net.decode if kind == "vae.decode" else net.encode if kind == "vae.encode" else net
        for c in cs:
            fn(*c.args, **c.kwargs)
    return sampler.inputs()


# ---------------------------------------------------------------------------------------------
# inputs from the AdaRounded-so-far network (AIMET's way)
# ---------------------------------------------------------------------------------------------
class _Reached(Exception):
    """Raised by `_LayerSampler` once its layer's input is sampled: nothing after it is needed."""


class _LayerOrder(FloatInterpreter):
    """FloatInterpreter that records the names of the linear / conv2d layers in the order they run."""

    def __init__(self, params, network):
        super().__init__(params, network)
        self.order: list[str] = []

    def linear(self, x, name):
        self.order.append(name)
        return super().linear(x, name)

    def conv2d(self, x, name, stride=1, padding=0):
        self.order.append(name)
        return super().conv2d(x, name, stride, padding)


class _LayerSampler(ColumnSampler):
    """ColumnSampler of one layer (`layers=[target]`, columns kept) that stops the call (raises _Reached)
    right after sampling the target's input: the layers after it do not change that input."""

    def __init__(self, params, network, per_call, seed, target):
        super().__init__(params, network, per_call, seed, layers=[target], gram_max_k=0)
        self.target = target

    def linear(self, x, name):
        self.sample_linear(x, name)
        if name == self.target:
            raise _Reached
        return FloatInterpreter.linear(self, x, name)

    def conv2d(self, x, name, stride=1, padding=0):
        self.sample_conv2d(x, name, stride, padding)
        if name == self.target:
            raise _Reached
        return FloatInterpreter.conv2d(self, x, name, stride, padding)


def _call_fns(net, kind):
    return net.decode if kind == "vae.decode" else net.encode if kind == "vae.encode" else net


def _layer_done(stats: dict, name: str, key: str, res, progress, i: int, total: int) -> None:
    """Keep layer `name`'s result (without its codes) in stats, log it, report progress(i + 1, total)."""
    res.q = None
    stats[name] = res
    log.debug("%s: reconstruction %.4g -> %.4g, %.1f%% flipped, %.2f%% soft", key, res.error_nearest,
              res.error_adaround, 100 * res.flipped, 100 * res.soft)
    if progress is not None:
        progress(i + 1, total)


def _log_summary(stats: dict, network: str, what: str, t0: float) -> None:
    if stats:
        better = sum(r.error_adaround <= r.error_nearest for r in stats.values())
        log.info("%s: %s of %d layers in %.1f s; reconstruction error below nearest's in %d", network, what,
                 len(stats), time.perf_counter() - t0, better)


def adaround_network_sequential(loaded, calls, network: str, settings: AdaRoundSettings,
                                progress: Callable[[int, int], None] | None = None):
    """AdaRound of every linear / conv2d layer of `network` on inputs from the AdaRounded-so-far network
    (`inputs="quantized"`; AIMET 2.42's `Adaround.apply_adaround`): layers in the order they run (per call
    kind: text_encoder, unet, vae.decode, vae.encode), each fitted on its input in a float network whose
    earlier layers already have their AdaRounded weights q * scale (float activations: AIMET disables the
    activation quantizers while it AdaRounds), against the float layer's output on the float network's
    input at the same positions (`adaround_layer` with dx / gram_dq, gram_dd). For each layer the recorded
    calls of its kind are replayed through the AdaRounded-so-far network up to that layer only (the float
    network's columns come from one replay per kind when they fit in FLOAT_COLUMNS_BYTES, else from a
    second replay per layer); each call contributes ceil(samples / calls) positions per layer, the same in both (one
    generator seeded by (seed, crc32(layer), call index)). Returns what `adaround_network` returns."""
    from ..models import VAE, TextEncoder, UNet
    from .calibration import model_graphs

    graph = model_graphs(loaded.config)[network]
    wrapper = {"text_encoder": TextEncoder, "unet": UNet, "vae": VAE}[network]
    params = loaded.params[network]
    kinds = calls_by_kind(calls, network, settings.calls)
    order: list[tuple[str, str]] = []  # (kind, layer) in run order; a layer once, at its first kind
    seen: set[str] = set()
    for kind, cs in kinds.items():
        rec = _LayerOrder(params, network)
        _call_fns(wrapper(graph, rec), kind)(*cs[0].args, **cs[0].kwargs)
        for name in rec.order:
            if name not in seen and f"{name}.weight" in params:
                seen.add(name)
                order.append((kind, name))
    # The float network's columns do not change from layer to layer: sampled in one replay per kind (the same
    # positions as a per-layer replay: same generators) when they fit in FLOAT_COLUMNS_BYTES, else per layer.
    float_cols: dict[str, list[np.ndarray]] = {}
    need = sum(-(-settings.samples // len(kinds[kind])) * len(kinds[kind]) * 4
               * int(np.prod(np.shape(params[f"{name}.weight"])[1:])) for kind, name in order)
    if need <= FLOAT_COLUMNS_BYTES:
        for kind, cs in kinds.items():
            fs = ColumnSampler(params, network, -(-settings.samples // len(cs)), settings.seed,
                               layers=[n for k, n in order if k == kind], gram_max_k=0)
            fn = _call_fns(wrapper(graph, fs), kind)
            for c in cs:
                fn(*c.args, **c.kwargs)
            float_cols.update(fs.columns)
    current = dict(params)  # the AdaRounded-so-far network's parameters
    out, stats = {}, {}
    t0 = time.perf_counter()
    for i, (kind, name) in enumerate(order):
        cs = kinds[kind]
        per_call = -(-settings.samples // len(cs))
        cached = float_cols.pop(name, None)
        if cached is not None and len(cached) != len(cs):  # a layer run more than once per call: replay instead
            cached = None
        fs = _LayerSampler(params, network, per_call, settings.seed, name)
        qs = _LayerSampler(current, network, per_call, settings.seed, name)
        fnet, qnet = _call_fns(wrapper(graph, fs), kind), _call_fns(wrapper(graph, qs), kind)
        gq = gdq = gdd = None
        xq_cols, dx_cols, count = [], [], 0
        for j, c in enumerate(cs):
            for fn in (qnet,) if cached is not None else (fnet, qnet):
                try:
                    fn(*c.args, **c.kwargs)
                except _Reached:
                    pass
            xf = (cached[j] if cached is not None else fs.columns.pop(name)[0]).astype(np.float64)  # (K, n) float
            xq = qs.columns.pop(name)[0].astype(np.float64)  # (K, n) the same positions, AdaRounded-so-far
            d = xf - xq
            count += xq.shape[1]
            if xq.shape[0] <= 2 * settings.samples:
                if gq is None:
                    gq, gdq, gdd = xq @ xq.T, d @ xq.T, d @ d.T
                else:
                    gq += xq @ xq.T
                    gdq += d @ xq.T
                    gdd += d @ d.T
            else:
                xq_cols.append(xq)
                dx_cols.append(d)
        w = np.asarray(params[f"{name}.weight"])
        key = f"{network}.{name}.weight"
        _, enc = quantize_weight(w, axis=0, name=key)
        data = (dict(gram=gq / count, gram_dq=gdq / count, gram_dd=gdd / count) if gq is not None
                else dict(x=np.concatenate(xq_cols, axis=1), dx=np.concatenate(dx_cols, axis=1)))
        res = adaround_layer(w.reshape(w.shape[0], -1), np.broadcast_to(enc.scale, (w.shape[0],)),
                             settings=settings, **data)
        q = res.q.reshape(w.shape)
        out[key] = (q, enc)
        shape = (-1,) + (1,) * (q.ndim - 1)
        current[f"{name}.weight"] = (q.astype(np.float64)
                                     * np.asarray(enc.scale, np.float64).reshape(shape)).astype(np.float32)
        _layer_done(stats, name, key, res, progress, i, len(order))
    _log_summary(stats, network, "AdaRound (AdaRounded-so-far inputs)", t0)
    return out, stats


# ---------------------------------------------------------------------------------------------
# a whole network
# ---------------------------------------------------------------------------------------------
def adaround_network(params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray], network: str,
                     settings: AdaRoundSettings, progress: Callable[[int, int], None] | None = None):
    """AdaRound every layer of `inputs` ({layer: {"x": X} or {"gram": G}}, `sample_layer_inputs`).

    Returns ({`{network}.{layer}.weight`: (q int8 of the weight's shape, Encoding)}, {layer: LayerResult
    without q}) with each Encoding the one `quantize_weight` gives the float weight (the scale is unchanged).
    progress(done, total) after every layer.
    """
    out, stats = {}, {}
    names = sorted(inputs)
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        w = np.asarray(params[f"{name}.weight"])
        key = f"{network}.{name}.weight"
        _, enc = quantize_weight(w, axis=0, name=key)
        res = adaround_layer(w.reshape(w.shape[0], -1), np.broadcast_to(enc.scale, (w.shape[0],)),
                             settings=settings, **inputs[name])
        out[key] = (res.q.reshape(w.shape), enc)
        _layer_done(stats, name, key, res, progress, i, len(names))
    _log_summary(stats, network, "AdaRound", t0)
    return out, stats


def adarounded_params(params: Mapping[str, np.ndarray], codes: Mapping[str, tuple], network: str):
    """(params, param encodings) to quantize `network` with: each AdaRounded weight replaced by its
    dequantized value q * scale (float32; quantizing it again with its encoding gives q exactly, since
    |q| <= 128 keeps q (1 + 2**-24) within 0.5 of q) and {`{network}.{layer}.weight`: Encoding} -- what
    AIMET's AdaRound exports too: the changed weights and frozen parameter encodings."""
    new = dict(params)
    encs = {}
    prefix = f"{network}."
    for key, (q, enc) in codes.items():
        name = key[len(prefix):]
        shape = (-1,) + (1,) * (q.ndim - 1)
        new[name] = (q.astype(np.float64) * np.asarray(enc.scale, np.float64).reshape(shape)).astype(np.float32)
        encs[key] = enc
    return new, encs


# ---------------------------------------------------------------------------------------------
# export for AIMET-style tools
# ---------------------------------------------------------------------------------------------
def dequantized_weights(qmodel) -> dict[str, np.ndarray]:
    """{`{network}.{layer}.weight`: float32 q * scale} of every int8 linear / conv2d weight of a `QuantizedModel`
    (e.g. `load_quantized(folder)`), scale the weight's parameter encoding (per output channel, axis 0).

    With the folder's encodings.json (its parameter encodings, AIMET 1.0.0) this is what AIMET's AdaRound
    exports: weights changed to their rounded values and the encodings to freeze them with. Quantizing
    each of these weights with its encoding (round half away from zero of w / scale) gives back the
    folder's int8 weight exactly: |q| <= 128, so the float32 rounding of q * scale moves w / scale by
    at most 128 * 2**-24 of a step.
    """
    out = {}
    for net, qnet in qmodel.networks.items():
        for key, q in qnet.arrays.items():
            if not key.endswith(".weight_q"):
                continue
            name = f"{net}.{key[:-len('.weight_q')]}.weight"
            enc = qnet.params[name]
            scale = np.asarray(enc.scale, np.float64).reshape((-1,) + (1,) * (q.ndim - 1))
            out[name] = (np.asarray(q, np.float64) * scale).astype(np.float32)
    return out


def export_weights(folder, path) -> int:
    """Write `dequantized_weights` of the quantized model folder `folder` to the safetensors file `path`
    (atomically; names `{network}.{layer}.weight`). Returns the number of weights written."""
    from ..safetensors_io import write_safetensors
    from .folder import load_quantized

    weights = dequantized_weights(load_quantized(folder))
    write_safetensors(path, weights, metadata={"format": "pt", "tinysd": "dequantized int8 weights (q * scale)",
                                               "encodings": "the folder's encodings.json (param_encodings)"})
    log.info("wrote %d dequantized weights of %s to %s", len(weights), folder, path)
    return len(weights)
