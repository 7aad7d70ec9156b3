"""`tinysd quantize` and `tinysd generate` on quantized models, on the tiny fixture model with two prompts."""
import json
import math
import re
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tinysd.png import params_from_text, read_parameters
from tinysd.quant import folder as folder_module
from tinysd.quant.calibration import CALL_KINDS
from tinysd.quant.encodings import load_encodings, save_encodings
from tinysd.quant.folder import load_quantized
from tinysd.safetensors_io import write_safetensors

sys.path.insert(0, str(Path(__file__).parent))
from quantfix import digests, integer_tensors  # noqa: E402
from clitools import assert_one_line_error, run

TINY = Path(__file__).parent / "fixtures" / "tiny-sd"
PRECISIONS = ("w8a8", "w8a16")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("# two prompts\na red circle\n\na small blue square on the left\n", encoding="utf-8")
    return p


def _quantize(out, precision, prompts, *extra):
    return run(["quantize", TINY, "-o", out, "--precision", precision, "--calibration-prompts", prompts,
                "--calibration-steps", "2", *extra])


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, prompts):
    """{precision: (folder, CliRunner result)}; w8a8 with -v (per-network time and peak memory)."""
    root = tmp_path_factory.mktemp("quantized")
    return {p: (root / p, _quantize(root / p, p, prompts, *(["-v"] if p == "w8a8" else []))) for p in PRECISIONS}


def _stats(stderr: str) -> dict[str, tuple[int, float, float]]:
    """{name: (calls, seconds, peak RSS MiB)} from the -v summary lines (tinysd.runstats)."""
    pat = re.compile(r"^tinysd: (.+?): (\d+) calls?, ([0-9.]+) s(?: \([0-9.]+ s/call\))?, peak RSS (\d+) MiB")
    return {m[1]: (int(m[2]), float(m[3]), float(m[4])) for m in map(pat.match, stderr.splitlines()) if m}


def _folder(quantized, precision):
    out, res = quantized[precision]
    assert res.exit_code == 0, res.output
    return out


# ---------------------------------------------------------------------------------------------
# quantize, then generate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantize_prints_sqnr_per_network(quantized, precision):
    out = _folder(quantized, precision)
    res = quantized[precision][1]
    lines = res.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(CALL_KINDS)
    printed = {line.split()[0]: float(line.split()[2]) for line in lines}
    assert all(math.isfinite(v) and v > 10 for v in printed.values()), printed
    assert f"wrote {out}" in res.stderr
    info = json.loads((out / "quantization.json").read_text())["info"]
    assert {k: round(v, 2) for k, v in info["sqnr_db"].items()} == printed
    assert info["calibration"]["prompts"] == ["a red circle", "a small blue square on the left"]
    assert info["calibration"]["steps"] == 2 and info["method"] == "minmax"


def test_quantize_verbose_prints_time_and_peak_memory_per_network(quantized):
    """-v: one line per network and stage with its calls, time and peak RSS; without -v none."""
    stats = _stats(quantized["w8a8"][1].stderr)
    # 2 prompts x 2 steps: 2 text encoder calls, 4 UNet calls (CFG pairs), 2 decodes, 2 encodes; replayed all
    want = {"text_encoder": 2, "unet": 4, "vae.decode": 2, "vae.encode": 2}
    for kind, n in want.items():
        assert stats[f"{kind} (float calibration)"][0] == n, stats
        assert stats[f"{kind} (integer SQNR)"][0] == n, stats
    assert stats["quantize (all networks)"][0] == 1
    assert all(s >= 0 and 20 < mib < 1 << 20 for _, s, mib in stats.values()), stats  # a Python process is > 20 MiB
    assert _stats(quantized["w8a16"][1].stderr) == {}


def test_sqnr_on_the_first_calls_only(quantized, prompts, tmp_path):
    res = _quantize(tmp_path / "q", "w8a8", prompts, "--sqnr-calls", "1")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "q" / "quantization.json").read_text())["info"]
    full = json.loads((_folder(quantized, "w8a8") / "quantization.json").read_text())["info"]
    assert info["sqnr_calls"] == 1 and full["sqnr_calls"] is None
    assert set(info["sqnr_db"]) == set(CALL_KINDS)
    assert info["sqnr_db"]["unet"] != full["sqnr_db"]["unet"]  # 1 of the 4 recorded UNet calls


