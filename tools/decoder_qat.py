"""Does quantization-aware fine-tuning rescue the VAE decoder at uint8? (docs/quantization.md §10)

    python3 tools/decoder_qat.py [MODEL] [--steps 600] [--lr 1e-3] [--eval-every 150] [--save OUT.safetensors]
    python3 tools/decoder_qat.py --vae-weights RUN/vae_final.safetensors --vae-norm-groups G --steps 0

Dev-only (torch, diffusers). The decoder of MODEL's VAE (default: the shipped model) is fine-tuned
with every activation the integer decoder quantizes fake-quantized to uint8: the latent input and
the outputs of each Conv2d, GroupNorm, SiLU, Linear, resnet (its residual add) and attention block
(77 sites for the shipped model; attention's inner matmuls and softmax are left in float). Rounding
is asymmetric per tensor over a range tracked as an exponential moving average of batch min / max,
with a straight-through gradient; weights stay float. Training is the decoder stage of
tools/train.py (drawn scenes, frozen encoder, sampled latents, the same weighted L1 + L2).

Every --eval-every steps it prints the decoded-image PSNR of the fake-quantized decoder against the
same decoder in float, with ranges set to the global min / max over 64 calibration scenes, as
min-max calibration would set them, on 24 other scenes: the quantity of the fake-quantization
table of tools/decoder_8bit.py (which the integer decoder matches to about 0.02 dB), and the
float decoder's PSNR against the drawn images.

`--vae-weights` measures a VAE state dict of tools/train.py's configuration instead (a run dir's
`vae_final.safetensors`, e.g. from `train.py --stage vae --vae-norm-groups G`); `--steps 0` only
measures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train  # noqa: E402


class FakeQuant:
    """uint8 fake quantization per call site; sites are numbered by call order within one decode."""

    def __init__(self, bits: int = 8, momentum: float = 0.9):
        self.levels, self.momentum = 2**bits - 1, momentum
        self.lo: dict[int, torch.Tensor] = {}
        self.hi: dict[int, torch.Tensor] = {}
        self.site = 0
        self.enabled, self.observe = True, True

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return y
        k, self.site = self.site, self.site + 1
        if self.observe:
            lo, hi = y.detach().min().clamp(max=0), y.detach().max().clamp(min=0)
            if k in self.lo:
                m = self.momentum
                lo, hi = m * self.lo[k] + (1 - m) * lo, m * self.hi[k] + (1 - m) * hi
            self.lo[k], self.hi[k] = lo, hi
        scale = (self.hi[k] - self.lo[k]).clamp(min=1e-8) / self.levels
        zero = torch.round(-self.lo[k] / scale)
        q = (torch.clamp(torch.round(y / scale) + zero, 0, self.levels) - zero) * scale
        return y + (q - y).detach()  # straight-through


def attach(vae, fq: FakeQuant) -> int:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    kinds = (torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.SiLU, torch.nn.Linear, ResnetBlock2D, Attention)
    vae.post_quant_conv.register_forward_pre_hook(lambda m, args: (fq(args[0]),) + tuple(args[1:]))
    mods = [vae.post_quant_conv, *vae.decoder.modules()]
    for m in mods:
        if isinstance(m, kinds):
            m.register_forward_hook(lambda m, args, out: fq(out))
    return 1 + sum(isinstance(m, kinds) for m in mods)


def main(argv=None) -> int:
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=ROOT / "weights" / "tinysd-shapes")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, help="write the fine-tuned VAE's state dict here")
    ap.add_argument("--vae-weights", type=Path, help="a VAE state dict of tools/train.py's configuration instead of MODEL")
    ap.add_argument("--vae-norm-groups", type=int, default=4, help="its GroupNorm groups (with --vae-weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.vae_weights:
        vae = train.make_vae(args)
        vae.load_state_dict(load_file(str(args.vae_weights)))
    else:
        vae = AutoencoderKL.from_pretrained(str(args.model / "vae"), dtype=torch.float32)
    vae.eval()
    fq = FakeQuant()
    print(f"fake-quantized sites: {attach(vae, fq)}")

    def decode(z):
        fq.site = 0
        return vae.decode(z).sample

    def to_uint8(y):
        return ((y.clamp(-1, 1) + 1) * 127.5).round()

    def psnr(a, b):  # per image
        return 10 * torch.log10(255.0**2 / (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-12))

    x_cal, _ = train.draw_batch(111, 0, 64)
    x_eval, _ = train.draw_batch(112, 0, 24)
    with torch.no_grad():
        z_cal, z_eval = (vae.encode(torch.from_numpy(x)).latent_dist.mean for x in (x_cal, x_eval))
    drawn = to_uint8(torch.from_numpy(x_eval))

    @torch.no_grad()
    def evaluate(step: int) -> None:
        vae.decoder.eval()
        fq.enabled = False
        ref = to_uint8(decode(z_eval))
        fq.enabled, saved = True, (fq.lo, fq.hi)
        lo, hi = {}, {}
        for i in range(0, len(z_cal), 16):  # global min / max over the calibration scenes
            fq.lo, fq.hi = {}, {}
            decode(z_cal[i:i + 16])
            lo = {k: torch.minimum(lo.get(k, v), v) for k, v in fq.lo.items()}
            hi = {k: torch.maximum(hi.get(k, v), v) for k, v in fq.hi.items()}
        fq.lo, fq.hi, fq.observe = lo, hi, False
        p = psnr(to_uint8(decode(z_eval)), ref)
        print(f"step {step:5d}: uint8 decoder PSNR mean {p.mean():.2f} dB, min {p.min():.2f} "
              f"(float decoder against the drawn images: {psnr(ref, drawn).mean():.2f} dB)", flush=True)
        (fq.lo, fq.hi), fq.observe = saved, True
        vae.decoder.train()

    evaluate(0)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    vae.decoder.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = train.lr_at(step, args.steps, args.lr, 20)
        xn, mn = train.draw_batch(82, step, args.batch)
        x, m = torch.from_numpy(xn), torch.from_numpy(mn)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(99 + step))
        l1, l2 = train.recon_losses(decode(z), x, m, 9.0)
        opt.zero_grad(set_to_none=True)
        (l1 + l2).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1:5d}: loss l1 {l1.item():.4f} l2 {l2.item():.5f}, {(step + 1) / (time.time() - t0):.2f} it/s")
            evaluate(step + 1)
    if args.save:
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(args.save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
