"""Samplers for SD 1.x: DDIM (eta 0), Euler, Euler ancestral, DPM++ 2M, LCM; Karras sigmas as an option.

Each scheduler reproduces the diffusers scheduler of the same name
(`DDIMScheduler`, `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`,
`DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`,
`solver_order=2`, `LCMScheduler`), including its timestep spacing quirks, but does all its
arithmetic in float64. `tests/test_schedulers.py` checks every `step()` against
diffusers on recorded model outputs (`tools/make_scheduler_fixtures.py`).

Like diffusers, a scheduler never calls the model: the caller runs

    sched.set_timesteps(n)
    x = noise * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        eps = model(sched.scale_model_input(x, i), t)
        x = sched.step(eps, i, x, noise=...).prev_sample

Unlike diffusers, `step()` and `scale_model_input()` take the step index `i`
(position in `timesteps`) rather than the timestep value, so no hidden
timestep search is involved. DPM++ 2M keeps the previous step's x0 prediction
and so must be stepped in order, i = 0, 1, 2, ...

The noise schedule (`alphas_cumprod`) is computed in float64 from the config.
diffusers computes it in float32 (torch.linspace, float32 squares), which
differs from the float64 table by up to ~1e-6 relative (and sigmas near t = 0
by ~1.3e-5 relative); a scheduler can be given an explicit table instead
(`alphas_cumprod=`), e.g. the one a CompVis checkpoint stores.

Seeded noise (`NoiseSource`): image `i` of a batch draws from its own NumPy
`Generator(PCG64(seed + i))` with `standard_normal(shape)` in float64, first
the initial latents (C, H/8, W/8), then one array of that shape per step for
ancestral samplers. Image `i` of a batch made with seed `s` is therefore the
image a batch of one makes with seed `s + i` (as in A1111).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .config import SchedulerConfig
from .errors import TinySDError

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "lcm")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. (5)


# --------------------------------------------------------------------------- schedule
def alphas_cumprod_from_config(cfg: SchedulerConfig) -> np.ndarray:
    """prod_{s<=t} (1 - beta_s) for t = 0 .. num_train_timesteps-1, float64.

    scaled_linear (SD 1.x): beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)[t] ** 2.
    linear: beta_t = linspace(beta_start, beta_end, T)[t].
    """
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "scaled_linear":
        betas = np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=np.float64) ** 2
    elif cfg.beta_schedule == "linear":
        betas = np.linspace(cfg.beta_start, cfg.beta_end, n, dtype=np.float64)
    else:
        raise TinySDError(f"scheduler config: beta_schedule={cfg.beta_schedule!r} is not supported (supported: ['scaled_linear', 'linear'])")
    return np.cumprod(1.0 - betas)


def sigmas_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Karras/k-diffusion sigma of each training timestep: sqrt((1 - abar) / abar), ascending in t."""
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """n sigmas from sigma_max down to sigma_min, evenly spaced in sigma ** (1/rho) (Karras et al. eq. 5)."""
    ramp = np.linspace(0.0, 1.0, n)
    max_inv, min_inv = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma: linear interpolation in log sigma.

    `log_sigmas` is log of the (ascending) training sigma table. Values outside
    the table clamp to its ends (diffusers' `_sigma_to_t`).
    """
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    # index of the last table entry <= log_sigma, kept where a next entry exists
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def spaced_timesteps(spacing: str, num_train: int, n: int, steps_offset: int, *, dpm: bool = False, rounded: bool = True) -> np.ndarray:
    """Descending inference timesteps (float64) for `n` steps, as diffusers' `set_timesteps`.

    leading:  (arange(n) * (T // n))[::-1] + steps_offset     (SD 1.5: T=1000, offset 1 -> 951, 901, ... 1 for n=20)
    trailing: round(arange(T, 0, -T / n)) - 1
    linspace: linspace(0, T - 1, n)[::-1], rounded to integers unless `rounded=False` (Euler keeps fractions)
    DPM-Solver (`dpm=True`) builds n + 1 points and drops the last one for leading and linspace.
    """
    T = num_train
    if spacing == "leading":
        if dpm:
            ratio = T // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1]
        else:
            ratio = T // n
            ts = (np.arange(0, n) * ratio).round()[::-1]
        ts = ts + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    elif spacing == "linspace":
        if dpm:
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        else:
            ts = np.linspace(0, T - 1, n)[::-1]
            if rounded:
                ts = ts.round()
    else:
        raise TinySDError(f"scheduler config: timestep_spacing={spacing!r} is not supported (supported: ['leading', 'trailing', 'linspace'])")
    if ts.size and ts.max() > T - 1:
        raise TinySDError(f"scheduler config: steps_offset={steps_offset} puts timestep {int(ts.max())} of {n} steps "
                          f"beyond the last training timestep {T - 1}")
    return np.ascontiguousarray(ts, dtype=np.float64)


@dataclass
class SchedulerOutput:
    """Result of one `step()`: the sample at the next timestep and the x0 estimate (float64)."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray | None = None


# --------------------------------------------------------------------------- base
class Scheduler:
    """Common state: the config's noise schedule and the per-run timesteps/sigmas.

    After `set_timesteps(n)`:
      timesteps        float64 (n,), descending; what the UNet is given at step i
      sigmas           float64 (n+1,), descending, last 0 (sigma schedulers only)
      init_noise_sigma float, initial latents are standard noise times this
    """

    name = ""
    needs_noise = False  # ancestral samplers take fresh noise in step()
    supports_karras = False

    def __init__(self, config: SchedulerConfig | None = None, karras: bool = False, alphas_cumprod: np.ndarray | None = None):
        self.config = config or SchedulerConfig()
        if karras and not self.supports_karras:
            raise TinySDError(f"sampler {self.name}: Karras sigmas are not available for this sampler")
        self.karras = karras
        if alphas_cumprod is None:
            alphas_cumprod = alphas_cumprod_from_config(self.config)
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.shape != (self.config.num_train_timesteps,):
            raise TinySDError(f"scheduler: alphas_cumprod has shape {ac.shape}, expected ({self.config.num_train_timesteps},)")
        self.alphas_cumprod = ac
        self.timesteps = np.zeros(0)
        self.sigmas = None
        self.init_noise_sigma = 1.0
        self.num_inference_steps = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise TinySDError(f"steps must be an integer >= 1 (got {num_inference_steps!r})")
        if num_inference_steps > self.config.num_train_timesteps:
            raise TinySDError(f"steps must be at most num_train_timesteps={self.config.num_train_timesteps} (got {num_inference_steps})")
        self.num_inference_steps = int(num_inference_steps)
        self._set_timesteps(self.num_inference_steps)

    def _set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        """The UNet input at step i (float64). Identity unless overridden."""
        return np.asarray(sample, dtype=np.float64)

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, noise: np.ndarray | None = None) -> SchedulerOutput:
        raise NotImplementedError

    def add_noise(self, original: np.ndarray, noise: np.ndarray, i: int) -> np.ndarray:
        """`original` noised to the level of step i, float64 (diffusers' `add_noise` at timesteps[i], as
        img2img calls it before its first step): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t = timesteps[i]."""
        self._check_index(i)
        a = self.alphas_cumprod[int(self.timesteps[i])]
        x0, n = np.asarray(original, dtype=np.float64), np.asarray(noise, dtype=np.float64)
        return np.sqrt(a) * x0 + np.sqrt(1.0 - a) * n

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.num_inference_steps:
            raise ValueError(f"i: step index {i} is outside 0..{self.num_inference_steps - 1} (call set_timesteps first)")


class _SigmaScheduler(Scheduler):
    """Schedulers working on k-diffusion's sigma parameterisation: x = x0 + sigma * eps."""

    supports_karras = True

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)  # ascending in t
        self.log_sigmas = np.log(self.train_sigmas)

    def _interp_sigmas(self, timesteps: np.ndarray) -> np.ndarray:
        """sigma at (possibly fractional) timesteps, linear interpolation in sigma."""
        return np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)

    def _x0_from_output(self, model_output: np.ndarray, sample: np.ndarray, sigma: float) -> np.ndarray:
        """x0 prediction from the model output at noise level sigma (x = x0 + sigma * eps)."""
        if self.config.prediction_type == "epsilon":
            return sample - sigma * model_output
        # v_prediction: x0 = c_skip * x + c_out * v, c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1)
        return model_output * (-sigma / np.sqrt(sigma**2 + 1.0)) + sample / (sigma**2 + 1.0)

    def add_noise(self, original, noise, i):
        """x0 + sigma_i noise (diffusers' Euler `add_noise` with begin index i), float64."""
        self._check_index(i)
        return np.asarray(original, dtype=np.float64) + self.sigmas[i] * np.asarray(noise, dtype=np.float64)

    def scale_model_input(self, sample, i):
        """x / sqrt(sigma_i^2 + 1): the UNet expects unit-variance-ish inputs (VP scaling)."""
        self._check_index(i)
        return np.asarray(sample, dtype=np.float64) / np.sqrt(self.sigmas[i] ** 2 + 1.0)


