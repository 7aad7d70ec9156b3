"""Dev tool: record diffusers' schedulers step by step -> tests/fixtures/schedulers.npz.

Needs torch + diffusers (dev extras). For every case (sampler x Karras x
timestep spacing x prediction type x beta schedule x steps) it runs the
diffusers scheduler of the same name on a tiny latent (1, 4, 2, 2) and records

  timesteps, sigmas (where the scheduler has them), init_noise_sigma,
  sample0      the initial sample: noise * init_noise_sigma,
  for each step i:
    scaled[i]  scheduler.scale_model_input(sample_i, t_i)
    eps[i]     the synthetic model output fed to step i
    noise[i]   the ancestral noise (euler_a only), injected into diffusers' step
    prev[i]    step(...).prev_sample, which is sample_{i+1}
    x0[i]      step(...).pred_original_sample (not returned by DPM-Solver: absent; LCM: its `denoised`)

plus diffusers' float32 alphas_cumprod tables and a JSON `meta` entry saying
what made the file. The synthetic model output is a deterministic function of
the step and the scaled input: eps_i = 0.5 * scaled_i + 0.5 * sin(0.37 k + 1.3 i + 0.1),
k the flat element index. Noise (initial and ancestral) is drawn with NumPy:
Generator(PCG64(seed)).standard_normal(shape) in float64, cast to float32.
For euler_a and lcm, diffusers' `randn_tensor` in its scheduler module is replaced by
one returning our recorded noise, so both implementations add the same noise
(lcm: one array per step, the last one unused, as diffusers adds none on the last step).

It also records diffusers' guidance-scale embedding (LatentConsistencyModelPipeline.
get_guidance_scale_embedding, the `timestep_cond` input of w-conditioned LCM UNets) for
w = GUIDANCE_W at dims GUIDANCE_DIMS: `w_embedding__w` and `w_embedding__d{dim}`.

Usage: python tools/make_scheduler_fixtures.py [--out tests/fixtures/schedulers.npz]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler
from diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_text2img import LatentConsistencyModelPipeline
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_module
from diffusers.schedulers import scheduling_lcm as lcm_module

SHAPE = (1, 4, 2, 2)
NOISE_SEED = 1234
SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, steps_offset=1)
LINEAR = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, steps_offset=1)
GUIDANCE_W = [0.0, 0.5, 1.0, 4.0, 6.5, 11.0]
GUIDANCE_DIMS = [16, 256]
# LCM cases (sampler, spacing, prediction, beta, steps), appended after the others so that their noise draws come last
LCM_CASES = [("lcm", "leading", "epsilon", "scaled_linear", 4), ("lcm", "leading", "epsilon", "scaled_linear", 1),
             ("lcm", "leading", "v_prediction", "scaled_linear", 7), ("lcm", "leading", "epsilon", "linear", 7),
             ("lcm", "leading", "epsilon", "scaled_linear", 20)]
SAMPLERS = [("ddim", False), ("euler", False), ("euler", True), ("euler_a", False), ("dpmpp_2m", False), ("dpmpp_2m", True)]


def cases():
    """(name, sampler, karras, spacing, prediction, beta_schedule, steps)."""
    out = []
    for sampler, karras in SAMPLERS:
        for spacing in ("leading", "linspace", "trailing"):
            for pred in ("epsilon", "v_prediction"):
                out.append((sampler, karras, spacing, pred, "scaled_linear", 7))
        out.append((sampler, karras, "leading", "epsilon", "linear", 7))
        out.append((sampler, karras, "leading", "epsilon", "scaled_linear", 20))
    out += [(s, False, sp, p, b, n) for s, sp, p, b, n in LCM_CASES]
    return [(f"{s}{'_karras' if k else ''}-{sp}-{p}-{b}-n{n}", s, k, sp, p, b, n) for s, k, sp, p, b, n in out]


def make_diffusers(sampler, karras, spacing, pred, beta):
    base = dict(SD15 if beta == "scaled_linear" else LINEAR, beta_schedule=beta, prediction_type=pred, timestep_spacing=spacing)
    if sampler == "ddim":
        return DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=False)
    if sampler == "euler":
        return EulerDiscreteScheduler(**base, use_karras_sigmas=karras)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler(**base)
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                           lower_order_final=True, final_sigmas_type="zero", use_karras_sigmas=karras)
    if sampler == "lcm":
        return LCMScheduler(**base, clip_sample=False, original_inference_steps=50, timestep_scaling=10.0)
    raise ValueError(sampler)


def synthetic_eps(scaled: np.ndarray, i: int) -> np.ndarray:
    k = np.arange(scaled.size, dtype=np.float64).reshape(scaled.shape)
    return (0.5 * scaled.astype(np.float64) + 0.5 * np.sin(0.37 * k + 1.3 * i + 0.1)).astype(np.float32)


def run_case(sampler, karras, spacing, pred, beta, n, rng):
    sch = make_diffusers(sampler, karras, spacing, pred, beta)
    sch.set_timesteps(n)
    rec = {"timesteps": sch.timesteps.numpy().astype(np.float64)}
    if getattr(sch, "sigmas", None) is not None and sampler != "ddim":
        rec["sigmas"] = sch.sigmas.numpy().astype(np.float32)
    init_sigma = float(sch.init_noise_sigma)
    rec["init_noise_sigma"] = np.float64(init_sigma)
    noise0 = rng.standard_normal(SHAPE).astype(np.float32)
    sample = torch.from_numpy(noise0) * sch.init_noise_sigma
    rec["sample0"] = sample.numpy().copy()
    scaled_l, eps_l, noise_l, prev_l, x0_l = [], [], [], [], []
    for i, t in enumerate(sch.timesteps):
        scaled = sch.scale_model_input(sample, t)
        eps = synthetic_eps(scaled.numpy(), i)
        if sampler == "euler_a":
            nz = rng.standard_normal(SHAPE).astype(np.float32)
            noise_l.append(nz)
            euler_a_module.randn_tensor = lambda *a, _nz=nz, **k: torch.from_numpy(_nz.copy())
        if sampler == "lcm":
            nz = rng.standard_normal(SHAPE).astype(np.float32)
            noise_l.append(nz)
            lcm_module.randn_tensor = lambda *a, _nz=nz, **k: torch.from_numpy(_nz.copy())
        out = sch.step(torch.from_numpy(eps), t, sample)
        scaled_l.append(scaled.numpy().copy())
        eps_l.append(eps)
        prev_l.append(out.prev_sample.numpy().copy())
        x0 = out.denoised if sampler == "lcm" else getattr(out, "pred_original_sample", None)
        if x0 is not None:
            x0_l.append(x0.numpy().copy())
        sample = out.prev_sample
    rec["scaled"] = np.stack(scaled_l)
    rec["eps"] = np.stack(eps_l)
    rec["prev"] = np.stack(prev_l)
    if noise_l:
        rec["noise"] = np.stack(noise_l)
    if x0_l:
        rec["x0"] = np.stack(x0_l)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schedulers.npz"))
    args = ap.parse_args(argv)
    original_randn, original_lcm_randn = euler_a_module.randn_tensor, lcm_module.randn_tensor
    arrays = {}
    names = []
    rng = np.random.Generator(np.random.PCG64(NOISE_SEED))
    try:
        for name, sampler, karras, spacing, pred, beta, n in cases():
            rec = run_case(sampler, karras, spacing, pred, beta, n, rng)
            for k, v in rec.items():
                arrays[f"{name}__{k}"] = np.asarray(v)
            names.append(name)
    finally:
        euler_a_module.randn_tensor = original_randn
        lcm_module.randn_tensor = original_lcm_randn
    w = torch.tensor(GUIDANCE_W, dtype=torch.float32)
    arrays["w_embedding__w"] = w.numpy().astype(np.float64)
    for dim in GUIDANCE_DIMS:
        emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        arrays[f"w_embedding__d{dim}"] = emb.numpy()
    for beta, base in (("scaled_linear", SD15), ("linear", LINEAR)):
        arrays[f"alphas_cumprod__{beta}"] = DDIMScheduler(**base, beta_schedule=beta).alphas_cumprod.numpy()
    meta = {
        "generator": "tools/make_scheduler_fixtures.py",
        "date": datetime.date.today().isoformat(),
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "latent_shape": list(SHAPE),
        "noise": f"numpy Generator(PCG64({NOISE_SEED})).standard_normal(shape) float64 -> float32, drawn in case order: "
                 "initial noise, then per step (euler_a, lcm) the injected noise",
        "w_embedding": "LatentConsistencyModelPipeline.get_guidance_scale_embedding(w, embedding_dim=d), float32, "
                       f"w = {GUIDANCE_W}, d in {GUIDANCE_DIMS}",
        "model_output": "eps_i = float32(0.5 * scaled_i + 0.5 * sin(0.37 k + 1.3 i + 0.1)), k = flat index",
        "sd15_config": SD15,
        "linear_config": LINEAR,
        "cases": names,
        "case_fields": "name = {sampler}[_karras]-{timestep_spacing}-{prediction_type}-{beta_schedule}-n{steps}",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(names)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
