"""The SIMD plans compiled for 256-bit vectors (8 lanes), on a CPU whose own code is 16 lanes.

CI's CPU has AVX-512, so the rest of tests/kernels runs the 512-bit code. This reruns the exactness
tests of the "u8" and "i16" plans (linear, conv2d, both attention products, worst-case accumulators,
K-blocks, the int32 epilogue, the instruction check) in a fresh interpreter whose Numba target is
AVX2 + AVX-VNNI (Intel's CPUs since Alder Lake): byte quads on `vpdpbusd ymm`, int16 pairs on
`vpmaddwd ymm` / `vpdpwssd ymm`. Numba's cache keys include the target, so it shares the cache folder.
"""
import os
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as llvm
import pytest

TESTS = ("default_methods or linear_matches_reference_random or worst_case or i16_edge_shapes or u8_plan_blocks"
         " or conv2d_simd_plans or matmul_uint8_plans or matmul_uint16_i16 or compiles_to_dot or int32_epilogue")
FEATURES = ("+64bit,+avx,+avx2,+avxvnni,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,"
            "+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
HOST = set(llvm.get_host_cpu_features().flatten().split(","))


@pytest.mark.skipif(not {"+avx2", "+avxvnni"} <= HOST, reason="the host cannot run AVX-VNNI code")
def test_simd_plans_are_exact_on_256_bit_vectors():
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=FEATURES)
    here = Path(__file__).parent
    probe = subprocess.run([sys.executable, "-c", "from tinysd.kernels import gemm, gemm_i16;"
                            "print(gemm_i16.LANES, gemm.A8_METHOD, gemm.A16_METHOD)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["8", "u8", "i16"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          str(here / "test_gemm.py"), "-k", f"({TESTS}) and not split and not f64"],
                         env=env, capture_output=True, text=True, cwd=here.parent.parent)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout and "skipped" not in run.stdout