def test_mse_method_from_the_cli(quantized, prompts, tmp_path):
    """--method mse reaches the calibration (its ranges, tested in tests/quant/test_mse.py,
    differ from min-max ones, and so do the measured SQNRs)."""
    res = _quantize(tmp_path / "q", "w8a8", prompts, "--method", "mse")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "q" / "quantization.json").read_text())["info"]
    full = json.loads((_folder(quantized, "w8a8") / "quantization.json").read_text())["info"]
    assert info["method"] == "mse"
    assert all(info["sqnr_db"][k] != full["sqnr_db"][k] for k in CALL_KINDS), (info["sqnr_db"], full["sqnr_db"])


def test_w8a16_is_more_accurate_than_w8a8(quantized):
    sqnr = {p: json.loads((_folder(quantized, p) / "quantization.json").read_text())["info"]["sqnr_db"]
            for p in PRECISIONS}
    for kind in CALL_KINDS:
        assert sqnr["w8a16"][kind] > sqnr["w8a8"][kind] + 5, (kind, sqnr)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_generate_from_quantized_folder(quantized, precision, tmp_path):
    out = _folder(quantized, precision)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    res = run(["generate", "a red circle", "--model", out, "--steps", "2", "--seed", "5", "-o", a, "-v"])
    assert res.exit_code == 0, res.output
    stats = _stats(res.stderr)  # -v: per-network calls, time, peak RSS
    assert {k: v[0] for k, v in stats.items()} == {"text_encoder": 1, "unet": 2, "vae.decode": 1, "load text_encoder": 1,
                                                   "load unet": 1, "load vae": 1}, res.stderr  # low memory: read when needed
    assert all(20 < mib < 1 << 20 for _, _, mib in stats.values()), stats
    res = run(["generate", "a red circle", "--model", out, "--precision", precision, "--steps", "2", "--seed", "5",
               "-o", b])
    assert res.exit_code == 0, res.output
    assert _stats(res.stderr) == {}
    assert a.read_bytes() == b.read_bytes()
    p = params_from_text(read_parameters(a))
    assert (p.prompt, p.steps, p.seed, p.model_name) == ("a red circle", 2, 5, precision)


def test_generate_quantizes_a_float_model_on_the_fly(tmp_path, monkeypatch):
    """--precision on a float model calibrates with the default prompts (one here, to be fast: that the default
    set is used is tested in tests/quant/test_folder.py)."""
    from tinysd.quant import prompts as prompts_module

    used = []

    def one_default_prompt(path=None):
        used.append(path)
        return prompts_module.parse_prompts("a red circle")

    monkeypatch.setattr(prompts_module, "read_prompts", one_default_prompt)
    out = tmp_path / "fly.png"
    res = run(["generate", "a red circle", "--model", TINY, "--precision", "w8a8", "--steps", "1", "-o", out])
    assert res.exit_code == 0, res.output
    assert used == [None] and os.listdir(tmp_path) == ["fly.png"]
    assert params_from_text(read_parameters(out)).model_name == "tiny-sd"


# ---------------------------------------------------------------------------------------------
# export -> import with --encodings
# ---------------------------------------------------------------------------------------------
def _assert_same_integer_model(a_dir, b_dir):
    a, b = load_quantized(a_dir), load_quantized(b_dir)
    for n in a.networks:
        x, y = a.networks[n].arrays, b.networks[n].arrays
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), (n, k)
    ta, tb = integer_tensors(a), integer_tensors(b)
    assert digests(ta) == digests(tb)
    for kind in ta:  # the network outputs themselves, bit for bit
        np.testing.assert_array_equal(ta[kind][-1][1], tb[kind][-1][1])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_encodings_round_trip_reproduces_the_integer_model(quantized, precision, prompts, tmp_path):
    out = _folder(quantized, precision)
    res = _quantize(tmp_path / "again", precision, prompts, "--encodings", out / "encodings.json")
    assert res.exit_code == 0, res.output
    sqnr = lambda r: [line for line in r.stdout.splitlines() if " SQNR " in line]  # noqa: E731
    assert sqnr(res) == sqnr(quantized[precision][1])  # same integer networks, same SQNR
    assert "unet: " in res.stdout and "0 calibrated (not in the file)" in res.stdout
    _assert_same_integer_model(out, tmp_path / "again")
    info = json.loads((tmp_path / "again" / "quantization.json").read_text())["info"]
    assert [f["aimet_version"] for f in info["encodings_files"]] == ["1.0.0"] * 3
    assert all(v["calibrated"] == [] for v in info["encodings_import"].values())


