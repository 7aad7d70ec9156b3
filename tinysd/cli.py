"""The `tinysd` command line (a thin click app: parse, call the library, report).

Run as `tinysd` (the installed command), `python -m tinysd`, or `python cli.py` from a checkout.

Every user error (a TinySDError from the library or a click usage error) is
printed as one line on stderr and exits with status 2; nothing is written.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from .errors import TinySDError
from .offload import reuse_freed_blocks
from .quant.calibration import CALIBRATION_METHODS
from .quant.calibration import DEFAULT_CALIBRATION_STEPS
from .schedulers import SAMPLERS

log = logging.getLogger("tinysd.cli")



class Terminated(BaseException):
    """Raised by the SIGTERM handler so that every `finally`/cleanup path runs (temporary files are removed)."""


def _raise_terminated(signum, frame):
    raise Terminated()


class TinySDGroup(click.Group):
    """A click group whose errors are one line on stderr and exit status 2.

    Ctrl-C ends with `tinysd: aborted` (status 130), SIGTERM with `tinysd: terminated` (143); both
    unwind normally, so temporary files and folders are removed (tinysd.atomic).
    """

    def parse_args(self, ctx, args):
        if not args and not ctx.resilient_parsing:  # `tinysd` alone: the help, as `tinysd --help`
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        with _sigterm_unwinds():
            try:
                rv = super().main(args=args, prog_name=prog_name or "tinysd", complete_var=complete_var,
                                  standalone_mode=False, **extra)
            except click.exceptions.Exit as e:
                sys.exit(e.exit_code)
            except click.Abort:
                click.echo("tinysd: aborted", err=True)
                sys.exit(130)
            except Terminated:
                click.echo("tinysd: terminated", err=True)
                sys.exit(143)
            except click.ClickException as e:
                click.echo(f"tinysd: error: {_one_line(e.format_message())}", err=True)
                sys.exit(2)
            except TinySDError as e:
                click.echo(f"tinysd: error: {_one_line(str(e))}", err=True)
                sys.exit(2)
            except MemoryError as e:
                click.echo(f"tinysd: error: out of memory ({_one_line(str(e)) or 'allocation failed'}); "
                           f"try a smaller --width/--height/--batch", err=True)
                sys.exit(2)
        if isinstance(rv, int) and standalone_mode:
            sys.exit(rv)
        return rv


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises Terminated while the command runs (main thread only; the old handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _model_precision(ctx, param, value):
    """--precision of `quantize`: a model precision in canonical form ("w8a8", "w8a8,vae=w8a16")."""
    from .quant.model import canonical_precision

    try:
        return canonical_precision(value)
    except TinySDError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _setup_logging(verbose: int) -> None:
    """Log records of the `tinysd` loggers go to stderr as `tinysd: message` (warnings; -v info, -vv debug)."""
    root = logging.getLogger("tinysd")
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_tinysd_cli", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tinysd: %(message)s"))
    handler._tinysd_cli = True
    root.addHandler(handler)
    root.setLevel(logging.NOTSET if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)


class _NoBar:
    """Stands in for a progress bar when stderr is not a terminal (logs and pipes then get only real messages)."""

    pos = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        self.pos += n


def progress_bar(length: int, label: str):
    """A click progress bar on stderr when it is a terminal; otherwise a silent stand-in with the same `update`."""
    if not sys.stderr.isatty():
        return _NoBar()
    return click.progressbar(length=length, label=label, file=sys.stderr)


class StageBars:
    """progress(stage, done, total) -> one progress bar per stage (`progress_bar`), each closed when the next starts."""

    def __init__(self):
        self.stage, self.bar = None, None

    def __enter__(self):
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.__exit__()
            self.stage, self.bar = stage, progress_bar(total, f"tinysd {stage}").__enter__()
        self.bar.update(done - self.bar.pos)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.stage, self.bar = None, None
        return False


VERBOSE_HELP = "More log output on stderr (-v info, -vv debug); before or after the command name."


def verbosity(ctx: click.Context) -> int:
    """The number of -v given, before and after the command name."""
    return ctx.find_root().meta.get("tinysd.verbose", 0)


def _add_verbosity(ctx, param, value):
    if value:
        root = ctx.find_root()
        root.meta["tinysd.verbose"] = root.meta.get("tinysd.verbose", 0) + value
        _setup_logging(root.meta["tinysd.verbose"])


def _add_verbose_option(command: click.Command) -> None:
    """Give a subcommand its own -v/--verbose (counted together with the group's)."""
    command.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_add_verbosity,
                                       help=VERBOSE_HELP))