# --------------------------------------------------------------------------- DDIM
class DDIMScheduler(Scheduler):
    """Deterministic DDIM (eta = 0), diffusers' DDIMScheduler with clip_sample=False.

    `config.set_alpha_to_one` picks abar_prev of the final step: 1.0, or abar[0]
    (SD 1.x: False, i.e. abar[0]).
    """

    name = "ddim"

    def _set_timesteps(self, n):
        cfg = self.config
        self.timesteps = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset)
        self.sigmas = None
        self.init_noise_sigma = 1.0
        self.final_alpha_cumprod = 1.0 if cfg.set_alpha_to_one else float(self.alphas_cumprod[0])

    def step(self, model_output, i, sample, noise=None):
        self._check_index(i)
        eps_in = np.asarray(model_output, dtype=np.float64)
        x = np.asarray(sample, dtype=np.float64)
        t = int(self.timesteps[i])
        # 1. previous timestep: diffusers always steps back by T // n, whatever the spacing
        t_prev = t - self.config.num_train_timesteps // self.num_inference_steps
        # 2. abar at t and t_prev
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod
        b_t = 1.0 - a_t
        # 3. predicted x0 and eps (DDIM paper eq. 12)
        if self.config.prediction_type == "epsilon":
            x0 = (x - np.sqrt(b_t) * eps_in) / np.sqrt(a_t)
            eps = eps_in
        else:  # v_prediction
            x0 = np.sqrt(a_t) * x - np.sqrt(b_t) * eps_in
            eps = np.sqrt(a_t) * eps_in + np.sqrt(b_t) * x
        # 4. eta = 0: no variance; direction pointing to x_t
        direction = np.sqrt(1.0 - a_prev) * eps
        # 5. x_{t_prev} = sqrt(abar_prev) x0 + direction
        return SchedulerOutput(np.sqrt(a_prev) * x0 + direction, x0)


