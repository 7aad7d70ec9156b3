"""Quantized model folders (tinysd/quant/folder.py) on the tiny fixture model: round trip, validation, atomicity,
and `Pipeline.from_pretrained` on a folder and on the fly."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinysd.checkpoint import load_checkpoint
from tinysd.errors import TinySDError
from tinysd.fixedpoint import ARITHMETIC_SPEC_VERSION
from tinysd.memory import LOW_MEMORY_ATTENTION_TILE_ELEMENTS
from tinysd.paths import TOKENIZER_DIR
from tinysd.pipeline import Pipeline
from tinysd.quant import folder as folder_module
from tinysd.quant.calibration import calibrate_model, quantize_model
from tinysd.quant.encodings import load_encodings
from tinysd.quant.folder import is_quantized_folder, load_quantized, save_quantized
from tinysd.quant.model import NETWORKS, canonical_precision, network_precisions
from tinysd.quant.prompts import read_prompts
from tinysd.safetensors_io import SafetensorsFile, write_safetensors

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-sd"
PROMPTS = ["a red circle", "a small blue square on the left"]


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(TINY)


@pytest.fixture(scope="module")
def qmodel(loaded):
    ranges = calibrate_model(loaded, PROMPTS, steps=2)
    q = quantize_model(loaded, "w8a8", ranges)
    q.info.update({"method": "minmax", "sqnr_db": {"unet": 29.5, "vae.encode": "inf"}, "calibration": {"steps": 2}})
    return q


@pytest.fixture(scope="module")
def saved(qmodel, tmp_path_factory):
    return save_quantized(qmodel, tmp_path_factory.mktemp("saved") / "q8")


@pytest.fixture
def copy(saved, tmp_path):
    """A private copy of the saved folder, to damage."""
    dst = tmp_path / "q"
    shutil.copytree(saved, dst)
    return dst


def assert_same_model(a, b):
    assert a.precision == b.precision and a.config == b.config
    assert set(a.networks) == set(b.networks) == set(NETWORKS)
    for n in NETWORKS:
        x, y = a.networks[n], b.networks[n]
        assert (x.network, x.precision) == (y.network, y.precision)
        assert list(x.arrays) == list(y.arrays)
        for k in x.arrays:
            assert x.arrays[k].dtype == y.arrays[k].dtype and x.arrays[k].shape == y.arrays[k].shape, k
            assert x.arrays[k].tobytes() == y.arrays[k].tobytes(), k
        assert x.activations.keys() == y.activations.keys() and x.params.keys() == y.params.keys()
        for k, e in x.activations.items():
            assert e == y.activations[k], k
        for k, e in x.params.items():
            assert e == y.params[k], k


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# round trip and layout
# ---------------------------------------------------------------------------------------------
def test_round_trip_bit_for_bit(qmodel, saved):
    back = load_quantized(saved)
    assert_same_model(qmodel, back)
    assert back.info == json.loads(json.dumps(qmodel.info))
    # and once more: what was loaded saves to the same bytes
    again = save_quantized(back, saved.parent / "again")
    for n in NETWORKS:
        rel = Path(n) / "quantized.safetensors"
        assert (saved / rel).read_bytes() == (again / rel).read_bytes()
    assert (saved / "encodings.json").read_bytes() == (again / "encodings.json").read_bytes()


def test_layout(qmodel, saved):
    assert is_quantized_folder(saved) and not is_quantized_folder(TINY)
    doc = json.loads((saved / "quantization.json").read_text())
    assert doc["format"] == "tinysd-quantized-model" and doc["precision"] == "w8a8"
    assert doc["arithmetic_spec_version"] == ARITHMETIC_SPEC_VERSION
    for n in NETWORKS:
        sf = SafetensorsFile(saved / n / "quantized.safetensors")
        assert set(sf.keys()) == set(qmodel.networks[n].arrays)
        assert all(info.dtype[0] in "IU" for info in sf.infos.values())  # integers only
        assert type(getattr(qmodel.config, n)).from_json(saved / n / "config.json") == getattr(qmodel.config, n)
    weights = [k for k in qmodel.networks["unet"].arrays if k.endswith(".weight_q")]
    assert weights and all(qmodel.networks["unet"].arrays[k].dtype == np.int8 for k in weights)
    # encodings.json: AIMET 1.0.0, every network's names prefixed
    act, params, version = load_encodings(saved / "encodings.json")
    assert version == "1.0.0"
    assert set(act) == set().union(*(qmodel.networks[n].activations for n in NETWORKS))
    assert set(params) == set().union(*(qmodel.networks[n].params for n in NETWORKS))
    assert {name.split(".")[0] for name in list(act) + list(params)} == set(NETWORKS)
    for name in ("vocab.json", "merges.txt"):
        assert (saved / "tokenizer" / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes()
    assert json.loads((saved / "scheduler" / "scheduler_config.json").read_text()) == qmodel.config.scheduler.to_dict()


def test_loaded_arrays_are_read_only(saved):
    arr = next(iter(load_quantized(saved).networks["unet"].arrays.values()))
    with pytest.raises(ValueError):
        arr[...] = 0


# ---------------------------------------------------------------------------------------------
# existing output, atomicity
# ---------------------------------------------------------------------------------------------
def test_existing_output_is_not_clobbered(qmodel, saved, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TinySDError) as e:
        save_quantized(qmodel, out)
    one_line_error(e, str(out), "already exists")
    with pytest.raises(TinySDError) as e:  # even with overwrite: not a quantized folder
        save_quantized(qmodel, out, overwrite=True)
    one_line_error(e, str(out), "not a tinysd quantized model folder")
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["q"]
    with pytest.raises(TinySDError) as e:
        save_quantized(qmodel, tmp_path / "no" / "such" / "dir")
    one_line_error(e, "does not exist")
    # a quantized folder is replaced with overwrite=True
    q2 = tmp_path / "q2"
    shutil.copytree(saved, q2)
    (q2 / "stale.txt").write_text("old")
    save_quantized(qmodel, q2, overwrite=True)
    assert not (q2 / "stale.txt").exists() and is_quantized_folder(q2)
    assert sorted(os.listdir(tmp_path)) == ["q", "q2"]  # no temporary folders left


class Interrupt(BaseException):
    pass


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), Interrupt()])
def test_interrupted_save_leaves_nothing(qmodel, saved, tmp_path, monkeypatch, exc):
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # the second network's arrays
            raise exc
        return write_safetensors(*args, **kwargs)

    monkeypatch.setattr(folder_module, "write_safetensors", failing_write)
    expected = TinySDError if isinstance(exc, OSError) else Interrupt
    with pytest.raises(expected):
        save_quantized(qmodel, tmp_path / "out")
    assert len(calls) == 2 and os.listdir(tmp_path) == []
    # an interrupted overwrite leaves the old folder as it was
    old = tmp_path / "old"
    shutil.copytree(saved, old)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    calls.clear()
    with pytest.raises(expected):
        save_quantized(qmodel, old, overwrite=True)
    assert os.listdir(tmp_path) == ["old"]
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------------------------
# validation on load
# ---------------------------------------------------------------------------------------------
def _rewrite_arrays(path: Path, change):
    sf = SafetensorsFile(path)
    arrays = {k: np.array(v) for k, v in sf.read_raw(sf.keys()).items()}
    change(arrays)
    write_safetensors(path, arrays, metadata=sf.metadata)


def _edit_json(path: Path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _first_weight(arrays):
    return next(k for k in sorted(arrays) if k.endswith(".weight_q"))


def _widen_weight(arrays):
    k = _first_weight(arrays)
    arrays[k] = arrays[k].astype(np.int16)


def _drop_weight(arrays):
    del arrays[_first_weight(arrays)]


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _act_16bit(doc):
    doc["activation_encodings"][5]["bw"] = 16
    doc["activation_encodings"][5]["offset"] = [-1000]


CORRUPTIONS = {
    "missing arrays": (lambda q: (q / "unet" / "quantized.safetensors").unlink(),
                       ["unet/quantized.safetensors", "missing"]),
    "truncated arrays": (lambda q: (q / "vae" / "quantized.safetensors").write_bytes(
        (q / "vae" / "quantized.safetensors").read_bytes()[:2000]), ["vae/quantized.safetensors"]),
    "flipped bit": (lambda q: _flip_byte(q / "unet" / "quantized.safetensors"), ["unet/quantized.safetensors", "corrupt"]),
    "wrong dtype": (lambda q: _rewrite_arrays(q / "unet" / "quantized.safetensors", _widen_weight),
                    ["unet/quantized.safetensors", "weight_q", "int16", "expected int8"]),
    "missing tensor": (lambda q: _rewrite_arrays(q / "text_encoder" / "quantized.safetensors", _drop_weight),
                       ["text_encoder/quantized.safetensors", "1 missing tensor", "weight_q"]),
    "missing encodings": (lambda q: (q / "encodings.json").unlink(), ["encodings.json", "missing"]),
    "malformed encodings": (lambda q: (q / "encodings.json").write_text("{\"version\": "), ["encodings.json", "JSON"]),
    "16-bit activation in w8a8": (lambda q: _edit_json(q / "encodings.json", _act_16bit),
                                  ["encodings.json", "16-bit", "w8a8"]),
    "zero scale": (lambda q: _edit_json(q / "encodings.json",
                                        lambda d: d["param_encodings"][0].update(scale=[0.0] * len(d["param_encodings"][0]["scale"]))),
                   ["encodings.json", "scale must be > 0"]),
    "edited encodings": (lambda q: _edit_json(q / "encodings.json",
                                              lambda d: d["activation_encodings"][3].update(offset=[-3])),
                         ["encodings.json", "corrupt"]),
    "spec version": (lambda q: _edit_json(q / "quantization.json", lambda d: d.update(arithmetic_spec_version="9.9")),
                     ["quantization.json", "'9.9'", repr(ARITHMETIC_SPEC_VERSION)]),
    "unknown precision": (lambda q: _edit_json(q / "quantization.json", lambda d: d.update(precision="w4a4")),
                          ["quantization.json", "w4a4"]),
    "precision the encodings disagree with": (
        lambda q: _edit_json(q / "quantization.json", lambda d: d.update(precision="w8a8,vae=w8a16")),
        ["encodings.json", "activation tensor 'vae.", "8-bit encoding", "w8a8,vae=w8a16", "16-bit activations there"]),
    "non-canonical precision": (lambda q: _edit_json(q / "quantization.json", lambda d: d.update(precision="w8a8,vae=w8a8")),
                                ["quantization.json", "'w8a8,vae=w8a8'", "canonical"]),
    "format version": (lambda q: _edit_json(q / "quantization.json", lambda d: d.update(format_version=7)),
                       ["quantization.json", "format version 7"]),
    "missing header": (lambda q: (q / "quantization.json").unlink(), ["quantization.json", "missing"]),
    "malformed header": (lambda q: (q / "quantization.json").write_text("[1, 2"), ["quantization.json", "invalid JSON"]),
    "missing config": (lambda q: (q / "unet" / "config.json").unlink(), ["unet/config.json", "missing"]),
    "missing scheduler": (lambda q: (q / "scheduler" / "scheduler_config.json").unlink(), ["scheduler_config.json"]),
    "missing vocabulary": (lambda q: (q / "tokenizer" / "vocab.json").unlink(), ["tokenizer/vocab.json", "missing"]),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_damaged_folder_is_one_line_error(copy, case):
    damage, needles = CORRUPTIONS[case]
    damage(copy)
    assert is_quantized_folder(copy)
    with pytest.raises(TinySDError) as e:
        load_quantized(copy)
    one_line_error(e, *needles)
    with pytest.raises(TinySDError) as e:
        Pipeline.from_pretrained(copy)
    one_line_error(e, *needles)
    if case == "flipped bit":  # low memory: only the SHA-256 needs the data, checked when the network is read
        pipe = Pipeline.from_pretrained(copy, low_memory=True)
        with pytest.raises(TinySDError) as e:
            pipe.unet.network()
    else:  # every other check is done before any weight is read
        with pytest.raises(TinySDError) as e:
            Pipeline.from_pretrained(copy, low_memory=True)
    one_line_error(e, *needles)


@pytest.mark.parametrize("spec, per_network, canonical", [
    ("w8a8", ("w8a8", "w8a8", "w8a8"), "w8a8"),
    ("w8a16,vae=w8a16", ("w8a16", "w8a16", "w8a16"), "w8a16"),
    ("w8a8,vae=w8a16", ("w8a8", "w8a8", "w8a16"), "w8a8,vae=w8a16"),
    ("w8a16,vae=w8a8,text_encoder=w8a8", ("w8a8", "w8a16", "w8a8"), "w8a16,text_encoder=w8a8,vae=w8a8"),
    ("w8a8,unet=w8a16", ("w8a8", "w8a16", "w8a8"), "w8a16,text_encoder=w8a8,vae=w8a8"),
])
def test_model_precisions(spec, per_network, canonical):
    """A model precision: one for all networks, then overrides; the canonical form is the UNet's, then the
    networks differing from it in NETWORKS order."""
    assert network_precisions(spec) == dict(zip(NETWORKS, per_network))
    assert canonical_precision(spec) == canonical and canonical_precision(canonical) == canonical


@pytest.mark.parametrize("spec, needle", [
    ("w4a4", "expected w8a8, w8a16"), ("", "expected"), ("vae=w8a16", "expected"), ("w8a8,vae", "'vae' is not NETWORK="),
    ("w8a8,decoder=w8a16", "'decoder=w8a16'"), ("w8a8,vae=w8a4", "'vae=w8a4'"), ("w8a8,vae=w8a8,vae=w8a16", "twice"),
    ("w8a8,", "'' is not"),
])
def test_bad_model_precision(spec, needle):
    with pytest.raises(TinySDError) as e:
        network_precisions(spec)
    one_line_error(e, repr(spec), needle)


def test_precision_mismatch(saved):
    with pytest.raises(TinySDError) as e:
        load_quantized(saved, precision="w8a16")
    one_line_error(e, str(saved), "w8a8", "w8a16")
    assert load_quantized(saved, precision="w8a8").precision == "w8a8"


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
def test_pipeline_runs_a_quantized_folder(qmodel, saved):
    pipe = Pipeline.from_pretrained(saved)
    assert (pipe.precision, pipe.layout, pipe.model_name) == ("w8a8", "quantized", "q8")
    for net in (pipe.text_encoder, pipe.unet, pipe.vae):  # integer interpreters over the folder's arrays
        arrays = net.interp.qnet.arrays
        ref = qmodel.networks[net.interp.network].arrays
        assert arrays.keys() == ref.keys() and all(np.array_equal(arrays[k], ref[k]) for k in ref)
    a = pipe.generate("a red circle", steps=2, seed=3)
    b = Pipeline.from_pretrained(saved, precision="w8a8").generate("a red circle", steps=2, seed=3)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    for precision in ("w8a16", "fp32"):
        with pytest.raises(TinySDError) as e:
            Pipeline.from_pretrained(saved, precision=precision)
        one_line_error(e, "w8a8", precision)
    # weights stay int8 unless asked: the float32 copies of the GEMM kernels are not cached
    assert not pipe.unet.interp.cache_weights
    cached = Pipeline.from_pretrained(saved, cache_weights=True)
    assert cached.unet.interp.cache_weights
    c = cached.generate("a red circle", steps=2, seed=3)
    np.testing.assert_array_equal(a.latents, c.latents)
    with pytest.raises(TinySDError) as e:
        Pipeline.from_pretrained(saved, steps=3)
    one_line_error(e, "cache_weights", "steps")


def test_pipeline_quantizes_on_the_fly_with_the_default_prompts(loaded):
    pipe = Pipeline.from_pretrained(TINY, precision="w8a16", steps=1)
    assert pipe.precision == "w8a16"
    ref = quantize_model(loaded, "w8a16", calibrate_model(loaded, read_prompts(), steps=1))
    for net in (pipe.text_encoder, pipe.unet, pipe.vae):
        arrays = net.interp.qnet.arrays
        want = ref.networks[net.interp.network].arrays
        assert arrays.keys() == want.keys() and all(np.array_equal(arrays[k], want[k]) for k in want)


def test_low_memory_pipeline_reads_one_network_at_a_time_and_gives_the_same_images(saved):
    """Pipeline(low_memory=True) on a quantized folder: each network read when first used (its arrays only),
    dropped after its last use; the images and latents are those of the pipeline holding all three."""
    eager = Pipeline.from_pretrained(saved)
    only = load_quantized(saved, networks=("unet",))
    assert set(only.networks) == {"unet"} and only.config == eager.config
    ref = eager.generate("a red circle", steps=2, seed=3)
    pipe = Pipeline.from_pretrained(saved, low_memory=True)
    nets = (pipe.text_encoder, pipe.unet, pipe.vae)
    assert not any(n.loaded for n in nets)  # nothing read yet
    seen = []
    res = pipe.generate("a red circle", steps=2, seed=3,
                        callback=lambda done, total: seen.append(tuple(n.loaded for n in nets)))
    assert seen == [(False, True, False)] * 2  # during the sampler loop only the UNet is resident
    assert not any(n.loaded for n in nets)  # all dropped at the end
    np.testing.assert_array_equal(res.latents, ref.latents)
    assert res.images[0].tobytes() == ref.images[0].tobytes()
    assert pipe.unet.interp.attention_tile_elements == LOW_MEMORY_ATTENTION_TILE_ELEMENTS  # (same integers: rows
    # are independent, tests/interp/test_integer.py::test_attention_in_query_tiles_gives_the_same_integers)
    again = pipe.generate("a red circle", steps=2, seed=3)  # read again when used again
    np.testing.assert_array_equal(again.latents, ref.latents)