def _print_version(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from . import __version__
    from .fixedpoint import ARITHMETIC_SPEC_VERSION

    click.echo(f"tinysd {__version__} (arithmetic spec {ARITHMETIC_SPEC_VERSION})")
    ctx.exit(0)


@click.group("tinysd", cls=TinySDGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the tinysd version and the arithmetic spec version it implements, and exit.")
@click.pass_context
def cli(ctx, verbose):
    """tinysd: a from-scratch Stable Diffusion 1.x engine."""
    ctx.meta["tinysd.verbose"] = verbose
    _setup_logging(verbose)
    reuse_freed_blocks()  # large work buffers reused, not faulted in afresh (tinysd.offload)


@cli.command()
@click.argument("prompt")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG file to write, named *.png (with --batch N > 1: OUT-0.png ... OUT-{N-1}.png). A symbolic "
                   "link is written through; a device or FIFO is refused.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Checkpoint: a diffusers folder or an SD 1.x .safetensors file. "
                   "Default: the shipped model (weights/tinysd-shapes-lcm/, 4 LCM steps), at its native size.")
@click.option("--negative-prompt", "--negative", "negative_prompt", default="", show_default=True, help="Negative prompt.")
@click.option("--steps", type=int, default=None,
              help="Sampling steps.  [default: the model's own (4 for the shipped LCM model), else 20]")
@click.option("--cfg", "cfg", type=float, default=None,
              help="Classifier-free guidance scale (<= 1 turns guidance off; a w-conditioned LCM UNet takes it as "
                   "w = cfg - 1).  [default: the model's own, else 7.5]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; image i of a batch uses seed + i.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="Sampler.  [default: the model's own (lcm for the shipped model), else euler]")
@click.option("--karras", is_flag=True, help="Karras sigmas (euler, euler_a, dpmpp_2m).")
@click.option("--width", type=int, default=None, help="Image width, a multiple of 8 (default: the model's native size).")
@click.option("--height", type=int, default=None, help="Image height, a multiple of 8 (default: the model's native size).")
@click.option("--clip-skip", type=int, default=0, show_default=True,
              help="CLIP layers to skip at the end (diffusers' clip_skip; A1111's 'Clip skip' is this + 1).")
@click.option("--batch", "batch", type=int, default=1, show_default=True, help="Number of images (seeds seed..seed+N-1).")
@click.option("--precision", default=None,
              help="Network precision: fp32, or w8a8 / w8a16 integer networks, or per network such as "
                   "w8a8,vae=w8a16 (a float model is then quantized on the fly with the default calibration prompts). Default: fp32 for a float model, the folder's own "
                   "precision for a quantized model folder.")
@click.option("--init-image", "init_image", type=click.Path(path_type=Path), default=None,
              help="img2img: start from this image (PNG, JPEG, ...) instead of noise, as diffusers' "
                   "StableDiffusionImg2ImgPipeline. The size defaults to the image's, rounded down to the model's "
                   "size multiple (64 for SD 1.x); --width/--height resize it.")
@click.option("--strength", type=float, default=None,
              help="img2img: how much of the init image is repainted, in (0, 1]; int(steps x strength) steps "
                   "are run.  [default: 0.8]")
def generate(prompt, output, model, negative_prompt, steps, cfg, seed, sampler, karras, width, height, clip_skip, batch,
             precision, init_image, strength):
    """Generate an image from PROMPT and write it as a PNG with A1111-style parameters."""
    from .defaults import GenerationDefaults
    from .pipeline import Pipeline, check_generation_args
    from .png import check_output_path, write_png

    given = (sampler, steps, cfg)  # None: the model's default, known once it is loaded
    early_sampler, early_steps, early_cfg = GenerationDefaults().resolve(*given)  # check the given values at once
    check_generation_args(prompt=prompt, negative_prompt=negative_prompt, steps=early_steps, guidance_scale=early_cfg,
                          seed=seed, sampler=early_sampler, width=width, height=height, karras=karras,
                          clip_skip=clip_skip, batch_size=batch)
    if init_image is not None or strength is not None:  # img2img: checked and read before the model is loaded
        from . import img2img

        if init_image is None:
            raise TinySDError("--strength is only used with --init-image")
        strength = img2img.check_strength(img2img.DEFAULT_STRENGTH if strength is None else strength)
        if steps is not None:
            img2img.start_index(steps, strength)  # refuses a strength that runs no step
        init_image = img2img.load_init_image(init_image)
    outputs = [output] if batch == 1 else [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(batch)]
    check_output_path(outputs[0])

    pipe = Pipeline.from_pretrained(model, precision=precision, low_memory=True)  # one generate: each network read when needed, dropped after use
    sampler, steps, cfg = pipe.defaults.resolve(*given)
    run_steps = steps if init_image is None else steps - img2img.start_index(steps, strength)
    width, height = pipe.check_args(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=cfg,
                                    seed=seed, sampler=sampler, width=width, height=height, karras=karras,
                                    clip_skip=clip_skip, batch_size=batch, init_image=init_image, strength=strength)
    for p in outputs[1:]:  # after the memory check has bounded the batch; they share the first one's folder
        check_output_path(p, probe=False)
    if verbosity(click.get_current_context()):
        from .runstats import NetworkStats

        pipe.stats = NetworkStats()
    with progress_bar(run_steps, f"tinysd {sampler}") as bar:
        def progress(done, total):
            bar.update(done - bar.pos)

        res = pipe.generate(prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=cfg, seed=seed,
                            sampler=sampler, width=width, height=height, karras=karras, clip_skip=clip_skip,
                            batch_size=batch, callback=progress, init_image=init_image, strength=strength)
    for img, params, p in zip(res.images, res.params, outputs):
        write_png(img, p, params)
        click.echo(f"wrote {p} ({params.width}x{params.height}, seed {params.seed})", err=True)
    _log_stats(pipe.stats)


def _log_stats(stats) -> None:
    """-v: per-network time and peak memory (tinysd.runstats), one log line each."""
    if stats is None:
        return
    for line in stats.lines():
        log.info("%s", line)
    from .kernels.precompile import kernel_counts

    compiled, loaded = kernel_counts()
    log.info("kernels: %d signatures compiled in this process, %d loaded from Numba's cache", compiled, loaded)


from .golden.cli import compare as _golden_compare, golden as _golden  # noqa: E402

cli.add_command(_golden)
cli.add_command(_golden_compare)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="Quantized model folder to write (its parent must exist; written atomically).")
@click.option("--precision", required=True, callback=_model_precision,
              help="w8a8: int8 weights, uint8 activations; w8a16: int8 weights, uint16 activations; per network: "
                   "w8a8,vae=w8a16 (text encoder and UNet w8a8, VAE w8a16; any of text_encoder, unet, vae).")
@click.option("--calibration-prompts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Prompt file, one prompt per line ('#' comments). Default: the shipped calibration prompts.")
@click.option("--calibration-steps", type=int, default=None,
              help=f"Sampler steps per calibration prompt.  [default: {DEFAULT_CALIBRATION_STEPS}, or a w-conditioned "
                   "(LCM) model's own step count; such a model is calibrated with its own sampler and guidance too]")
@click.option("--method", type=click.Choice(CALIBRATION_METHODS), default=None,
              help="Range estimate of the activations: minmax, percentile or mse (least squared quantization "
                   "error per tensor; best for w8a8).  [default: minmax]")
@click.option("--encodings", "encodings", multiple=True, metavar="[NET=]FILE",
              help="AIMET encodings (0.6.1, 1.0.0, 2.0.0, 2.1.0, AdaRound's file) for one network, NET one of "
                   "text_encoder, unet, vae, vae.decode, vae.encode (repeatable); a bare FILE holds tinysd names of "
                   "every network. Tensors a file lacks get a range derived from its encodings where the graph "
                   "bounds them (16-bit activations), else are calibrated.")
@click.option("--onnx", "onnx", multiple=True, metavar="NET=MODEL.onnx",
              help="The ONNX graph AIMET exported for NET: the file's names are mapped to tinysd's through it and its "
                   "weights are used (needs the onnx package: pip install 'tinysd[onnx]').")
@click.option("--sqnr-calls", type=int, default=None,
              help="Measure the SQNR on the first N calibration calls of each network only.  [default: all]")
@click.option("--weights", "weights", type=click.Choice(["nearest", "adaround"]), default="nearest", show_default=True,
              help="Weight rounding: nearest, or adaround (learned up/down rounding per layer on the calibration "
                   "data; docs/quantization.md section 11).")
@click.option("--adaround-iterations", type=int, default=None,
              help="AdaRound: Adam steps per layer.  [default: 1000]")
@click.option("--adaround-samples", type=int, default=None,
              help="AdaRound: input columns sampled per layer.  [default: 2048]")
@click.option("--adaround-inputs", type=click.Choice(["float", "quantized"]), default=None,
              help="AdaRound: each layer's inputs from the float network, or from the network whose earlier "
                   "layers are already AdaRounded (AIMET's; one replay per layer).  [default: float]")
@click.option("--adaround-calls", type=int, default=None,
              help="AdaRound: use at most N of the calibration run's calls per network entry point, evenly "
                   "spaced (0: all).  [default: 0]")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it is an existing quantized model folder.")
def quantize(model, output, precision, calibration_prompts, calibration_steps, method, encodings, onnx, sqnr_calls,
             weights, adaround_iterations, adaround_samples, adaround_inputs, adaround_calls, overwrite):
    """Quantize the float checkpoint MODEL into a self-contained integer model folder.

    Prints what came from encodings files and what was calibrated, and the SQNR of each network's
    integer output against float on the calibration data.
    """
    from .quant.adaround import AdaRoundSettings
    from .quant.workflow import quantize_checkpoint

    if weights != "adaround" and (adaround_iterations is not None or adaround_samples is not None
                                  or adaround_inputs is not None or adaround_calls is not None):
        raise TinySDError("--adaround-iterations / --adaround-samples / --adaround-inputs / --adaround-calls need "
                          "--weights adaround")
    knobs = {k: v for k, v in (("iterations", adaround_iterations), ("samples", adaround_samples),
                               ("inputs", adaround_inputs), ("calls", adaround_calls)) if v is not None}
    summary: dict = {}
    stats = None
    if verbosity(click.get_current_context()):
        from .runstats import NetworkStats

        stats = NetworkStats()
    with StageBars() as bars:
        out, sqnr = quantize_checkpoint(model, output, precision, prompts_file=calibration_prompts,
                                        steps=calibration_steps, method=method, encodings=encodings, onnx=onnx,
                                        overwrite=overwrite, sqnr_calls=sqnr_calls, progress=bars, summary=summary,
                                        weights=weights, adaround=AdaRoundSettings(**knobs), stats=stats)
    for line in summary.get("lines", []):
        click.echo(line)
    from .quant.model import network_precisions

    per_network = network_precisions(precision)
    for kind, db in sqnr.items():
        click.echo(f"{kind:<13} SQNR {db:7.2f} dB  (integer {per_network[kind.split('.')[0]]} vs float, "
                   f"calibration data)")
    click.echo(f"wrote {out} ({precision})", err=True)
    _log_stats(stats)


@cli.command("onnx-map")
@click.argument("graph", metavar="NET=MODEL.onnx")
@click.option("--model", type=click.Path(path_type=Path), required=True,
              help="The float checkpoint the graph was exported from (diffusers folder or .safetensors).")
@click.option("--encodings", "encodings", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Only the rows of the names in this AIMET encodings file.")
def onnx_map(graph, model, encodings):
    """Print how an exported ONNX graph's tensors map to tinysd's: ONNX name, tinysd name, why (tab-separated)."""
    from .checkpoint import load_checkpoint
    from .quant.calibration import model_graphs
    from .quant.imports import SOURCE_KEYS, Source
    from .quant.onnx_map import map_onnx

    key, sep, path = graph.partition("=")
    if not sep or key not in SOURCE_KEYS:
        raise click.BadParameter(f"{graph!r} is not NET=MODEL.onnx with NET one of {', '.join(SOURCE_KEYS)}",
                                 param_hint="GRAPH")
    src = Source(key, Path(path), Path(path))
    loaded = load_checkpoint(model)
    m = map_onnx(Path(path), src.network, model_graphs(loaded.config)[src.network], loaded.params[src.network],
                 src.calls)
    names = None
    if encodings is not None:
        from .quant.encodings import load_encodings

        act, par, _ = load_encodings(encodings)
        names = set(act) | set(par)
    click.echo(m.table(names), nl=False)


for _command in cli.commands.values():
    _add_verbose_option(_command)


def main(argv=None):
    """Run the app (the `tinysd` command and `python -m tinysd` enter through tinysd.__main__.main)."""
    return cli.main(args=argv, prog_name="tinysd")


if __name__ == "__main__":
    main()
