"""Real AIMET exports in (tests/fixtures/aimet, made by tools/make_aimet_fixtures.py with aimet-onnx and
aimet-torch 2.42.0; AIMET is not needed here): every file reads with no renaming, every graph maps
completely, and tinysd's integer UNet and VAE decoder are compared with AIMET's own QuantSim on the
same encodings and inputs.

Measured on this fixture (tools/aimet_targets.py prints the whole table; tinysd integer output vs
QuantSim output, SQNR over the evaluation calls):

| export | UNet w8a8 | UNet w8a16 | VAE decoder w8a8 | VAE decoder w8a16 |
|---|---|---|---|---|
| aimet-onnx sim.export | 27.2 dB | 75.2 dB | 28.6 dB | 76.6 dB |
| aimet-torch sim.onnx.export | 28.3 dB | 75.3 dB | 29.0 dB | 75.3 dB |

The w8a16 target (60 dB) is met (aimet-torch's UNet since its input quantizers are followed and the
tensors it leaves float get derived ranges; test_aimet_torch_unet_against_quantsim); the w8a8 target
(40 dB) is not: the first ops agree code for code
and then single-LSB differences in rounding (tinysd's integer requantization against QuantSim's
float32) grow through the random-weight 8-bit network (docs/quantization.md section 9.5). The
assertions below are those measured levels minus a margin, so a regression fails. (The UNet gained
1.7 / 1.2 dB when its timestep features started to follow the graph's quantization points.)
"""
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tinysd.checkpoint import load_checkpoint
from tinysd.errors import TinySDError
from tinysd.interp.trace import trace_network
from tinysd.quant.calibration import calibrate_observers, model_graphs, sqnr_db
from tinysd.quant.encodings import load_encodings, save_encodings
from tinysd.quant.imports import Source, range_warnings, read_sources
from tinysd.quant.onnx_map import map_onnx
from tinysd.nn.unet import timestep_features

pytest.importorskip("onnx")  # part of the test extra (pip install -e ".[test]")

FIXTURES = Path(__file__).parents[1] / "fixtures"
AIMET = FIXTURES / "aimet"
TINY = FIXTURES / "tiny-sd"
# the first calibration prompt of GENERATED.json (every tensor the tests compare comes from the files)
PROMPTS = "a red circle\n"
NETS = {"unet": ("unet", ("all",)), "vae_decoder": ("vae", ("decode",)), "vae_encoder": ("vae", ("encode",)),
        "text_encoder": ("text_encoder", ("all",))}
