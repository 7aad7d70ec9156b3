"""Nothing destroyed: --overwrite replaces only what tinysd wrote, outputs that are not regular files are
refused, symbolic links are written through, temporary files never outlive an error, and FIFOs given as
inputs never hang."""
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tinysd.atomic import TEMP_PREFIX, write_file
from tinysd.errors import TinySDError
from tinysd.png import read_parameters
from clitools import assert_one_line_error, run

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from golden_helpers import write_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny-sd"


def _golden(out, *extra):
    return run(["golden", "--model", TINY, "--prompt", "x", "-o", out, *extra])


def test_golden_overwrite_refuses_a_users_folder(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("x")
    assert_one_line_error(_golden(proj, "--overwrite"), "proj", "not a tinysd golden folder")
    assert_one_line_error(_golden(proj), "proj", "already exists")
    assert os.listdir(proj) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["proj"]


@pytest.mark.parametrize("command", ["golden", "quantize"])
@pytest.mark.parametrize("name", [".", "..", "../work", "sub/../.."])
def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch, command, name):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "mine.txt").write_text("x")
    monkeypatch.chdir(work)
    before = sorted(os.listdir(work)), sorted(os.listdir(tmp_path))
    if command == "golden":
        res = _golden(name, "--overwrite")
    else:
        res = run(["quantize", TINY, "-o", name, "--precision", "w8a8", "--overwrite"])
    assert_one_line_error(res, "current folder" if name == "../work" else "not a folder name")
    assert (sorted(os.listdir(work)), sorted(os.listdir(tmp_path))) == before


def test_quantize_overwrite_refuses_the_current_folder_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quantization.json").write_text("{}")  # even one that looks like a quantized folder
    res = run(["quantize", TINY, "-o", tmp_path, "--precision", "w8a8", "--overwrite"])
    assert_one_line_error(res, "current folder", "refusing")
    assert os.listdir(tmp_path) == ["quantization.json"]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_outputs_that_are_not_regular_files_are_refused(tmp_path):
    fifo = _fifo(tmp_path / "out.png")
    res = run(["generate", "x", "--model", TINY, "--steps", 1, "-o", fifo])
    assert_one_line_error(res, "out.png", "FIFO", "refusing")
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    assert_one_line_error(run(["generate", "x", "--model", TINY, "--steps", 1, "-o", link]), "link.png", "FIFO")
    golden = write_synthetic(tmp_path / "g")
    report = _fifo(tmp_path / "report.json")
    assert_one_line_error(run(["compare", golden, golden, "--json", report]), "--json", "report.json", "FIFO")
    with pytest.raises(TinySDError, match="FIFO"):
        write_file(fifo, lambda f: f.write(b"x"))
    for p in (fifo, report):
        assert stat.S_ISFIFO(os.lstat(p).st_mode)
    names = ["g", "link.png", "out.png", "report.json"]
    if os.geteuid() == 0:  # a character device like /dev/null (1, 3), made here; only root may create one
        dev = tmp_path / "null.png"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        res = run(["generate", "x", "--model", TINY, "--steps", 1, "-o", dev])
        assert_one_line_error(res, "null.png", "character device", "refusing")
        assert stat.S_ISCHR(os.lstat(dev).st_mode)
        names.append("null.png")
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_a_symlink_output_is_written_through(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "image.png"
    real.write_bytes(b"old")
    real.chmod(0o640)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    res = run(["generate", "a red circle", "--model", TINY, "--steps", 1, "-o", link])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert read_parameters(real).startswith("a red circle")
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640  # the replaced file keeps its permissions
    assert os.listdir(real_dir) == ["image.png"] and sorted(os.listdir(tmp_path)) == ["link.png", "real"]


def test_compare_json_to_a_place_that_cannot_be_written(tmp_path):
    golden = write_synthetic(tmp_path / "g")
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new files even to root
        target = Path("/proc/tinysd-report.json")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "report.json"
    assert_one_line_error(run(["compare", golden, golden, "--json", target]), "--json", "report.json", "cannot write")
    assert_one_line_error(run(["compare", golden, golden, "--json", golden / "manifest.json" / "r.json"]),
                          "--json", "does not exist")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_no_temporary_file(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"before")
    seen = []

    def write(f):
        f.write(b"partial")
        seen.extend(os.listdir(tmp_path))
        raise exc("boom")

    with pytest.raises(exc):
        write_file(target, write)
    assert any(n.startswith(f"{TEMP_PREFIX}out.bin.{os.getpid()}.") for n in seen), seen  # recognisable while it lives
    assert os.listdir(tmp_path) == ["out.bin"] and target.read_bytes() == b"before"


def _unblock_after(fifo: Path, seconds: float):
    """If a reader hangs on `fifo`, open it for writing after `seconds` so that the test fails instead of hanging."""
    done = threading.Event()

    def unblock():
        if not done.wait(seconds):
            fd = os.open(fifo, os.O_RDWR)  # a writer appears: a blocked open for reading returns
            os.close(fd)
    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    return done


def test_a_fifo_as_a_checkpoint_does_not_hang(tmp_path):
    fifo = _fifo(tmp_path / "model.safetensors")
    p = subprocess.run([sys.executable, "-m", "tinysd", "generate", "x", "--model", str(fifo), "-o",
                        str(tmp_path / "o.png")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"tinysd: error: {fifo}: cannot read (a FIFO, not a regular file)"]


@pytest.mark.parametrize("what", ["prompts", "encodings", "config"])
def test_other_fifo_inputs_do_not_hang(tmp_path, what):
    from tinysd.config import UNetConfig
    from tinysd.quant.encodings import load_encodings
    from tinysd.quant.prompts import read_prompts

    fifo = _fifo(tmp_path / "input")
    done = _unblock_after(fifo, 20)
    try:
        with pytest.raises(TinySDError, match="FIFO"):
            {"prompts": read_prompts, "encodings": load_encodings, "config": UNetConfig.from_json}[what](fifo)
    finally:
        done.set()


def test_a_signal_inside_fdopen_closes_the_file_once(tmp_path, monkeypatch):
    """SIGTERM's exception can land inside os.fdopen after the file object owns the descriptor; io.open then
    closes it, and open_regular must not close it again (CI saw `OSError: Bad file descriptor` instead of
    `tinysd: terminated`)."""
    from tinysd.fileio import open_regular

    class Signal(BaseException):
        pass

    real_fdopen = os.fdopen

    def fdopen_then_signal(fd, *args, **kwargs):
        real_fdopen(fd, *args, **kwargs).close()  # as io.open does when an exception interrupts it
        raise Signal()

    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fdopen", fdopen_then_signal)
    with pytest.raises(Signal):
        open_regular(path)
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before
    with open_regular(path) as f:
        assert f.read() == b"x"