# --------------------------------------------------------------------------- Euler
class EulerDiscreteScheduler(_SigmaScheduler):
    """Euler's method on the probability-flow ODE (k-diffusion `sample_euler`, s_churn = 0)."""

    name = "euler"

    def _set_timesteps(self, n):
        cfg = self.config
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset, rounded=False)
        sig = self._interp_sigmas(ts)
        if self.karras:
            # diffusers: the Karras range is that of the spaced sigmas, timesteps stay fractional
            sig = karras_sigmas(sig[-1], sig[0], n)
            ts = sigma_to_t(sig, self.log_sigmas)
        self.timesteps = ts
        self.sigmas = np.concatenate([sig, [0.0]])
        smax = float(self.sigmas.max())
        self.init_noise_sigma = smax if cfg.timestep_spacing in ("linspace", "trailing") else float(np.sqrt(smax**2 + 1.0))

    def step(self, model_output, i, sample, noise=None):
        self._check_index(i)
        x = np.asarray(sample, dtype=np.float64)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        # 1. x0 from the model output
        x0 = self._x0_from_output(np.asarray(model_output, dtype=np.float64), x, sigma)
        # 2. ODE derivative dx/dsigma = (x - x0) / sigma
        d = (x - x0) / sigma
        # 3. Euler step to sigma_next
        return SchedulerOutput(x + d * (sigma_next - sigma), x0)


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    """Euler ancestral (k-diffusion `sample_euler_ancestral`, eta = 1): Euler step to sigma_down, then noise of sigma_up.

    diffusers has no Karras option for this scheduler; with `karras=True` the
    sigmas are those of `EulerDiscreteScheduler(karras=True)`.
    """

    name = "euler_a"
    needs_noise = True

    def step(self, model_output, i, sample, noise=None):
        self._check_index(i)
        if noise is None:
            raise ValueError("noise: euler_a needs a standard normal array of the sample's shape at every step")
        x = np.asarray(sample, dtype=np.float64)
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != x.shape:
            raise ValueError(f"noise: shape {noise.shape} differs from sample shape {x.shape}")
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        # 1. x0 from the model output
        x0 = self._x0_from_output(np.asarray(model_output, dtype=np.float64), x, sigma)
        # 2. split sigma_next^2 into a deterministic part sigma_down^2 and fresh noise sigma_up^2
        sigma_up = np.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = np.sqrt(sigma_next**2 - sigma_up**2)
        # 3. Euler step to sigma_down
        d = (x - x0) / sigma
        x_next = x + d * (sigma_down - sigma)
        # 4. add noise
        return SchedulerOutput(x_next + noise * sigma_up, x0)


