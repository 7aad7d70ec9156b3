"""The `tinysd golden` and `tinysd compare` commands (added to the app in cli.py with `add_command`).

Thin: parse the options, call `tinysd.golden.generate.generate_golden` / `tinysd.golden.compare`,
report. User errors are TinySDError (one line on stderr, exit status 2, by the app's group).
"""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import TinySDError
from ..schedulers import SAMPLERS


def _read_prompts(path: Path) -> list[str]:
    from ..quant.prompts import read_prompts

    return read_prompts(path, what="--prompts file")


@click.command("golden")
@click.option("--model", type=click.Path(path_type=Path), required=True,
              help="Quantized model folder (written by `tinysd quantize`).")
@click.option("--prompt", default=None, help="The prompt.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="File of prompts, one per line (case ids p000, p001, ...).")
@click.option("--negative-prompt", default="", show_default=True, help="Negative prompt.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (the same for every prompt).")
@click.option("--steps", type=int, default=20, show_default=True, help="Sampling steps.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="euler", show_default=True, help="Sampler.")
@click.option("--karras", is_flag=True, help="Karras sigmas.")
@click.option("--cfg", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option("--width", type=int, default=None, help="Image width (default: the model's native size).")
@click.option("--height", type=int, default=None, help="Image height (default: the model's native size).")
@click.option("--network", type=click.Choice(["clip", "unet", "vae", "all"]), default="all", show_default=True,
              help="Networks whose calls are dumped (clip = the text encoder).")
@click.option("--layers", default=None,
              help="Glob of op names (`down_blocks.0.*`, or with the network prefix `unet.*conv*`): "
                   "one single-layer case per matching op and call.")
@click.option("--at-steps", default=None, help="UNet steps to dump, e.g. 0,19 (default: all).")
@click.option("--format", "storage", type=click.Choice(["npy", "raw", "c"]), default="npy", show_default=True,
              help="Tensor files: .npy, raw little-endian .bin, or one C header per case.")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="Layout of 4-D activations (and OIHW/OHWI conv weights).")
@click.option("--full-layers", is_flag=True, help="Layer cases hold whole layers (not cut to unit-test size).")
@click.option("--with-params", is_flag=True,
              help="Also store every op's run-time parameters (graph/NETWORK; as large as the quantized model), so "
                   "that a whole network call can be recomputed from the folder and its recorded graph alone.")
@click.option("--init-image", type=click.Path(path_type=Path), default=None,
              help="img2img as `tinysd generate --init-image`; the VAE encoder call is dumped too (p000/vae.encode).")
@click.option("--strength", type=float, default=None, help="img2img strength in (0, 1].  [default: 0.8]")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Golden folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def golden(model, prompt, prompts_file, negative_prompt, seed, steps, sampler, karras, cfg, width, height, network,
           layers, at_steps, storage, layout, full_layers, with_params, init_image, strength, output, overwrite):
    """Dump golden integer tensors of a quantized model's network calls (and single-layer cases)."""
    from ..cli import progress_bar
    from .cases import CropLimits
    from .generate import generate_golden, parse_at_steps
    from .writer import check_target

    if (prompt is None) == (prompts_file is None):
        raise TinySDError("give exactly one of --prompt and --prompts")
    prompts = [prompt] if prompt is not None else _read_prompts(prompts_file)
    if steps < 1:
        raise TinySDError(f"--steps must be >= 1, got {steps}")
    steps_list = parse_at_steps(at_steps, steps)
    check_target(output, overwrite)
    bar = None

    def progress(done, of):  # called after every sampler step; the bar starts once the checks have passed
        nonlocal bar
        if bar is None:
            bar = progress_bar(steps * len(prompts), "tinysd golden")
            bar.__enter__()
        bar.update(1)

    try:
        generate_golden(model, output, prompts, negative_prompt=negative_prompt, seed=seed, steps=steps,
                        sampler=sampler, karras=karras, cfg=cfg, width=width, height=height, network=network,
                        layers=layers, at_steps=steps_list, storage=storage, layout=layout,
                        limits=None if full_layers else CropLimits(), overwrite=overwrite, progress=progress,
                        with_params=with_params, init_image=init_image, strength=strength)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    from .reader import GoldenFolder

    m = GoldenFolder(output, verify_files=False).manifest
    click.echo(f"wrote {output}: {len(m['cases'])} cases, {len(m['tensors'])} tensors ({storage}, {layout})", err=True)


@click.command("compare")
@click.argument("golden_dir", type=click.Path(path_type=Path))
@click.argument("device_dir", type=click.Path(path_type=Path))
@click.option("--tolerance-lsb", type=click.IntRange(min=0), default=0, show_default=True,
              help="Largest |device - golden| (in integer steps) that still passes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report as JSON here.")
def compare(golden_dir, device_dir, tolerance_lsb, json_path):
    """Compare device outputs with a golden folder: exit 0 all within tolerance, 1 some not, 2 malformed input."""
    from .compare import check_report_path, write_report
    from .compare import compare as run_compare

    if json_path is not None:
        check_report_path(json_path)
    report = run_compare(golden_dir, device_dir, tolerance_lsb)
    click.echo(report.table())
    for t in report.errors:
        click.echo(f"tinysd: error: {' '.join(t['error'].split())}", err=True)
    if json_path is not None:
        write_report(report, json_path)
    return report.exit_code