def test_encodings_round_trip_through_aimet_0_6_1(quantized, prompts, tmp_path):
    out = _folder(quantized, "w8a8")
    act, params, _ = load_encodings(out / "encodings.json")
    legacy = tmp_path / "legacy.encodings"
    save_encodings(legacy, act, params, version="0.6.1")
    res = _quantize(tmp_path / "again", "w8a8", prompts, "--encodings", legacy)
    assert res.exit_code == 0, res.output
    _assert_same_integer_model(out, tmp_path / "again")


# ---------------------------------------------------------------------------------------------
# a precision per network
# ---------------------------------------------------------------------------------------------
MIXED = "w8a8,vae=w8a16"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, prompts):
    """A folder quantized with a per-network precision written out of canonical order; each network's
    SQNR line names that network's precision."""
    out = tmp_path_factory.mktemp("mixed") / "mixed"
    res = _quantize(out, "w8a8,vae=w8a16,unet=w8a8", prompts)
    assert res.exit_code == 0, res.output
    said = {line.split()[0]: line.split("(integer ")[1].split()[0] for line in res.stdout.strip().splitlines()}
    assert said == {"text_encoder": "w8a8", "unet": "w8a8", "vae.decode": "w8a16", "vae.encode": "w8a16"}
    assert f"wrote {out} ({MIXED})" in res.stderr
    return out


def test_per_network_precision_is_each_network_of_the_uniform_ones(quantized, mixed):
    """Calibration does not depend on the precision (min-max), so each network of the mixed folder is,
    array for array, the same network of the uniform folder of its precision; the folder records the
    canonical precision and each network's activation bitwidth, and its encodings say 8 / 16 bits."""
    doc = json.loads((mixed / "quantization.json").read_text())
    assert doc["precision"] == MIXED
    assert doc["activation_bitwidth"] == {"text_encoder": 8, "unet": 8, "vae": 16}
    m = load_quantized(mixed)
    assert m.precision == MIXED and {n: q.precision for n, q in m.networks.items()} == {
        "text_encoder": "w8a8", "unet": "w8a8", "vae": "w8a16"}
    uniform = {p: load_quantized(_folder(quantized, p)) for p in PRECISIONS}
    for net, q in m.networks.items():
        u = uniform[q.precision].networks[net]
        assert q.arrays.keys() == u.arrays.keys()
        for k in q.arrays:
            assert q.arrays[k].dtype == u.arrays[k].dtype and q.arrays[k].tobytes() == u.arrays[k].tobytes(), (net, k)
    act, _, _ = load_encodings(mixed / "encodings.json")
    assert {e.bitwidth for n, e in act.items() if n.startswith("vae.")} == {16}
    assert {e.bitwidth for n, e in act.items() if not n.startswith("vae.")} == {8}
    sqnr = {p: json.loads((_folder(quantized, p) / "quantization.json").read_text())["info"]["sqnr_db"]
            for p in PRECISIONS}
    assert doc["info"]["sqnr_db"]["unet"] == sqnr["w8a8"]["unet"]
    assert doc["info"]["sqnr_db"]["vae.decode"] == sqnr["w8a16"]["vae.decode"]


def test_generate_with_a_per_network_precision(mixed, tmp_path, monkeypatch):
    """The mixed folder runs (asking for its precision in any order of overrides), refuses another
    precision, and a float model is quantized on the fly to it."""
    from tinysd.quant import prompts as prompts_module

    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    args = ["--steps", "2", "--seed", "3"]
    assert run(["generate", "a red circle", "--model", mixed, *args, "-o", a]).exit_code == 0
    res = run(["generate", "a red circle", "--model", mixed, "--precision", "w8a8,unet=w8a8,vae=w8a16", *args, "-o", b])
    assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes()
    res = run(["generate", "a red circle", "--model", mixed, "--precision", "w8a8", *args, "-o", tmp_path / "x.png"])
    assert_one_line_error(res, "built for precision w8a8,vae=w8a16, not w8a8")
    from tinysd.quant import engine

    built = []
    real_build = engine.build_integer_networks

    def spy(qmodel, **kw):
        built.append((qmodel.precision, {n: q.precision for n, q in qmodel.networks.items()}))
        return real_build(qmodel, **kw)

    monkeypatch.setattr(prompts_module, "read_prompts", lambda path=None: prompts_module.parse_prompts("a red circle"))
    monkeypatch.setattr(engine, "build_integer_networks", spy)
    res = run(["generate", "a red circle", "--model", TINY, "--precision", "w8a8,vae=w8a16", "--steps", "1", "-o", c])
    assert res.exit_code == 0, res.output
    assert built == [(MIXED, {"text_encoder": "w8a8", "unet": "w8a8", "vae": "w8a16"})]