# --------------------------------------------------------------------------- DPM++ 2M
class DPMSolverMultistepScheduler(_SigmaScheduler):
    """DPM-Solver++(2M), midpoint form, data prediction (Lu et al. 2022, arXiv:2211.01095, alg. 2).

    Matches diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, solver_type="midpoint", lower_order_final=True,
    final_sigmas_type="zero"): first-order at the first and the last step,
    second-order in between. lambda = log(alpha / sigma_vp) = -log(sigma).
    """

    name = "dpmpp_2m"

    def _set_timesteps(self, n):
        cfg = self.config
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset, dpm=True)
        if self.karras:
            # diffusers: the Karras range is the whole training table, timesteps rounded
            sig = karras_sigmas(self.train_sigmas[0], self.train_sigmas[-1], n)
            ts = np.round(sigma_to_t(sig, self.log_sigmas))
        else:
            sig = self._interp_sigmas(ts)
        self.timesteps = ts.astype(np.float64)
        self.sigmas = np.concatenate([sig, [0.0]])
        self.init_noise_sigma = 1.0
        self._prev = None  # (step index, x0 prediction) of the last step taken

    def add_noise(self, original, noise, i):
        """alpha x0 + sigma_vp noise at sigma_i (the VP sample; diffusers' DPM-Solver `add_noise`), float64."""
        self._check_index(i)
        s = self.sigmas[i]
        alpha = 1.0 / np.sqrt(s**2 + 1.0)
        return alpha * np.asarray(original, dtype=np.float64) + s * alpha * np.asarray(noise, dtype=np.float64)

    def scale_model_input(self, sample, i):
        """Identity: DPM-Solver works on the VP sample alpha x0 + sigma_vp eps, which the UNet takes as is."""
        self._check_index(i)
        return np.asarray(sample, dtype=np.float64)

    def step(self, model_output, i, sample, noise=None):
        self._check_index(i)
        x = np.asarray(sample, dtype=np.float64)
        n = self.num_inference_steps
        s0, s_next = self.sigmas[i], self.sigmas[i + 1]
        # 1. data prediction x0 at sigma_i: with alpha = 1/sqrt(sigma^2+1), sigma_vp = sigma*alpha
        alpha0 = 1.0 / np.sqrt(s0**2 + 1.0)
        m = np.asarray(model_output, dtype=np.float64)
        if self.config.prediction_type == "epsilon":
            x0 = (x - s0 * alpha0 * m) / alpha0
        else:  # v_prediction
            x0 = alpha0 * x - s0 * alpha0 * m
        prev = self._prev
        # a run may begin at any step (img2img; diffusers' set_begin_index), then goes on in order
        first = i == 0 or prev is None
        if not first and prev[0] != i - 1:
            raise ValueError(f"i: dpmpp_2m must be stepped in order (got step {i} after {prev[0]})")
        self._prev = (i, x0)
        # 2. last step to sigma = 0: the limit of the update is x0 itself
        if s_next == 0.0:
            return SchedulerOutput(x0, x0)
        alpha_t = 1.0 / np.sqrt(s_next**2 + 1.0)
        h = np.log(s0) - np.log(s_next)  # lambda_t - lambda_s0
        phi = np.expm1(-h)  # exp(-h) - 1
        lower_order_final = i == n - 1  # final_sigmas_type="zero" forces first order on the last step
        if first or lower_order_final:
            # 3a. first order (DPM-Solver++ 1 = DDIM in lambda)
            x_next = (s_next * alpha_t) / (s0 * alpha0) * x - alpha_t * phi * x0
        else:
            # 3b. second order, midpoint: D1 = (x0_i - x0_{i-1}) / r0, r0 = h_prev / h
            s_prev = self.sigmas[i - 1]
            h_prev = np.log(s_prev) - np.log(s0)
            r0 = h_prev / h
            d1 = (1.0 / r0) * (x0 - prev[1])
            x_next = (s_next * alpha_t) / (s0 * alpha0) * x - alpha_t * phi * x0 - 0.5 * alpha_t * phi * d1
        return SchedulerOutput(x_next, x0)


