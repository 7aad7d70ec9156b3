"""A plain install: the sdist and the wheel carry the tokenizer and the default model, and the wheel,
installed into a fresh virtual environment, generates an image from another folder (offline)."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tinysd import __version__
from tinysd.fixedpoint import ARITHMETIC_SPEC_VERSION

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "pyproject.toml", "README.md", "tinysd", "weights")


def _build(hook: str, src: Path, out: Path) -> Path:
    """Run setuptools' PEP 517 `hook` (build_sdist / build_wheel) in `src`, offline, without build isolation."""
    code = f"from setuptools import build_meta as b; print(b.{hook}({str(out)!r}))"
    p = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert p.returncode == 0, p.stderr[-3000:]
    return out / p.stdout.strip().splitlines()[-1]


def test_sdist_and_wheel_install_and_generate_from_anywhere(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    src.mkdir()
    for name in SOURCES:
        s = ROOT / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(s, src / name)
    dist = tmp_path / "dist"
    dist.mkdir()
    sdist = _build("build_sdist", src, dist)
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = f"tinysd-{__version__}"
    for needed in ("weights/tokenizer/vocab.json", "weights/tokenizer/merges.txt",
                   "weights/tinysd-shapes/unet/diffusion_pytorch_model.safetensors",
                   "weights/tinysd-shapes-lcm/unet/diffusion_pytorch_model.safetensors", "setup.py"):
        assert f"{top}/{needed}" in names, needed

    wheel = _build("build_wheel", tmp_path / "unpacked" / top, dist)  # the wheel is built from the sdist
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
        top_level = z.read(f"{top}.dist-info/top_level.txt").decode().split()
        entry_points = z.read(f"{top}.dist-info/entry_points.txt").decode()
    assert top_level == ["tinysd"]  # no top-level `cli` or `weights` module
    assert not any(f.split("/")[0] in ("cli.py", "weights", "tests", "tools") for f in files)
    for needed in ("tinysd/weights/tokenizer/vocab.json", "tinysd/weights/tinysd-shapes/model_index.json",
                   "tinysd/weights/tinysd-shapes-lcm/model_index.json",
                   "tinysd/weights/tinysd-shapes/vae/diffusion_pytorch_model.safetensors",
                   "tinysd/data/calibration_prompts.txt", "tinysd/kernels/signatures.json"):
        assert needed in files, needed
    assert "tinysd = tinysd.__main__:main" in entry_points

    venv = tmp_path / "venv"  # the system site-packages give numpy & co.; tinysd itself comes from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
    py = venv / "bin" / "python"
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                        str(wheel)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args):
        return subprocess.run([str(a) for a in args], cwd=elsewhere, capture_output=True, text=True, env=env,
                              timeout=300)

    p = run(py, "-c", "import importlib.util, tinysd, tinysd.paths as p; "
                      "print(tinysd.__file__); print(p.DEFAULT_MODEL_DIR); print(importlib.util.find_spec('cli'))")
    assert p.returncode == 0, p.stderr
    module, model_dir, cli_spec = p.stdout.split("\n")[:3]
    site = str(venv / "lib")
    assert module.startswith(site) and model_dir.startswith(site), p.stdout  # the installed copy, not the checkout
    assert cli_spec == "None"  # the install claims no module named `cli`

    version = f"tinysd {__version__} (arithmetic spec {ARITHMETIC_SPEC_VERSION})"
    p = run(venv / "bin" / "tinysd", "--version")
    assert (p.returncode, p.stdout.strip()) == (0, version), p.stderr
    p = run(venv / "bin" / "tinysd", "generate", "a red circle", "--steps", "2", "-o", "circle.png")
    assert p.returncode == 0, p.stderr
    assert (elsewhere / "circle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = run(py, "-m", "tinysd", "--version")
    assert (p.returncode, p.stdout.strip()) == (0, version), p.stderr
    assert sorted(os.listdir(elsewhere)) == ["circle.png"]
