"""A golden folder records each network's graph: a whole network call is recomputed from the folder alone
(graph, parameters and inputs, reference kernels only), bit for bit; and the golden command's edge cases."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinysd import cli as cli_module
from tinysd.errors import TinySDError
from tinysd.golden import GoldenFolder, load_manifest
from tinysd.golden.graph import recompute_call

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny-sd"


def run(*args):
    return CliRunner().invoke(cli_module.cli, list(map(str, args)))


def one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinysd: error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_model, quantize_model
    from tinysd.quant.folder import save_quantized

    loaded = load_checkpoint(TINY)
    q = quantize_model(loaded, "w8a8", calibrate_model(loaded, ["a red circle"], 1))
    return save_quantized(q, tmp_path_factory.mktemp("q") / "tiny-w8a8", tokenizer_dir=loaded.tokenizer_dir)


@pytest.fixture(scope="module")
def golden(qmodel, tmp_path_factory):
    out = tmp_path_factory.mktemp("g") / "golden"
    res = run("golden", "--model", qmodel, "--prompt", "a red circle", "--steps", 2, "--with-params", "-o", out)
    assert res.exit_code == 0, res.output
    return out


def test_every_network_call_is_recomputed_from_the_folder_alone(golden, tmp_path):
    moved = tmp_path / "elsewhere"  # nothing outside the folder is read
    shutil.copytree(golden, moved)
    g = GoldenFolder(moved)
    graphs = g.manifest["graphs"]
    assert g.manifest["format_version"] == 2 and set(graphs) == {"text_encoder", "unet", "vae"}
    ops = {op["op"] for gr in graphs.values() for op in gr["ops"]}
    assert {"reshape", "transpose", "split", "broadcast", "input", "output", "conv2d", "matmul", "softmax"} <= ops
    # the graph recorded from a network's first call recomputes every call: the UNet's second one here
    calls = {"text_encoder": "p000/text_encoder", "unet": "p000/unet/step001", "vae": "p000/vae"}
    for network, cid in calls.items():
        assert graphs[network]["call"] == cid.replace("step001", "step000")
        assert graphs[network]["params"] == f"graph/{network}"
        (name, got), = recompute_call(g, network, cid).items()
        want = g.load(g.tensor(cid, f"{network}.{name}"), engine_layout=True)
        assert got.dtype == want.dtype and np.array_equal(got, want), (network, cid)


def test_a_changed_parameter_changes_the_recomputation(golden, tmp_path):
    """The recomputation really uses the stored parameters (not a copy of the recorded output)."""
    from tinysd.golden.graph import run_graph

    g = GoldenFolder(golden)
    gr = g.manifest["graphs"]["vae"]
    params: dict = {}
    for t in g.tensors:
        if t["case"] == "graph/vae":
            op, field = t["name"][len("vae."):].rsplit(".", 1)
            params.setdefault(op, {})[field] = g.load(t)
    inputs = {t["name"][len("vae."):]: g.load(t) for t in g.tensors if t["case"] == "p000/vae" and t["role"] == "input"}
    want = g.load(g.tensor("p000/vae", "vae.image"))
    assert np.array_equal(run_graph(gr, inputs, params)["image"], want)
    params["decoder.conv_out"]["bias_q"] = params["decoder.conv_out"]["bias_q"] + 5000
    assert not np.array_equal(run_graph(gr, inputs, params)["image"], want)


def test_graph_validation(golden, tmp_path):
    m = json.loads((golden / "manifest.json").read_text())
    bad = tmp_path / "bad"
    shutil.copytree(golden, bad)
    first = m["graphs"]["unet"]["ops"][5]
    first["inputs"] = {"x": "t999999"}
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TinySDError, match=r"graphs\['unet'\]: ops\[5\]: input x reads tensor 't999999'"):
        load_manifest(bad, verify_files=False)
    m = json.loads((golden / "manifest.json").read_text())  # a version 1 manifest (no graphs) still reads
    m["format_version"] = 1
    del m["graphs"]
    (bad / "manifest.json").write_text(json.dumps(m))
    assert load_manifest(bad, verify_files=False)["format_version"] == 1


def test_layers_matching_nothing_is_an_error(qmodel, tmp_path):
    res = run("golden", "--model", qmodel, "--prompt", "x", "--steps", 2, "--network", "unet", "--layers", "nomatch*",
              "-o", tmp_path / "g")
    one_line_error(res, "--layers 'nomatch*'", "matches no op of unet", "op names look like unet.")
    assert os.listdir(tmp_path) == []


def test_full_layers_with_an_upsample(qmodel, tmp_path):
    res = run("golden", "--model", qmodel, "--prompt", "x", "--steps", 1, "--network", "unet", "--full-layers",
              "--layers", "*upsample", "-o", tmp_path / "g")
    assert res.exit_code == 0, res.output
    g = GoldenFolder(tmp_path / "g")
    (case,) = [c for c in g.cases if c["kind"] == "layer"]
    assert case["op"] == "upsample_nearest2x" and case["note"] is None  # whole, not cut
    x = g.load(g.tensor(case["id"], f"unet.{case['layer']}.x"))
    out = g.load(g.tensor(case["id"], f"unet.{case['layer']}.out"))
    assert out.shape[2:] == (2 * x.shape[2], 2 * x.shape[3])


def test_huge_golden_images_are_refused(qmodel, tmp_path):
    # 100000 x 16 fits since attention is computed in query tiles; 100000 x 100000 does not
    res = run("golden", "--model", qmodel, "--prompt", "x", "--width", 100000, "--height", 100000,
              "-o", tmp_path / "g")
    one_line_error(res, "100000x100000 with batch 1", "GiB of memory")
    assert os.listdir(tmp_path) == []