def test_per_network_encodings_round_trip(mixed, prompts, tmp_path):
    res = _quantize(tmp_path / "again", MIXED, prompts, "--encodings", mixed / "encodings.json")
    assert res.exit_code == 0, res.output
    _assert_same_integer_model(mixed, tmp_path / "again")
    res = _quantize(tmp_path / "w8", "w8a8", prompts, "--encodings", mixed / "encodings.json")
    assert_one_line_error(res, "encodings.json", "are 16-bit", "precision w8a8 needs 8-bit activations", "vae.")
    res = _quantize(tmp_path / "w16", "w8a16,vae=w8a8", prompts, "--encodings", mixed / "encodings.json")
    assert_one_line_error(res, "encodings.json", "are 8-bit, but precision w8a16,vae=w8a8 needs 16-bit activations in "
                               "text_encoder")
    assert sorted(os.listdir(tmp_path)) == ["again"]


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit status 2, nothing written
# ---------------------------------------------------------------------------------------------
def _edited(src, dst, change):
    doc = json.loads(Path(src).read_text())
    change(doc)
    Path(dst).write_text(json.dumps(doc))
    return dst


def _rename_and_add(doc):
    for e in doc["activation_encodings"]:
        if e["name"] == "unet.conv_in.out":
            e["name"] = "unet.conv_inn.out"
    doc["param_encodings"].append(dict(doc["param_encodings"][0], name="unet.bogus.weight"))


def _negative_scale(doc):
    doc["activation_encodings"][2]["scale"] = [-0.5]


def _legacy_4bit(doc):
    name, channels = next(iter(doc["activation_encodings"].items()))
    channels[0]["bitwidth"] = 32
    del channels[0]["min"], channels[0]["max"]  # optional; they would no longer match the 32-bit grid


@pytest.mark.parametrize("case", ["wrong bitwidth", "unknown names", "non-positive scale", "missing file",
                                  "0.6.1 bitwidth", "method with encodings", "onnx without encodings", "bad key",
                                  "key twice", "no onnx package"])
def test_bad_encodings(quantized, prompts, tmp_path, case):
    w8, w16 = _folder(quantized, "w8a8"), _folder(quantized, "w8a16")
    enc = w8 / "encodings.json"
    work = tmp_path / "work"
    work.mkdir()
    precision, extra = "w8a8", []
    if case == "wrong bitwidth":
        enc, needles = w16 / "encodings.json", ["encodings.json", "16-bit", "w8a8", "needs 8-bit"]
    elif case == "unknown names":
        enc = _edited(enc, work / "e.json", _rename_and_add)
        needles = ["e.json", "2 name(s) in the file are not tinysd tensors of unet", "unet.conv_inn.out",
                   "unet.bogus.weight", "--onnx"]
    elif case == "non-positive scale":
        enc = _edited(enc, work / "e.json", _negative_scale)
        needles = ["e.json", "activation tensor", "scale must be > 0"]
    elif case == "missing file":
        enc, needles = work / "nope.json", ["nope.json", "not found"]
    elif case == "0.6.1 bitwidth":
        act, params, _ = load_encodings(enc)
        save_encodings(work / "l.json", act, params, version="0.6.1")
        enc = _edited(work / "l.json", work / "l.json", _legacy_4bit)
        needles = ["l.json", "are 32-bit", "needs 8-bit activations"]
    elif case == "onnx without encodings":
        extra, needles = ["--onnx", "vae=m.onnx"], ["--onnx vae=...", "no --encodings vae=FILE"]
    elif case == "bad key":
        enc, needles = f"unett={enc}", ["--encodings", "'unett' is not one of", "text_encoder, unet, vae"]
    elif case == "key twice":
        enc, extra, needles = f"unet={enc}", ["--encodings", f"unet={enc}"], ["--encodings", "unet is given twice"]
    elif case == "no onnx package":
        import sys
        enc, extra = f"unet={enc}", ["--onnx", f"unet={work / 'm.onnx'}"]
        needles = ["onnx", "pip install 'tinysd[onnx]'"]
        saved = sys.modules.get("onnx")
        sys.modules["onnx"] = None  # import onnx raises ImportError
    else:
        extra, needles = ["--method", "percentile"], ["--method", "--encodings"]
    before = sorted(os.listdir(work))
    res = _quantize(tmp_path / "out", precision, prompts, "--encodings", enc, *extra)
    if case == "no onnx package":
        sys.modules["onnx"] = saved
    assert_one_line_error(res, *needles)
    assert sorted(os.listdir(tmp_path)) == ["work"] and sorted(os.listdir(work)) == before