# --------------------------------------------------------------------------- LCM
class LCMScheduler(Scheduler):
    """Latent consistency model multistep sampling (Luo et al. 2023, arXiv:2310.04378, alg. 3),
    diffusers' LCMScheduler with clip_sample=False, thresholding=False.

    Timesteps: the distillation grid t_k = k * (T // N) - 1, k = 1..N (N = config
    `original_inference_steps`, 50: 19, 39, ..., 999), read from its end at the indices
    floor(linspace(0, N, n, endpoint=False)); 4 steps of SD's T = 1000 are 999, 759, 499, 259.
    `timestep_spacing` and `steps_offset` do not apply.

    Step i at t with x0 predicted from the model output (epsilon or v):
        s = t * timestep_scaling, c_skip = s_d^2 / (s^2 + s_d^2), c_out = s / sqrt(s^2 + s_d^2),
        s_d = 0.5 (the consistency-model boundary condition, c_skip -> 1 and c_out -> 0 at t = 0);
        denoised = c_out * x0 + c_skip * x;
        x_next = sqrt(abar[t_next]) * denoised + sqrt(1 - abar[t_next]) * noise   (fresh noise; not on the last step)
    The last step returns `denoised` itself. `pred_original_sample` is `denoised`.
    """

    name = "lcm"
    needs_noise = True
    SIGMA_DATA = 0.5

    def _set_timesteps(self, n):
        cfg = self.config
        T, N = cfg.num_train_timesteps, cfg.original_inference_steps
        if N > T:
            raise TinySDError(f"scheduler config: original_inference_steps={N} exceeds num_train_timesteps={T}")
        if n > N:
            raise TinySDError(f"sampler lcm: steps must be at most the model's original_inference_steps={N} (got {n})")
        origin = (np.arange(1, N + 1) * (T // N) - 1)[::-1]  # the distillation grid, descending
        idx = np.floor(np.linspace(0, N, num=n, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.float64)
        self.sigmas = None
        self.init_noise_sigma = 1.0

    def boundary_scalings(self, t: float) -> tuple[float, float]:
        """(c_skip, c_out) of the consistency boundary condition at timestep t (float64)."""
        st = float(t) * self.config.timestep_scaling
        d2 = self.SIGMA_DATA**2
        return d2 / (st**2 + d2), st / np.sqrt(st**2 + d2)

    def step(self, model_output, i, sample, noise=None):
        self._check_index(i)
        x = np.asarray(sample, dtype=np.float64)
        m = np.asarray(model_output, dtype=np.float64)
        last = i == self.num_inference_steps - 1
        t = int(self.timesteps[i])
        t_next = t if last else int(self.timesteps[i + 1])
        a_t, a_next = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
        # 1. x0 from the model output
        if self.config.prediction_type == "epsilon":
            x0 = (x - np.sqrt(1.0 - a_t) * m) / np.sqrt(a_t)
        else:  # v_prediction
            x0 = np.sqrt(a_t) * x - np.sqrt(1.0 - a_t) * m
        # 2. consistency function f(x, t) = c_skip x + c_out x0
        c_skip, c_out = self.boundary_scalings(t)
        denoised = c_out * x0 + c_skip * x
        if last:
            return SchedulerOutput(denoised, denoised)
        # 3. back to the noise level of the next timestep with fresh noise
        if noise is None:
            raise ValueError("noise: lcm needs a standard normal array of the sample's shape at every step "
                             "but the last")
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != x.shape:
            raise ValueError(f"noise: shape {noise.shape} differs from sample shape {x.shape}")
        return SchedulerOutput(np.sqrt(a_next) * denoised + np.sqrt(1.0 - a_next) * noise, denoised)


_CLASSES = {c.name: c for c in (DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                DPMSolverMultistepScheduler, LCMScheduler)}

# A1111's names for the samplers (the `Sampler:` field of its PNG `parameters` text).
A1111_NAMES = {"ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M", "lcm": "LCM"}


def make_scheduler(name: str, config: SchedulerConfig | None = None, karras: bool = False, alphas_cumprod: np.ndarray | None = None) -> Scheduler:
    """The scheduler called `name` (one of SAMPLERS) for `config`; TinySDError for unknown names."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise TinySDError(f"sampler {name!r} is unknown (choose from {', '.join(SAMPLERS)})")
    return cls(config, karras=karras, alphas_cumprod=alphas_cumprod)


# --------------------------------------------------------------------------- noise
class NoiseSource:
    """Seeded standard normal noise, one independent stream per batch image.

    Image i uses `numpy.random.Generator(numpy.random.PCG64(seed + i))` and
    `standard_normal(shape, dtype=float64)`; successive calls continue each
    stream. Reproducible across platforms for a given NumPy bit generator
    (PCG64 is NumPy's stable default).
    """

    def __init__(self, seed: int, batch_size: int = 1):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TinySDError(f"seed must be an integer >= 0 (got {seed!r})")
        if batch_size < 1:
            raise TinySDError(f"batch size must be >= 1 (got {batch_size})")
        self.seeds = [int(seed) + i for i in range(batch_size)]
        self._rngs = [np.random.Generator(np.random.PCG64(s)) for s in self.seeds]

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """float64 (batch, *shape): image i's next `standard_normal(shape)` draw."""
        return np.stack([r.standard_normal(shape, dtype=np.float64) for r in self._rngs])
