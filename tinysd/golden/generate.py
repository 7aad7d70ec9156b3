"""`tinysd golden`: run a quantized model's text-to-image pipeline and dump its integer tensors.

    generate_golden("q-w8a8/", "golden/", ["a red circle"], steps=2, networks=("unet",),
                    layers="down_blocks.0.*", at_steps=[0])

The pipeline (`tinysd.pipeline.Pipeline`) runs exactly as `tinysd generate` would,
with the quantized folder's integer networks; each selected network call is run
under a `RecordingInterpreter` and written as one case:

    p{i:03d}/text_encoder              the text encoder call of prompt i (negative + prompt)
    p{i:03d}/unet/step{s:03d}          the UNet call of sampler step s (both CFG halves)
    p{i:03d}/vae                       the VAE decoder call
    p{i:03d}/vae.encode                with an init image (img2img): the VAE encoder call (its graph
                                       is not recorded: the manifest's "vae" graph is the decoder's)
    {call case}/layers/{op name}       one cut layer case per op matching --layers
    graph/{network}                    with --with-params: the run-time parameters of every op of
                                       the network (its graph is in the manifest's "graphs")

A network case holds the call's integer inputs (what the integer interpreter made of
the host inputs, plus token/position ids) and its integer output (before
dequantization); a layer case is described in `tinysd.golden.cases`. Every prompt uses
the same seed. The folder is written atomically (`GoldenWriter`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import TinySDError
from ..interp.record import RecordingInterpreter
from .cases import CropLimits, graph_params_case, layer_case, network_case, ops_with_parts, runs_as_parts
from ..png import MODEL_HASH_METHOD, folder_sha256
from .writer import GoldenWriter, check_target

log = logging.getLogger(__name__)

NETWORK_CHOICES = {"clip": ("text_encoder",), "unet": ("unet",), "vae": ("vae",),
                   "all": ("text_encoder", "unet", "vae")}
def parse_at_steps(text: str | None, steps: int) -> list[int] | None:
    """"0,19" -> [0, 19]; None -> None (all steps). TinySDError naming --at-steps when malformed or >= steps."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise TinySDError(f"--at-steps: {part!r} is not a step number (give e.g. 0,19)") from None
        if not 0 <= v < steps:
            raise TinySDError(f"--at-steps: step {v} outside 0..{steps - 1} (--steps {steps})")
        out.append(v)
    return sorted(set(out))


class _Tap:
    """Stands in for a pipeline network: runs selected calls under a RecordingInterpreter and writes their cases."""

    def __init__(self, net, select, on_records, match: str | None, graph=lambda: False):
        self._net = net
        self._match = match  # layer glob (None: network boundary only)
        self._select = select  # call index -> bool
        self._on_records = on_records  # (call index, recorder) -> None
        self._graph = graph  # () -> whether this call's graph is still wanted
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._net, name)

    def _run(self, fn, kind: str | None = None):
        i = self.calls
        self.calls += 1
        if not self._select(i):
            return fn()
        inner = self._net.interp
        graph = self._graph() if kind is None else False  # a network's graph is that of its main call
        rec = RecordingInterpreter(inner, match=self._match, ops=self._match is not None, graph=graph)
        self._net.interp = rec
        try:
            y = fn()
        finally:
            self._net.interp = inner
        self._on_records(i, rec, kind)
        return y

    def __call__(self, *args, **kwargs):
        return self._run(lambda: self._net(*args, **kwargs))

    def decode(self, *args, **kwargs):
        return self._run(lambda: self._net.decode(*args, **kwargs))

    def encode(self, *args, **kwargs):
        return self._run(lambda: self._net.encode(*args, **kwargs), "encode")

    def encode_moments(self, *args, **kwargs):
        return self._run(lambda: self._net.encode_moments(*args, **kwargs), "encode")


