"""End to end on the tiny fixture model: quantize, `tinysd golden` (UNet layer cases), `tinysd compare`,
the C example on a real conv case, and byte-identical folders across runs and thread counts."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinysd import cli as cli_module
from tinysd.golden import GoldenFolder, load_manifest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny-sd"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def run(*args):
    return CliRunner().invoke(cli_module.cli, list(map(str, args)))


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    """The tiny fixture model quantized to w8a8 (one calibration prompt, one step)."""
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_model, quantize_model
    from tinysd.quant.folder import save_quantized

    loaded = load_checkpoint(TINY)
    q = quantize_model(loaded, "w8a8", calibrate_model(loaded, ["a red circle"], 1))
    return save_quantized(q, tmp_path_factory.mktemp("q") / "tiny-w8a8", tokenizer_dir=loaded.tokenizer_dir)


def test_unet_layer_cases_compare_against_themselves(qmodel, tmp_path):
    out = tmp_path / "golden"
    res = run("golden", "--model", qmodel, "--prompt", "a red circle", "--steps", 2, "--at-steps", 1,
              "--network", "unet", "--layers", "down_blocks.0.*", "-o", out)
    assert res.exit_code == 0, res.output
    g = GoldenFolder(out)
    m = g.manifest
    assert m["model"]["precision"] == "w8a8" and len(m["model"]["sha256"]) == 64
    assert m["settings"]["at_steps"] == [1] and m["settings"]["layers"] == "down_blocks.0.*"
    ids = [c["id"] for c in g.cases]
    assert ids[0] == "p000/unet/step001" and all(i.startswith("p000/unet/step001") for i in ids)
    layers = [c for c in g.cases if c["kind"] == "layer"]
    assert {c["op"] for c in layers} >= {"conv2d", "group_norm", "silu", "add", "linear", "matmul", "softmax"}
    assert all(c["layer"].startswith("down_blocks.0.") for c in layers)
    call = [t for t in g.tensors if t["case"] == "p000/unet/step001"]
    assert {(t["name"], t["role"], t["dtype"]) for t in call} == {
        ("unet.sample", "input", "uint8"), ("unet.time_proj", "input", "uint8"),
        ("unet.encoder_hidden_states", "input", "uint8"), ("unet.out", "output", "uint8")}
    conv1 = g.case("p000/unet/step001/layers/down_blocks.0.resnets.0.conv1")
    names = {t["name"].rsplit(".", 1)[-1] for t in g.tensors if t["case"] == conv1["id"]}
    assert names == {"x", "weight_q", "bias_q", "multiplier", "shift", "acc_shift", "out"}
    res = run("compare", out, out, "--json", tmp_path / "report.json")
    assert res.exit_code == 0, res.output
    # a device folder holding only the outputs, as raw files
    device = tmp_path / "device"
    for t in g.tensors:
        if t["role"] == "output":
            p = device / t["case"] / f"{t['name']}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(g.load(t).tobytes())
    res = run("compare", out, device)
    assert res.exit_code == 0, res.output
    assert "not on device" in res.stdout.splitlines()[-1]


@pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH")
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_c_example_checks_a_real_conv_case(qmodel, tmp_path, layout):
    out = tmp_path / "golden"
    res = run("golden", "--model", qmodel, "--prompt", "a cat", "--steps", 1, "--network", "unet",
              "--layers", "down_blocks.0.downsamplers.0.conv", "--format", "c", "--layout", layout, "-o", out)
    assert res.exit_code == 0, res.output
    header = out / "p000/unet/step000/layers/down_blocks.0.downsamplers.0.conv.h"
    exe = tmp_path / "check_conv"
    cc = subprocess.run([CC, "-std=c99", "-O1", "-Wall", "-Werror", f'-DTSD_CASE_HEADER="{header}"', "-o", str(exe),
                         str(ROOT / "docs" / "examples" / "check_conv.c")], capture_output=True, text=True, timeout=120)
    assert cc.returncode == 0, cc.stderr
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout
    assert res.stdout.startswith("p000/unet/step000/layers/down_blocks.0.downsamplers.0.conv: 0 of ")


def _golden_subprocess(qmodel, out, threads):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(ROOT / "cli.py"), "golden", "--model", str(qmodel), "--prompt", "a red circle",
           "--steps", "2", "--layers", "*attn1*", "--format", "raw", "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr


def test_byte_identical_across_runs_and_thread_counts(qmodel, tmp_path):
    _golden_subprocess(qmodel, tmp_path / "t1", 1)
    _golden_subprocess(qmodel, tmp_path / "t2", 2)
    files = {}
    for name in ("t1", "t2"):
        root = tmp_path / name
        files[name] = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert files["t1"] == files["t2"]
    m = load_manifest(tmp_path / "t1")
    assert {c["network"] for c in m["cases"]} == {"text_encoder", "unet", "vae"}
    assert any(c["kind"] == "layer" for c in m["cases"])


def test_golden_command_errors_are_one_line(qmodel, tmp_path):
    def err(*args):
        res = run(*args)
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tinysd: error: ")
        return lines[0]

    assert "--at-steps: step 5 outside 0..1" in err("golden", "--model", qmodel, "--prompt", "x", "--steps", 2,
                                                      "--at-steps", "0,5", "-o", tmp_path / "g")
    assert "not a quantized model folder" in err("golden", "--model", TINY, "--prompt", "x", "-o", tmp_path / "g")
    assert "exactly one of --prompt and --prompts" in err("golden", "--model", qmodel, "-o", tmp_path / "g")
    (tmp_path / "exists").mkdir()
    assert "already exists" in err("golden", "--model", qmodel, "--prompt", "x", "-o", tmp_path / "exists")
    assert "--prompts" in err("golden", "--model", qmodel, "--prompts", tmp_path / "none.txt", "-o", tmp_path / "g")
    assert sorted(os.listdir(tmp_path)) == ["exists"]


@pytest.mark.parametrize("sig, status, line", [("SIGTERM", 143, "tinysd: terminated"), ("SIGINT", 130, "tinysd: aborted")])
def test_interrupted_golden_run_leaves_nothing(qmodel, tmp_path, sig, status, line):
    """SIGTERM or Ctrl-C while `tinysd golden` is writing: one line, no output folder and no temporary folder."""
    import signal
    import time

    out = tmp_path / "golden"
    cmd = [sys.executable, str(ROOT / "cli.py"), "golden", "--model", str(qmodel), "--prompt", "x", "--steps", "500",
           "--layers", "*", "-o", str(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(".tinysd-tmp-golden.") for n in os.listdir(tmp_path)):  # the writer has started
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(getattr(signal, sig))
        err = p.communicate(timeout=120)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == status, err
    assert err.splitlines()[-1] == line and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_every_op_kind_is_cut_exactly(qmodel):
    """Every op of the three integer networks, cut with tiny limits, recomputes bit-equal with its reference."""
    import numpy as np

    from tinysd.golden.cases import CropLimits, layer_case
    from tinysd.interp.record import RecordingInterpreter
    from tinysd.quant.engine import build_integer_networks
    from tinysd.quant.folder import load_quantized

    q = load_quantized(qmodel)
    te, unet, vae = build_integer_networks(q)
    rng = np.random.default_rng(0)
    calls = {"text_encoder": lambda: te(np.array([[49406, 320, 1125, 49407] + [49407] * 73] * 2)),
             "unet": lambda: unet(rng.standard_normal((2, 4, 8, 8)).astype(np.float32), 500,
                                  rng.standard_normal((2, 77, 8)).astype(np.float32)),
             "vae": lambda: vae.decode(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))}
    limits = CropLimits(batch=1, channels=3, spatial=3, rows=2)
    cut = {}
    for net, call in zip((te, unet, vae), calls.values()):
        rec = RecordingInterpreter(net.interp)
        net.interp = rec
        call()
        for r in rec.records:
            if r.matched:
                case = layer_case(r, net.network, "c", q.networks[net.network], limits)  # raises if not exact
                cut.setdefault(r.op, 0)
                cut[r.op] += case.note is not None
    assert set(cut) == {"embedding", "linear", "conv2d", "group_norm", "layer_norm", "silu", "gelu", "quick_gelu",
                        "softmax", "matmul", "add", "mul", "concat", "upsample_nearest2x"}
    assert all(n > 0 for n in cut.values()), cut  # every kind was actually cut somewhere


def test_img2img_dumps_the_encoder_call(qmodel, tmp_path):
    """With --init-image the VAE encoder call is a network case (p000/vae.encode) holding exactly the integer
    encoder's input and output codes on the init image; its layer cases and the decoder case stay as they were."""
    import numpy as np
    from PIL import Image

    from tinysd.img2img import image_to_array, load_init_image
    from tinysd.interp.record import RecordingInterpreter
    from tinysd.quant.engine import build_integer_networks
    from tinysd.quant.folder import load_quantized

    init = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(init)
    out = tmp_path / "golden"
    res = run("golden", "--model", qmodel, "--prompt", "a red circle", "--steps", 4, "--network", "vae",
              "--init-image", init, "--strength", 0.5, "--layers", "encoder.conv_in", "-o", out)
    assert res.exit_code == 0, res.output
    g = GoldenFolder(out)
    assert [c["id"] for c in g.cases] == ["p000/vae.encode", "p000/vae.encode/layers/encoder.conv_in", "p000/vae"]
    assert g.manifest["settings"]["strength"] == 0.5 and g.manifest["graphs"]["vae"]["call"] == "p000/vae"
    case = {t["name"]: t for t in g.tensors if t["case"] == "p000/vae.encode"}
    assert set(case) == {"vae.image", "vae.latent_moments"}

    vae = build_integer_networks(load_quantized(qmodel))[2]
    vae.interp = rec = RecordingInterpreter(vae.interp)
    vae.encode_moments(image_to_array(load_init_image(init), 24, 16))
    want_in = rec.records[0].output.data
    want_out = next(r for r in rec.records if r.op == "output").inputs["x"].data
    assert np.array_equal(g.load(case["vae.image"]), want_in)
    assert np.array_equal(g.load(case["vae.latent_moments"]), want_out)
    res = run("compare", out, out)
    assert res.exit_code == 0, res.output