KEYS = {"unet": "unet", "vae_decoder": "vae.decode", "vae_encoder": "vae.encode", "text_encoder": "text_encoder"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The archive extracted once; each file checked against the SHA-256 GENERATED.json records."""
    root = tmp_path_factory.mktemp("aimet")
    with tarfile.open(AIMET / "exports.tar.xz") as tar:
        tar.extractall(root, filter="data")
    meta = json.loads((AIMET / "GENERATED.json").read_text())
    for rel, digest in meta["files"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    return root, meta


@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint(TINY)


def _graph_of(enc_path: Path) -> Path:
    """The ONNX graph AIMET wrote with an encodings file: `{net}_{version}.onnx` beside it, else `{net}.onnx`."""
    own = enc_path.with_suffix(".onnx")
    return own if own.exists() else enc_path.parent / f"{enc_path.parent.parent.name}.onnx"


def test_every_file_reads_and_every_graph_maps_completely(exports, tiny):
    """Every encodings file reads as AIMET wrote it; through its graph every name it holds has a row of the
    mapping table (a tinysd tensor, or said to be a folded constant / host-side value); every tensor of
    tinysd's graph has an ONNX counterpart; conv / linear weights are all found."""
    root, meta = exports
    graphs = model_graphs(tiny.config)
    maps: dict[str, object] = {}
    n_files = 0
    for enc_path in sorted(root.rglob("*.encodings")):
        folder = enc_path.parent.parent.name
        net, calls = NETS[folder]
        act, par, version = load_encodings(enc_path)
        assert version in ("0.6.1", "1.0.0", "2.0.0", "2.1.0", "adaround"), enc_path
        onnx_path = _graph_of(enc_path) if version != "adaround" else enc_path.parent / f"{folder}_1.0.0.onnx"
        key = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if key not in maps:
            m = map_onnx(onnx_path, net, graphs[net], tiny.params[net], calls)
            need = {op.tensor for op in trace_network(graphs[net], net, calls).ops if op.tensor}
            assert need <= set(m.activations.values()), sorted(need - set(m.activations.values()))[:5]
            gemm = {f"{net}.{op.name}.weight" for op in trace_network(graphs[net], net, calls).ops
                    if op.kind in ("conv2d", "linear")}
            assert gemm <= {t for t, _ in m.params.values()}
            maps[key] = m
        m = maps[key]
        n_files += 1
        if version == "adaround":  # PyTorch parameter names: placed by the graph's weight values (see below)
            continue
        rows = {r.onnx: r for r in m.rows}
        names = set(act) | set(par)
        unknown = [n for n in names if n not in rows]
        assert not unknown, (enc_path, unknown[:5])
        placed = [n for n in names if rows[n].tinysd is not None]
        assert len(placed) > 0.5 * len(names) or version == "adaround", enc_path
        for n in names - set(placed):
            assert rows[n].why.startswith(("constant", "graph input before", "initializer not read")) or \
                "computed by tinysd on the host" in rows[n].why, (enc_path, n, rows[n].why)
    assert n_files == sum(1 for f in meta["files"] if f.endswith(".encodings"))
    assert n_files >= 50


@pytest.fixture(scope="module")
def quantized(exports, tiny, tmp_path_factory):
    """The tiny model quantized with aimet-onnx's UNet and VAE decoder files (1.0.0), W8A8 and W8A16,
    through `quantize_checkpoint` as `tinysd quantize --encodings ... --onnx ...` runs it."""
    from tinysd.quant.folder import load_quantized
    from tinysd.quant.workflow import quantize_checkpoint

    root, _ = exports
    work = tmp_path_factory.mktemp("q")
    prompts = work / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = {}
    for prec in ("w8a8", "w8a16"):
        enc, onnx = [], []
        for folder in ("unet", "vae_decoder"):
            d = root / "aimet-onnx" / folder / prec
            enc.append(f"{KEYS[folder]}={d / f'{folder}_1.0.0.encodings'}")
            onnx.append(f"{KEYS[folder]}={d / f'{folder}.onnx'}")
        summary: dict = {}
        folder, _ = quantize_checkpoint(TINY, work / prec, prec, prompts_file=prompts, steps=2, encodings=enc,
                                        onnx=onnx, sqnr_calls=1, summary=summary)
        out[prec] = (load_quantized(folder), summary)
    return out


def _integer_outputs(qmodel, net: str) -> np.ndarray:
    """tinysd's integer `net` on every evaluation call of the fixture, stacked like quantsim.npz."""
    from tinysd.quant.engine import build_integer_networks

    inputs = np.load(AIMET / "inputs.npz")
    _, unet, vae = build_integer_networks(qmodel)
    outs, i = [], 0
    while f"eval/{net}/{i}/" + ("sample" if net == "unet" else "latent") in inputs:
        p = f"eval/{net}/{i}/"
        outs.append(unet(inputs[p + "sample"], float(inputs[p + "timestep"][0]), inputs[p + "encoder_hidden_states"])
                    if net == "unet" else vae.decode(inputs[p + "latent"]))
        i += 1
    return np.stack(outs)


def _against_quantsim(qmodel, net: str, tool: str, prec: str) -> float:
    return sqnr_db(np.load(AIMET / "quantsim.npz")[f"{tool}/{net}/{prec}"], _integer_outputs(qmodel, net))


# measured (module docstring) minus about 2 dB
FLOORS = {("unet", "w8a8"): 25.0, ("unet", "w8a16"): 73.0, ("vae_decoder", "w8a8"): 26.5,
          ("vae_decoder", "w8a16"): 72.0}


@pytest.mark.parametrize("net,prec", list(FLOORS))
def test_integer_networks_against_aimet_quantsim(quantized, net, prec):
    db = _against_quantsim(quantized[prec][0], net, "aimet-onnx", prec)
    assert db >= FLOORS[net, prec], f"{net} {prec}: {db:.2f} dB"
    if prec == "w8a16":
        assert db >= 60.0  # the target


def test_what_came_from_the_files_is_reported(quantized):
    """Everything the UNet and decoder need came from the files (nothing calibrated), the ops the files
    quantize inside run as their parts, and the graphs' weights are the checkpoint's."""
    qmodel, summary = quantized["w8a8"]
    info = qmodel.info["encodings_import"]
    assert set(info) == {"unet", "vae"}
    assert info["unet"]["calibrated"] == [] and info["unet"]["from_file"] > 400
    parts = info["unet"]["parts"]
    assert any(p == ["sigmoid"] for p in parts.values()) and any("erf" in p for p in parts.values())
    assert any(p == ["norm", "mul"] for p in parts.values()) and any("a_scaled" in p for p in parts.values())
    assert any(line.startswith("unet: 304 parameters taken from the graph; 0 of 71500 values") for line in
               summary["lines"]), summary["lines"]
    assert any(line.startswith("unet: ") and " calibrated " in line for line in summary["lines"])
    # networks without a file are calibrated as before
    assert qmodel.info["encodings_files"] and {f["key"] for f in qmodel.info["encodings_files"]} == {"unet",
                                                                                                       "vae.decode"}
    assert summary["warnings"] == []


def test_timestep_features_follow_the_graph(exports, quantized, tiny):
    """aimet-onnx quantizes the timestep, the frequencies, their product, Sin, Cos and the Concat before
    `time_proj`: those encodings are mapped and kept, and the integer UNet's `time_proj` input is computed
    from them (t = 1 is the grid value 1.96 at W8A8), not from the float features."""
    from tinysd.interp.integer import IntegerInterpreter
    from tinysd.interp.parts import TIME_PARTS, device_timestep_features

    root, _ = exports
    m = map_onnx(root / "aimet-onnx" / "unet" / "w8a8" / "unet.onnx", "unet", model_graphs(tiny.config)["unet"],
                 tiny.params["unet"])
    placed = {r.tinysd for r in m.rows if r.tinysd and r.tinysd.startswith("unet.time_proj.")}
    assert placed == {f"unet.time_proj.{p}.out" for p in TIME_PARTS} | {"unet.time_proj.mul.const"}
    d = root / "aimet-torch-onnx" / "unet" / "w8a8"  # aimet-torch leaves diffusers' Timesteps float
    m = map_onnx(d / "unet_1.0.0.onnx", "unet", model_graphs(tiny.config)["unet"], tiny.params["unet"])
    time_names = {r.onnx for r in m.rows if r.tinysd and r.tinysd.startswith("unet.time_proj.")}
    assert len(time_names) >= 6 and not time_names & set(load_encodings(d / "unet_1.0.0.encodings")[0])
    cfg = tiny.config.unet
    for prec in ("w8a8", "w8a16"):
        qnet = quantized[prec][0].networks["unet"]
        acts = qnet.activations
        assert {f"unet.time_proj.{p}.out" for p in TIME_PARTS} | {"unet.time_proj.mul.const"} <= set(acts)
        got = IntegerInterpreter(qnet).timestep_features(1, 2, cfg.block_out_channels[0], True, 0)
        t_enc = acts["unet.time_proj.timestep.out"]
        tq = float(t_enc.dequantize(t_enc.quantize(np.float64(1.0))))
        encs = {p: acts[f"unet.time_proj.{p}.out"] for p in TIME_PARTS} | {"const": acts["unet.time_proj.mul.const"]}
        np.testing.assert_array_equal(got, device_timestep_features(1, 2, cfg.block_out_channels[0], True, 0, encs))
        c = acts["unet.time_proj.concat.out"]
        assert np.array_equal(c.dequantize(c.quantize(got)), got)  # on the Concat's grid
        if prec == "w8a8":
            assert abs(tq - 1.9647) < 1e-3
            assert np.max(np.abs(got - timestep_features(1, 2, cfg.block_out_channels[0], True, 0))) > 0.05


def test_import_adds_no_error(exports, quantized, tiny, tmp_path):
    """The same AIMET file renamed by hand to tinysd names (a single tinysd-named file, written from the
    mapping table) gives the same integers as `--encodings unet=FILE --onnx unet=MODEL.onnx` did."""
    from tinysd.quant.prepare import quantize_network

    root, _ = exports
    d = root / "aimet-onnx" / "unet" / "w8a8"
    m = map_onnx(d / "unet.onnx", "unet", model_graphs(tiny.config)["unet"], tiny.params["unet"])
    rows = {}
    for r in m.rows:
        rows.setdefault(r.onnx, r)
    act, par, _ = load_encodings(d / "unet_1.0.0.encodings")
    renamed_act, renamed_par = {}, {}
    for name, enc in list(act.items()) + list(par.items()):
        r = rows[name]
        if r.tinysd is None or r.role == "bias":
            continue
        if r.role in ("weight", "param"):
            renamed_par[r.tinysd] = enc
        else:
            renamed_act.setdefault(r.tinysd, enc)
    renamed = tmp_path / "renamed.encodings"
    save_encodings(renamed, renamed_act, renamed_par)
    imp = read_sources(tiny, [Source("", renamed)])["unet"]  # a bare file of tinysd names
    assert set(imp.parts) == set(quantized["w8a8"][0].info["encodings_import"]["unet"]["parts"])
    by_hand = quantize_network(model_graphs(tiny.config)["unet"], tiny.params["unet"], "unet", "w8a8",
                               imp.activations, {**imp.params, **imp.norm_params}, follow_softmax=True)
    via_graph = quantized["w8a8"][0].networks["unet"]
    assert by_hand.arrays.keys() == via_graph.arrays.keys()
    for k, a in via_graph.arrays.items():
        np.testing.assert_array_equal(by_hand.arrays[k], a, err_msg=k)
    time = {k: e for k, e in via_graph.activations.items() if k.startswith("unet.time_proj.")}
    assert len(time) == 6 and all(by_hand.activations[k] == e for k, e in time.items())  # the timestep features


def test_adaround_weights_come_from_the_graph(exports, tiny, tmp_path):
    """AIMET's AdaRound file (no version, PyTorch parameter names) with the graph it exported: the
    weights are the graph's (AdaRound moved some off the checkpoint's nearest grid points) and lie on
    the file's grid, so the int8 weights are AdaRound's."""
    root, meta = exports
    d = root / "aimet-torch-adaround" / "unet" / "w8a8"
    imported = read_sources(tiny, [Source("unet", d / "unet_adaround.encodings", d / "unet_1.0.0.onnx")])
    imp = imported["unet"]
    assert imp.files[0]["aimet_version"] == "adaround" and not imp.activations and not imp.unplaced
    # every conv / linear weight: the linear ones, which the graph holds transposed under other names
    # ("...to_q.weight_0"), placed by the grid their values lie on
    assert len(imp.params) == 121 and len(imp.weights) >= 121
    moved = total = 0
    for full, enc in imp.params.items():
        w = imp.weights[full[len("unet."):]]
        q = enc.quantize(w)
        np.testing.assert_allclose(enc.dequantize(q), w, rtol=0, atol=float(np.max(enc.scale)) * 1e-3, err_msg=full)
        ckpt = np.asarray(tiny.params["unet"][full[len("unet."):]])
        moved += int(np.count_nonzero(enc.quantize(ckpt) != q))
        total += q.size
    assert 0 < moved < 0.5 * total  # AdaRound moves some weights one step, not most


def test_wrong_mapping_is_caught(exports, tiny):
    """Two encodings swapped by a wrong renaming: the tensor whose values now lie far outside its
    encoding gets one warning line naming it (the other, now under a much wider encoding, is only
    coarser: not reported, since the file's calibration data may be wider than tinysd's)."""
    root, _ = exports
    d = root / "aimet-onnx" / "unet" / "w8a16"
    imp = read_sources(tiny, [Source("unet", d / "unet_2.0.0.encodings", d / "unet.onnx")])
    obs = calibrate_observers(tiny, PROMPTS.split("\n")[:1], 1)
    ranges = {n: {k: o.range() for k, o in ob.items()} for n, ob in obs.items()}
    assert range_warnings(imp, ranges) == []
    a, b = "unet.conv_in.out", "unet.time_embedding.act.sigmoid.out"
    acts = imp["unet"].activations
    acts[a], acts[b] = acts[b], acts[a]
    lines = range_warnings(imp, ranges)
    assert len(lines) == 1 and lines[0].startswith(a + ": float range") and "a wrong mapping" in lines[0], lines


def test_bad_sources_are_one_line_errors(exports, tiny):
    from tinysd.quant.imports import parse_sources

    root, _ = exports
    d = root / "aimet-onnx" / "unet" / "w8a8"
    for enc, onnx, needle in (
        (["unet=a", "unet=b"], [], "given twice"),
        (["a", "unet=b"], [], "cannot be combined"),
        (["vae=a", "vae.decode=b"], [], "not both"),
        (["unet=a"], ["vae=b"], "no --encodings vae"),
        (["unet=a"], ["b.onnx"], "say which network"),
        (["unet=a"], ["unet=x", "unet=y"], "given twice"),
        (["foo=a"], [], "'foo' is not one of"),
    ):
        with pytest.raises(TinySDError, match=needle):
            parse_sources(enc, onnx)
    with pytest.raises(TinySDError, match="not tinysd tensors of unet"):  # AIMET names need the graph
        read_sources(tiny, [Source("unet", d / "unet_1.0.0.encodings")])
    with pytest.raises(TinySDError, match="no ONNX node computes tinysd's"):  # the decoder's graph is not a UNet
        read_sources(tiny, [Source("unet", d / "unet_1.0.0.encodings",
                                   root / "aimet-onnx" / "vae_decoder" / "w8a8" / "vae_decoder.onnx")])
    broken = d.parent.parent / "broken.onnx"
    shutil.copy(d / "unet.onnx", broken)
    broken.write_bytes(broken.read_bytes()[:1000])
    with pytest.raises(TinySDError, match="not a readable ONNX model"):
        read_sources(tiny, [Source("unet", d / "unet_1.0.0.encodings", broken)])


def test_float_left_tensors_get_derived_ranges(exports, tiny):
    """aimet-torch's file leaves the attention core, GEGLU's GELU parts, residual adds and reused SiLUs float,
    and its `_dup_0` Identity copies carry a norm's (or conv's) input quantizer, not the residual's encoding.
    Through the graph: each copy is its reader's `input` part (not the tensor's encoding); the float-left
    tensors get ranges
    derived from the file's encodings (the context is V's range, each GELU part follows from the last, an
    add is the sum of its inputs'), and only the attention scores stay calibrated."""
    from tinysd.quant.derived import activation_range, derive_missing
    from tinysd.quant.imports import merge
    from tinysd.quant.observers import encoding_from_range
    from tinysd.quant.prepare import softmax_encoding

    root, _ = exports
    d = root / "aimet-torch-onnx" / "unet" / "w8a16"
    imp = read_sources(tiny, [Source("unet", d / "unet_2.0.0.encodings", d / "unet_2.0.0.onnx")])
    u = imp["unet"]
    blk = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    m = map_onnx(d / "unet_2.0.0.onnx", "unet", model_graphs(tiny.config)["unet"], tiny.params["unet"])
    dups = [r for r in m.rows if r.onnx.endswith("_dup_0")]
    assert len(dups) == 23 and all(r.role == "part" and r.tinysd.endswith(".input.out") for r in dups)
    row = m.find("/unet/down_blocks.0/attentions.0/transformer_blocks.0/Add_1_output_0_dup_0")
    assert row.tinysd == f"{blk}.norm3.input.out" and f"a copy of {blk}.add2.out" in row.why
    assert u.parts[blk[len("unet."):] + ".norm3"] == ("input",) and f"{blk}.norm3.input.out" in u.activations
    assert not u.reader_inputs
    trace = trace_network(model_graphs(tiny.config)["unet"], "unet")
    names = {op.tensor for op in trace.ops if op.tensor}
    for op, parts in u.parts.items():
        if parts != ("requant",):
            names |= {f"unet.{op}.{p}.out" for p in parts}
    dummy = softmax_encoding(16)  # what calibration would give: replaced where a range is derived
    softmax = {op.tensor for op in trace.ops if op.kind == "softmax"}
    acts, report = merge(imp, {"unet": {n: dummy for n in names}}, {"unet": softmax})
    assert f"{blk}.add2.out" in report.calibrated["unet"]  # the reader copy's encoding is not the sum's
    derive_missing(acts, report, {"unet": trace}, {"unet": 16}, {"unet": u.parts})
    enc = acts["unet"]
    assert sorted(report.calibrated["unet"]) == sorted(n for n in names if n.endswith(".scores.out"))
    v, ctx = enc[f"{blk}.attn1.to_v.out"], enc[f"{blk}.attn1.context.out"]
    assert abs(ctx.min[0] - v.min[0]) <= ctx.scale[0] and abs(ctx.max[0] - v.max[0]) <= ctx.scale[0]
    gelu = f"{blk}.ff.net.0.gelu"
    assert {f"{gelu}.{p}.out" for p in ("erf", "add", "mul")} | {f"{gelu}.out"} <= set(report.derived["unet"])
    a, b, s = enc[f"{blk}.add1.out"], enc[f"{blk}.attn2.to_out.0.out"], enc[f"{blk}.add2.out"]
    assert abs(s.min[0] - (a.min[0] + b.min[0])) <= s.scale[0] and abs(s.max[0] - (a.max[0] + b.max[0])) <= s.scale[0]
    n, act = enc["unet.mid_block.resnets.0.norm1.out"], enc["unet.mid_block.resnets.0.act1.out"]
    lo, hi = activation_range("silu", n.min[0], n.max[0])
    assert abs(act.min[0] - lo) <= act.scale[0] and abs(act.max[0] - hi) <= act.scale[0]
    # 8 bits: nothing structural; a value with a reader copy gets the copy's encoding (AIMET's range of it)
    acts, report = merge(imp, {"unet": {n: dummy for n in names}}, {"unet": softmax})
    derive_missing(acts, report, {"unet": trace}, {"unet": 8}, {"unet": u.parts})
    assert set(report.derived["unet"]) >= {f"{blk}.add2.out", f"{blk}.add1.out"} and len(report.derived["unet"]) == 23
    copy = u.activations[f"{blk}.norm3.input.out"]  # (a 16-bit file: its range on the 8-bit grid here)
    assert acts["unet"][f"{blk}.add2.out"] == encoding_from_range(float(copy.min[0]), float(copy.max[0]), 8)
    assert f"{blk}.attn1.context.out" in report.calibrated["unet"]


def test_a_reader_copy_read_by_another_op_is_not_used(exports, tiny, tmp_path):
    """An Identity copy whose one reader is not a conv, linear or norm (here the real aimet-torch graph with
    its norm3 copy rewired: the norm reads the value, the residual add the copy) is listed as a "reader copy",
    and its encoding is used for nothing: not as the add's input, not as the value's encoding."""
    import onnx

    root, _ = exports
    d = root / "aimet-torch-onnx" / "unet" / "w8a16"
    blk = "/unet/down_blocks.0/attentions.0/transformer_blocks.0"
    value, copy = f"{blk}/Add_1_output_0", f"{blk}/Add_1_output_0_dup_0"
    model = onnx.load(d / "unet_2.0.0.onnx")
    swapped = 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if node.name == f"{blk}/norm3/LayerNormalization" and name == copy:
                node.input[i], swapped = value, swapped + 1
            elif node.name == f"{blk}/Add_2" and name == value:
                node.input[i], swapped = copy, swapped + 1
    assert swapped == 2
    onnx.save(model, tmp_path / "unet.onnx")
    m = map_onnx(tmp_path / "unet.onnx", "unet", model_graphs(tiny.config)["unet"], tiny.params["unet"])
    row = m.find(copy)
    assert row.role == "reader copy" and f"Add {blk}/Add_2" in row.why and copy not in m.activations
    u = read_sources(tiny, [Source("unet", d / "unet_2.0.0.encodings", tmp_path / "unet.onnx")])["unet"]
    t = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    assert "input" not in u.parts.get(t[len("unet."):] + ".norm3", ())
    assert not {f"{t}.norm3.input.out", f"{t}.add2.out", f"{t}.add3.out"} & set(u.activations)
    # the unchanged graph: the same copy is norm3's input part
    u0 = read_sources(tiny, [Source("unet", d / "unet_2.0.0.encodings", d / "unet_2.0.0.onnx")])["unet"]
    assert f"{t}.norm3.input.out" in u0.activations


def test_aimet_torch_unet_against_quantsim(exports, tmp_path):
    """aimet-torch's W8A16 UNet (sim.onnx.export): with its input quantizers followed (`input` parts) and the
    tensors it leaves float given derived ranges, tinysd's integer UNet is within the 60 dB target of
    QuantSim (measured 75.3 dB with the fixture's two calibration prompts; 42.8 dB before either)."""
    from tinysd.quant.folder import load_quantized
    from tinysd.quant.workflow import quantize_checkpoint

    root, _ = exports
    d = root / "aimet-torch-onnx" / "unet" / "w8a16"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    summary: dict = {}
    out, _ = quantize_checkpoint(TINY, tmp_path / "q", "w8a16", prompts_file=prompts, steps=2,
                                 encodings=[f"unet={d / 'unet_2.0.0.encodings'}"],
                                 onnx=[f"unet={d / 'unet_2.0.0.onnx'}"], sqnr_calls=1, summary=summary)
    assert len(summary["derived"]["unet"]) == 92 and len(summary["calibrated"]["unet"]) == 12
    db = _against_quantsim(load_quantized(out), "unet", "aimet-torch", "w8a16")
    assert db >= 73.0, f"{db:.2f} dB"


def test_aimet_torch_sim_export_unet_as_aimet_reads_it(exports, tmp_path):
    """aimet-torch's older `sim.export` W8A16 UNet: its file names the norms' input quantizers after the residual
    values, so a reader quantizes the residual stream where aimet-torch's QuantSim did not. AIMET's own other
    simulator shows it: aimet-onnx's QuantSim on the same graph and file (readback.npz, made by
    `tools/aimet_divergence.py --crosscheck --save`) is 48.4 dB from aimet-torch's QuantSim, below the 60 dB
    target. tinysd follows the file as aimet-onnx reads it: measured 75.0 dB against that reading and 48.5 against
    aimet-torch's QuantSim (75.7 / 48.5 with tools/aimet_targets.py's two calibration prompts: docs/quantization.md
    section 9.5)."""
    from tinysd.quant.folder import load_quantized
    from tinysd.quant.workflow import quantize_checkpoint

    root, _ = exports
    readback = np.load(AIMET / "readback.npz")
    generated = json.loads(str(readback["__generated__"]))
    assert generated["exports.tar.xz"] == hashlib.sha256((AIMET / "exports.tar.xz").read_bytes()).hexdigest()
    aimet_onnx_reading = readback["aimet-torch-export/unet/w8a16"]
    quantsim = np.load(AIMET / "quantsim.npz")["aimet-torch/unet/w8a16"]
    assert sqnr_db(quantsim, aimet_onnx_reading.reshape(quantsim.shape)) < 50.0  # AIMET against AIMET

    d = root / "aimet-torch-export" / "unet" / "w8a16"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out, _ = quantize_checkpoint(TINY, tmp_path / "q", "w8a16", prompts_file=prompts, steps=2,
                                 encodings=[f"unet={d / 'unet_1.0.0.encodings'}"],
                                 onnx=[f"unet={d / 'unet_1.0.0.onnx'}"], sqnr_calls=1, summary={})
    got = _integer_outputs(load_quantized(out), "unet")
    db = sqnr_db(aimet_onnx_reading.reshape(got.shape), got)
    assert db >= 73.0, f"{db:.2f} dB"