def test_bad_quantize_options(quantized, prompts, tmp_path):
    w8 = _folder(quantized, "w8a8")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x").write_text("keep")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    cases = [
        (["quantize", TINY, "-o", existing, "--precision", "w8a8"], ["existing", "already exists"]),
        (["quantize", TINY, "-o", existing, "--precision", "w8a8", "--overwrite"], ["not a tinysd quantized model"]),
        (["quantize", TINY, "-o", tmp_path / "no" / "out", "--precision", "w8a8"], ["does not exist"]),
        (["quantize", w8, "-o", tmp_path / "o", "--precision", "w8a8"], ["already a quantized model"]),
        (["quantize", tmp_path / "nomodel", "-o", tmp_path / "o", "--precision", "w8a8"], ["nomodel"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8", "--calibration-prompts", empty],
         ["empty.txt", "no prompts"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8", "--calibration-prompts", tmp_path / "none.txt"],
         ["none.txt", "not found"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8", "--calibration-steps", "0"],
         ["calibration steps"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8", "--sqnr-calls", "0"], ["SQNR calls"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w4a4"], ["--precision", "w4a4"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8,vae=w4a4"], ["--precision", "'vae=w4a4'"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8,vae=w8a16,vae=w8a8"], ["'vae' is given twice"]),
        (["quantize", TINY, "-o", tmp_path / "o", "--precision", "w8a8", "--method", "median"], ["--method", "median"]),
        (["quantize", TINY, "-o", tmp_path / "o"], ["--precision"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run(args), *needles)
    assert sorted(os.listdir(tmp_path)) == ["empty.txt", "existing"] and os.listdir(existing) == ["x"]


def test_generate_refuses_a_precision_the_folder_was_not_built_for(quantized, tmp_path):
    for built, asked in (("w8a8", "w8a16"), ("w8a16", "w8a8"), ("w8a8", "fp32")):
        res = run(["generate", "x", "--model", _folder(quantized, built), "--precision", asked, "-o", tmp_path / "o.png"])
        assert_one_line_error(res, built, asked)
    damaged = tmp_path / "damaged"
    shutil.copytree(_folder(quantized, "w8a8"), damaged)
    (damaged / "vae" / "quantized.safetensors").unlink()
    res = run(["generate", "x", "--model", damaged, "-o", tmp_path / "o.png"])
    assert_one_line_error(res, "vae/quantized.safetensors", "missing")
    assert os.listdir(tmp_path) == ["damaged"]


def test_interrupted_quantize_leaves_nothing(prompts, tmp_path, monkeypatch):
    def interrupted(path, *args, **kwargs):
        if "unet" in str(path):
            raise KeyboardInterrupt
        return write_safetensors(path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "write_safetensors", interrupted)
    res = _quantize(tmp_path / "out", "w8a8", prompts)
    assert res.exit_code == 130 and "aborted" in res.stderr
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# --weights adaround
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adarounded(tmp_path_factory, prompts):
    out = tmp_path_factory.mktemp("adaround") / "w8a8"
    res = _quantize(out, "w8a8", prompts, "--weights", "adaround", "--adaround-iterations", "40",
                    "--adaround-samples", "48")
    assert res.exit_code == 0, res.output
    return out


def test_adaround_changes_only_which_int8_each_weight_is(quantized, adarounded):
    ada, near = load_quantized(adarounded), load_quantized(_folder(quantized, "w8a8"))
    info = json.loads((adarounded / "quantization.json").read_text())["info"]["weights"]
    assert info["method"] == "adaround" and info["settings"]["iterations"] == 40
    assert info["settings"]["samples"] == 48 and info["layers"] == sum(
        k.endswith(".weight_q") for n in ada.networks.values() for k in n.arrays)
    near_info = json.loads((_folder(quantized, "w8a8") / "quantization.json").read_text())["info"]["weights"]
    assert near_info == {"method": "nearest"}
    flipped = 0
    for net in ada.networks:
        a, b = ada.networks[net].arrays, near.networks[net].arrays
        assert {k: (v.dtype, v.shape) for k, v in a.items()} == {k: (v.dtype, v.shape) for k, v in b.items()}
        assert ada.networks[net].activations == near.networks[net].activations
        for k in a:
            if k.endswith(".weight_q"):
                d = a[k].astype(np.int16) - b[k].astype(np.int16)
                assert np.abs(d).max() <= 1, k
                flipped += int(np.count_nonzero(d))
            elif not k.endswith((".multiplier", ".shift", ".acc_shift")):  # these follow the weight bound
                assert np.array_equal(a[k], b[k]), k
    assert flipped > 0


def test_adaround_weights_and_encodings_reimport_to_the_same_integers(adarounded, tmp_path):
    """What tinysd exports for AIMET-style tools (the folder's parameter encodings + the dequantized weights)
    gives the same int8 weights when imported: per weight, and for the whole prepared model."""
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.adaround import export_weights
    from tinysd.quant.calibration import quantize_model
    from tinysd.safetensors_io import SafetensorsFile

    ada = load_quantized(adarounded)
    path = tmp_path / "weights.safetensors"
    n = export_weights(adarounded, path)
    act, params, _ = load_encodings(adarounded / "encodings.json")
    f = SafetensorsFile(path)
    weights = f.read_raw(f.keys())
    assert len(weights) == n == sum(k.endswith(".weight_q") for q in ada.networks.values() for k in q.arrays)
    for key, w in weights.items():
        net, op = key.split(".", 1)
        assert w.dtype == np.float32
        assert np.array_equal(params[key].quantize(w), ada.networks[net].arrays[op[:-len(".weight")] + ".weight_q"])
    loaded = load_checkpoint(TINY)
    for key, w in weights.items():
        net, name = key.split(".", 1)
        loaded.params[net][name] = w
    again = quantize_model(loaded, "w8a8", act, params)
    for net, qnet in again.networks.items():
        for k, v in qnet.arrays.items():
            assert np.array_equal(v, ada.networks[net].arrays[k]), k


def test_adaround_option_errors(prompts, tmp_path, quantized):
    res = _quantize(tmp_path / "o", "w8a8", prompts, "--weights", "adaround", "--adaround-iterations", "0")
    assert_one_line_error(res, "iterations", "0")
    res = _quantize(tmp_path / "o", "w8a8", prompts, "--adaround-samples", "10")
    assert_one_line_error(res, "--adaround-samples", "--weights adaround")
    res = _quantize(tmp_path / "o", "w8a8", prompts, "--adaround-inputs", "quantized")
    assert_one_line_error(res, "--adaround-inputs", "--weights adaround")
    res = _quantize(tmp_path / "o", "w8a8", prompts, "--weights", "adaround", "--encodings",
                    _folder(quantized, "w8a8") / "encodings.json")
    assert_one_line_error(res, "--weights adaround", "--encodings")
    assert os.listdir(tmp_path) == []



def test_adaround_inputs_and_calls_reach_the_settings(prompts, tmp_path, monkeypatch):
    """--adaround-inputs / --adaround-calls become AdaRoundSettings.inputs / .calls (the workflow's use of them:
    tests/quant/test_adaround.py; quantize_checkpoint replaced here to keep this fast)."""
    import tinysd.quant.workflow as workflow

    seen = {}

    def fake(model, output, precision, **kw):
        seen.update(kw)
        return output, {}

    monkeypatch.setattr(workflow, "quantize_checkpoint", fake)
    res = _quantize(tmp_path / "q", "w8a8", prompts, "--weights", "adaround", "--adaround-inputs", "quantized",
                    "--adaround-calls", "5")
    assert res.exit_code == 0, res.output
    assert seen["weights"] == "adaround"
    assert (seen["adaround"].inputs, seen["adaround"].calls, seen["adaround"].iterations) == ("quantized", 5, 1000)