def generate_golden(model, out_dir, prompts: Sequence[str], *, negative_prompt: str = "", seed: int = 0,
                    steps: int = 20, sampler: str = "euler", karras: bool = False, cfg: float = 7.5,
                    width: int | None = None, height: int | None = None, network: str = "all",
                    layers: str | None = None, at_steps: Sequence[int] | None = None, storage: str = "npy",
                    layout: str = "nchw", limits: CropLimits | None = CropLimits(), overwrite: bool = False,
                    progress=None, with_params: bool = False, init_image=None, strength: float | None = None) -> Path:
    """Write a golden folder for a quantized model folder `model` (see the module docstring).

    network: "clip", "unet", "vae" or "all". layers: glob of op names for layer cases (None: none;
    a glob that matches no op of the selected networks is a TinySDError once each has run once).
    at_steps: UNet steps to dump (None: all). limits: layer-case cut limits (None: whole layers).
    progress(done, total) is called after every sampler step. The graph of each dumped network
    is recorded from its first dumped call; with_params also stores every op's run-time
    parameters (case `graph/{network}`), so that a call can be recomputed from the folder
    alone (`tinysd.golden.graph`). init_image, strength: img2img as `Pipeline.generate` (the VAE
    encoder call is dumped too, as `p{i:03d}/vae.encode`). Returns the folder path.
    """
    from ..pipeline import Pipeline, check_generation_args
    from ..quant.folder import is_quantized_folder

    out_dir = Path(out_dir)
    if network not in NETWORK_CHOICES:
        raise TinySDError(f"--network: {network!r} not in {', '.join(NETWORK_CHOICES)}")
    prompts = list(prompts)
    if not prompts:
        raise TinySDError("--prompt/--prompts: no prompt given")
    check_generation_args(prompt=prompts[0], negative_prompt=negative_prompt, steps=steps, guidance_scale=cfg,
                          seed=seed, sampler=sampler, width=width, height=height, karras=karras)
    if at_steps is not None:
        bad = [s for s in at_steps if not 0 <= s < steps]
        if bad:
            raise TinySDError(f"--at-steps: step {bad[0]} outside 0..{steps - 1} (--steps {steps})")
    init_path = None
    if init_image is not None or strength is not None:
        from ..img2img import DEFAULT_STRENGTH, as_init_image, check_strength

        if init_image is None:
            raise TinySDError("--strength is only used with --init-image")
        strength = check_strength(DEFAULT_STRENGTH if strength is None else strength)
        init_path = str(init_image) if isinstance(init_image, (str, Path)) else None
        init_image = as_init_image(init_image)
    check_target(out_dir, overwrite)
    model = Path(model)
    if not is_quantized_folder(model):
        raise TinySDError(f"--model {model}: not a quantized model folder (make one with `tinysd quantize`)")
    pipe = Pipeline.from_pretrained(model)
    width, height = pipe.check_args(prompt=prompts[0], negative_prompt=negative_prompt, steps=steps,
                                    guidance_scale=cfg, seed=seed, sampler=sampler, width=width, height=height,
                                    karras=karras, init_image=init_image, strength=strength)
    selected = NETWORK_CHOICES[network]
    settings = {"prompts": prompts, "negative_prompt": negative_prompt, "seed": seed, "steps": steps,
                "sampler": sampler, "karras": karras, "cfg": cfg, "width": width, "height": height,
                "network": network, "networks": list(selected), "layers": layers,
                "at_steps": None if at_steps is None else sorted(set(at_steps)),
                "layer_limits": None if limits is None else limits.__dict__, "format": storage, "layout": layout,
                "with_params": bool(with_params)}
    if init_image is not None:
        settings.update(init_image=init_path, strength=strength)
    model_info = {"name": model.resolve().name, "precision": pipe.precision, "sha256": folder_sha256(model),
                  "hash_method": MODEL_HASH_METHOD}
    step_set = None if at_steps is None else set(at_steps)
    with GoldenWriter(out_dir, storage, layout, overwrite=overwrite, model=model_info, settings=settings) as w:
        state = {"prompt": 0, "layer_cases": 0}
        nets = {"text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae": pipe.vae}
        graphs = w.manifest["graphs"]

        def writer_for(name):
            qnet = nets[name].interp.qnet
            parted = ops_with_parts(qnet)

            def on_records(call, rec, kind=None):
                p = f"p{state['prompt']:03d}"
                step = call if name == "unet" else None
                cid = f"{p}/unet/step{call:03d}" if name == "unet" else f"{p}/{name}"
                if kind is not None:  # the VAE encoder call of img2img
                    cid = f"{p}/{name}.{kind}"
                w.write_case(network_case(rec.records, name, cid, qnet, step=step))
                for r in rec.records:
                    if r.matched and runs_as_parts(r, parted):
                        log.info("golden: %s.%s runs as its parts; no layer case (the network case covers it)", name,
                                 r.name)
                    elif r.matched:
                        w.write_case(layer_case(r, name, f"{cid}/layers/{r.name}", qnet, limits, step=step))
                        state["layer_cases"] += 1
                if rec.graph is not None:
                    graph = rec.graph.to_json()
                    params = None
                    if with_params:
                        params = f"graph/{name}"
                        w.write_case(graph_params_case(graph, name, params, rec, qnet))
                    w.add_graph(name, graph, cid, params)
                if layers is not None and not state["layer_cases"] and set(selected) <= set(graphs):
                    some = next(f"{n}.{op['name']}" for n in selected for op in graphs[n]["ops"]
                                if op["op"] not in ("input", "output") and op["name"])
                    raise TinySDError(f"--layers {layers!r}: matches no op of {', '.join(selected)} "
                                      f"(op names look like {some})")
            return on_records

        for i, prompt in enumerate(prompts):
            state["prompt"] = i
            taps = {}
            for name, net in nets.items():
                def sel(call, n=name):
                    return n in selected and (n != "unet" or step_set is None or call in step_set)

                taps[name] = _Tap(net, sel, writer_for(name), layers, graph=lambda n=name: n not in graphs)
            pipe.text_encoder, pipe.unet, pipe.vae = taps["text_encoder"], taps["unet"], taps["vae"]
            try:
                pipe.generate(prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=cfg, seed=seed,
                              sampler=sampler, width=width, height=height, karras=karras, callback=progress,
                              init_image=init_image, strength=strength)
            finally:
                pipe.text_encoder, pipe.unet, pipe.vae = nets["text_encoder"], nets["unet"], nets["vae"]
            log.info("golden: prompt %d/%d done", i + 1, len(prompts))
    log.info("golden: wrote %s (tinysd %s)", out_dir, __version__)
    return out_dir
