"""The `c` format with the system C compiler: docs/examples/check_conv.c checks a dumped conv case bit for bit,
and the header's own harness compares raw device files."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from golden_helpers import conv_record, write_synthetic

from tinysd.golden import GoldenFolder, GoldenWriter
from tinysd.golden.cases import CropLimits, layer_case

ROOT = Path(__file__).resolve().parents[2]
CHECK_CONV = ROOT / "docs" / "examples" / "check_conv.c"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH")


def compile_c(src: Path, exe: Path, *defines: str) -> Path:
    cmd = [CC, "-std=c99", "-O1", "-Wall", "-Wextra", "-pedantic", "-Werror", *defines, "-o", str(exe), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return exe


def conv_case_header(tmp_path: Path, bits: int, layout: str, **geometry) -> Path:
    rec = conv_record(np.random.default_rng(bits + len(layout)), bits=bits, extra_shift=2, **geometry)
    case = layer_case(rec, "synth", "p000/layers/conv", limits=CropLimits(channels=4, spatial=5))
    out = tmp_path / f"g_{bits}_{layout}"
    with GoldenWriter(out, "c", layout) as w:
        w.write_case(case)
    return out / "p000/layers/conv.h"


@pytest.mark.parametrize("bits,layout,geometry", [
    (8, "nchw", dict(stride=1, padding=1)),
    (16, "nhwc", dict(stride=2, padding=(0, 1, 0, 1))),
    (8, "nhwc", dict(stride=2, padding=1, bias=False)),
])
def test_check_conv_example_passes_and_catches_a_changed_value(tmp_path, bits, layout, geometry):
    header = conv_case_header(tmp_path, bits, layout, **geometry)
    exe = compile_c(CHECK_CONV, tmp_path / "check_conv", f'-DTSD_CASE_HEADER="{header}"')
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "p000/layers/conv: 0 of" in res.stdout
    # change one expected output value in the header: the C check must now fail, naming the position
    text = header.read_text()
    start = text.index("static const uint" + str(bits) + "_t tsd_out[")
    body_start = text.index("{\n", start) + 2
    first_end = text.index(",", body_start)
    old = int(text[body_start:first_end])
    new = old + 1 if old < 2**bits - 1 else old - 1
    header.write_text(text[:body_start] + "    " + str(new) + text[first_end:])
    exe = compile_c(CHECK_CONV, tmp_path / "check_conv2", f'-DTSD_CASE_HEADER="{header}"')
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert f"first mismatch at n=0 o=0 y=0 x=0: computed {old}, golden {new}" in res.stdout
    assert "1 of" in res.stdout.splitlines()[-1]


def test_header_harness_compares_raw_device_files(tmp_path):
    golden = write_synthetic(tmp_path / "g", "c", "nhwc")
    g = GoldenFolder(golden)
    case = "p000/net/step000/layers/conv"
    t = g.tensor(case, "unet.conv.out")
    exe = compile_c(golden / f"{case}.h", tmp_path / "harness", "-DTSD_HARNESS_MAIN", "-x", "c")
    out = g.load(t)
    ok = tmp_path / "ok.bin"
    ok.write_bytes(out.tobytes())
    res = subprocess.run([str(exe), str(ok)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "unet.conv.out: ok" in res.stdout, res.stdout + res.stderr
    bad = out.copy()
    bad.reshape(-1)[13] ^= 0x10
    (tmp_path / "bad.bin").write_bytes(bad.tobytes())
    res = subprocess.run([str(exe), str(tmp_path / "bad.bin")], capture_output=True, text=True, timeout=60)
    coords = ", ".join(str(int(i)) for i in np.unravel_index(13, out.shape))
    assert res.returncode == 1 and f"first at [{coords}]" in res.stdout and "max |diff| 16" in res.stdout
    (tmp_path / "short.bin").write_bytes(out.tobytes()[:-1])
    res = subprocess.run([str(exe), str(tmp_path / "short.bin")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "expected" in res.stderr
