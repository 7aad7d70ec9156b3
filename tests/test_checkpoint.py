"""Checkpoint loading: diffusers folders, CompVis single files, variants in the wild, bad input.

Variants are built on the fly in tmp_path from the tiny diffusers fixture
(tests/fixtures/tiny-sd, from tools/make_fixtures.py) and from small random
models; SD 1.5 / BK-SDM structure is exercised through the CompVis key -> shape
listings of tests/fixtures/compvis_shapes.json.gz (tools/check_keymap.py, which
also validates the key map against diffusers' own converter).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

from tinysd import checkpoint as ck
from tinysd import keymap
from tinysd.config import CLIPTextConfig, ModelConfig, SchedulerConfig, UNetConfig, VAEConfig
from tinysd.errors import TinySDError
from tinysd.paths import TOKENIZER_DIR
from tinysd.safetensors_io import SafetensorsFile, bf16_bits, write_safetensors

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-sd"
SHAPES = json.loads(gzip.open(FIXTURES / "compvis_shapes.json.gz").read())

CLIP_SMALL = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, bos_token_id=998, eos_token_id=999, pad_token_id=999)
VAE_SMALL = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
SMALL = {
    # BK-SDM style: no mid block, mixed block types
    "no-mid": ModelConfig(
        text_encoder=CLIP_SMALL,
        unet=UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32, attention_head_dim=2,
                        norm_num_groups=4, mid_block_type=None, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        vae=VAE_SMALL),
    # linear projections, per-block heads, LCM time_cond_proj_dim, VAE without mid attention
    "linear-proj": ModelConfig(
        text_encoder=dataclasses.replace(CLIP_SMALL, hidden_size=64, num_attention_heads=1, num_hidden_layers=1),
        unet=UNetConfig(block_out_channels=(16, 16, 32), layers_per_block=2, cross_attention_dim=24,
                        attention_head_dim=(2, 2, 4), norm_num_groups=4, use_linear_projection=True, time_cond_proj_dim=8,
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
        vae=dataclasses.replace(VAE_SMALL, mid_block_add_attention=False)),
}
# Fields that tensor shapes cannot carry; a config inferred from shapes holds the defaults there.
NOT_INFERRED = {
    "unet": ("sample_size", "attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps",
             "flip_sin_to_cos", "freq_shift", "downsample_padding", "mid_block_scale_factor", "act_fn"),
    "vae": ("norm_num_groups", "sample_size", "scaling_factor", "act_fn"),
    "text_encoder": ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id"),
}


def random_model(cfg: ModelConfig, seed: int = 0) -> ck.LoadedModel:
    rng = np.random.default_rng(seed)
    params = {n: {k: rng.standard_normal(s).astype(np.float32) for k, s in ck.expected_shapes(n, getattr(cfg, n)).items()}
              for n in ck.NETWORKS}
    return ck.LoadedModel(config=cfg, params=params)


@pytest.fixture(scope="module")
def tiny() -> ck.LoadedModel:
    assert (TINY / "model_index.json").is_file(), f"{TINY} missing: run tools/make_fixtures.py"
    return ck.load_checkpoint(TINY)


@pytest.fixture(scope="module", params=["tiny-sd", *SMALL])
def model(request, tiny) -> ck.LoadedModel:
    return tiny if request.param == "tiny-sd" else random_model(SMALL[request.param])


@pytest.fixture(scope="module", params=["tiny-sd", "no-mid"])
def attn_model(request, tiny) -> ck.LoadedModel:
    """Models whose VAE has mid-block attention."""
    return tiny if request.param == "tiny-sd" else random_model(SMALL[request.param])


def assert_params_equal(got: dict, want: dict) -> None:
    for n in ck.NETWORKS:
        assert sorted(got[n]) == sorted(want[n]), n
        for k, a in want[n].items():
            b = got[n][k]
            assert b.dtype == np.float32 and b.flags.c_contiguous, k
            assert b.shape == a.shape and np.array_equal(b, a), f"{n}: {k}"


def expected_inferred(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the fields shapes cannot carry set to tinysd's documented defaults."""
    out = {}
    for net, cls in (("text_encoder", CLIPTextConfig), ("unet", UNetConfig), ("vae", VAEConfig)):
        d = getattr(cfg, net).to_dict()
        defaults = cls().to_dict()
        d.update({f: defaults[f] for f in NOT_INFERRED[net]})
        if net == "text_encoder":  # documented fallbacks for widths that SD 1.x's defaults do not fit
            d["num_attention_heads"] = d["hidden_size"] // 64 if d["hidden_size"] % 64 == 0 else 1
        else:
            d["norm_num_groups"] = math.gcd(32, *d["block_out_channels"])
        if net == "unet":
            c = d["block_out_channels"]
            widths = [c[i] for i, t in enumerate(d["down_block_types"]) if t.startswith("CrossAttn")]
            widths += [c[-1 - i] for i, t in enumerate(d["up_block_types"]) if t.startswith("CrossAttn")]
            widths += [c[-1]] if d["mid_block_type"] else []
            d["attention_head_dim"] = math.gcd(8, *widths)
        out[net] = cls.from_dict(d)
    return ModelConfig(**out, scheduler=SchedulerConfig())


def write(path: Path, tensors: dict, **kw) -> Path:
    write_safetensors(path, tensors, **kw)
    return path


def rewrite(path: Path, fn) -> None:
    """Replace a safetensors file's tensors with fn(dict of float32 arrays)."""
    sf = SafetensorsFile(path)
    write_safetensors(path, fn(sf.read_float32(sf.keys())))


# ---------------------------------------------------------------------------------------------
# diffusers folders
# ---------------------------------------------------------------------------------------------
def test_folder_load_matches_files_and_configs(tiny):
    """Every tensor equals what the safetensors library reads from the fixture files; configs equal config.json."""
    assert tiny.layout == "diffusers" and tiny.source == TINY
    for net, (sub, base, cls) in ck.COMPONENTS.items():
        raw = stnp.load_file(str(TINY / sub / f"{base}.safetensors"))
        want = {keymap.canonical_clip_key(k) if net == "text_encoder" else k: v.astype(np.float32) for k, v in raw.items()
                if not k.endswith("position_ids")}
        assert sorted(tiny.params[net]) == sorted(want) == sorted(ck.expected_shapes(net, getattr(tiny.config, net)))
        for k, v in want.items():
            assert np.array_equal(tiny.params[net][k], v), k
        assert getattr(tiny.config, net) == cls.from_dict(json.loads((TINY / sub / "config.json").read_text()))
        assert tiny.files[net] == (TINY / sub / f"{base}.safetensors",)
    sched = TINY / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        assert tiny.config.scheduler == SchedulerConfig.from_dict(json.loads(sched.read_text()))
    assert tiny.tokenizer_dir == ((TINY / "tokenizer") if (TINY / "tokenizer").is_dir() else None)
    assert all(k.startswith("text_model.") for k in tiny.params["text_encoder"])


def test_save_diffusers_roundtrip_and_tokenizer(model, tmp_path):
    out = ck.save_diffusers(model, tmp_path / "m")
    back = ck.load_checkpoint(out)
    assert_params_equal(back.params, model.params)
    assert back.config == model.config
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    src_tok = model.tokenizer_dir or TOKENIZER_DIR
    if src_tok.is_dir():
        assert back.tokenizer_dir == out / "tokenizer"
        assert sorted(p.name for p in src_tok.iterdir()) == sorted(p.name for p in back.tokenizer_dir.iterdir())
    none = ck.load_checkpoint(ck.save_diffusers(model, tmp_path / "n", tokenizer_dir=False))
    assert none.tokenizer_dir is None


def test_folder_clip_with_and_without_prefix(tiny, tmp_path):
    out = ck.save_diffusers(tiny, tmp_path / "m", tokenizer_dir=False)
    f = out / "text_encoder" / "model.safetensors"
    rewrite(f, lambda d: {k.removeprefix("text_model."): v for k, v in d.items()})
    assert not any(k.startswith("text_model.") for k in SafetensorsFile(f).keys())
    assert_params_equal(ck.load_checkpoint(out).params, tiny.params)
    rewrite(f, lambda d: {"text_model." + k: v for k, v in d.items()} | {"text_model.embeddings.position_ids": np.arange(77)[None]})
    assert_params_equal(ck.load_checkpoint(out).params, tiny.params)


LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.mark.parametrize("shape", ["linear", "conv1x1"])
def test_folder_vae_legacy_attention_names(attn_model, tmp_path, shape):
    model = attn_model
    assert model.config.vae.mid_block_add_attention
    out = ck.save_diffusers(model, tmp_path / "m", tokenizer_dir=False)

    def legacy(d):
        new = {}
        for k, v in d.items():
            for cur, old in LEGACY.items():
                if f".attentions.0.{cur}." in k:
                    k = k.replace(f".{cur}.", f".{old}.")
                    if shape == "conv1x1" and v.ndim == 2:
                        v = v.reshape(v.shape + (1, 1))  # (C, C) -> (C, C, 1, 1)
            new[k] = v
        return new

    f = out / "vae" / "diffusion_pytorch_model.safetensors"
    rewrite(f, legacy)
    keys = SafetensorsFile(f).shapes()
    assert any(".query." in k for k in keys) and not any(".to_q." in k for k in keys)
    assert_params_equal(ck.load_checkpoint(out).params, model.params)


def test_folder_fp16_variant_and_preference(tiny, tmp_path):
    out = ck.save_diffusers(tiny, tmp_path / "m", dtype="F16", variant="fp16", tokenizer_dir=False)
    assert (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    half = ck.load_checkpoint(out)
    want = {n: {k: v.astype(np.float16).astype(np.float32) for k, v in p.items()} for n, p in tiny.params.items()}
    assert_params_equal(half.params, want)
    assert half.stored_dtypes == {n: ("F16",) for n in ck.NETWORKS}
    # with the fp32 file beside the fp16 one, the fp32 file is used
    for net, (sub, base, _) in ck.COMPONENTS.items():
        write(out / sub / f"{base}.safetensors", tiny.params[net])
    full = ck.load_checkpoint(out)
    assert_params_equal(full.params, tiny.params)
    assert full.files["unet"] == (out / "unet" / "diffusion_pytorch_model.safetensors",)


def test_folder_bf16_file(tiny, tmp_path):
    # values made exactly representable in bf16 first, so the expected result is exact
    exact = {n: {k: (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for k, v in p.items()}
             for n, p in tiny.params.items()}
    out = ck.save_diffusers((tiny.config, exact), tmp_path / "m", dtype="BF16", tokenizer_dir=False)
    got = ck.load_checkpoint(out)
    assert_params_equal(got.params, exact)
    assert got.stored_dtypes["unet"] == ("BF16",)


def test_folder_sharded_index(tiny, tmp_path):
    out = ck.save_diffusers(tiny, tmp_path / "m", tokenizer_dir=False)
    unet = out / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(tiny.params["unet"])
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in halves.items():
        write(unet / name, {k: tiny.params["unet"][k] for k in ks})
        weight_map.update({k: name for k in ks})
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    got = ck.load_checkpoint(out)
    assert_params_equal(got.params, tiny.params)
    assert len(got.files["unet"]) == 2


# ---------------------------------------------------------------------------------------------
# single files
# ---------------------------------------------------------------------------------------------
def test_single_file_equals_folder(model, tmp_path):
    f = ck.to_single_file(model, tmp_path / "m.safetensors")
    assert all(keymap.SINGLE_FILE_PREFIX[n] for n in ck.NETWORKS)
    got = ck.load_checkpoint(f)
    assert got.layout == "single_file" and got.tokenizer_dir is None
    assert got.config == model.config  # from the file's metadata
    assert_params_equal(got.params, model.params)


def test_single_file_inferred_config(model, tmp_path):
    f = ck.to_single_file(model, tmp_path / "m.safetensors", embed_config=False)
    assert ck.METADATA_CONFIG_KEY not in SafetensorsFile(f).metadata
    got = ck.load_checkpoint(f)
    assert got.config == expected_inferred(model.config)
    assert_params_equal(got.params, model.params)
    forced = ck.load_checkpoint(f, config=model.config)
    assert forced.config == model.config
    assert_params_equal(forced.params, model.params)


def compvis(model) -> dict:
    return dict(ck.to_compvis_state_dict(model))


def load_sd(tmp_path: Path, sd: dict, model, **kw) -> ck.LoadedModel:
    f = write(tmp_path / "v.safetensors", sd, **kw)
    return ck.load_checkpoint(f, config=model.config)


MINI = FIXTURES / "compvis-mini"


def test_compvis_fixture_read_as_diffusers_reads_it(caplog):
    """A CompVis single file (F16, with position_ids, model_ema.*, alphas_cumprod) against diffusers' own conversion."""
    ref = json.loads((MINI / "reference.json").read_text())
    made = ck.model_config_from_dict(json.loads((MINI / "GENERATED.json").read_text())["config"], "GENERATED.json")
    with caplog.at_level(logging.DEBUG, logger="tinysd.checkpoint"):
        got = ck.load_checkpoint(MINI / "model.safetensors")
    assert got.config == expected_inferred(made)
    assert "model_ema.decay" in caplog.text and "alphas_cumprod" in caplog.text
    assert got.stored_dtypes == {n: ("F16",) for n in ck.NETWORKS}
    raw = stnp.load_file(str(MINI / "model.safetensors"))  # the safetensors library's reading of the file
    for net in ck.NETWORKS:
        assert sorted(got.params[net]) == sorted(ref[net])
        for name, (file_key, shape) in ref[net].items():
            want = raw[file_key].astype(np.float32).reshape(shape)
            assert np.array_equal(got.params[net][name], want), name
    forced = ck.load_checkpoint(MINI / "model.safetensors", config=made)
    assert forced.config == made
    assert_params_equal(forced.params, got.params)


def test_single_file_clip_without_prefix(model, tmp_path):
    p = keymap.SINGLE_FILE_PREFIX["text_encoder"]
    sd = {(p + k[len(p) + len("text_model."):] if k.startswith(p) else k): v for k, v in compvis(model).items()}
    assert not any(k.startswith(p + "text_model.") for k in sd)
    sd[p + "embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    assert_params_equal(load_sd(tmp_path, sd, model).params, model.params)
    # and the inferred config does not depend on the prefix either
    f = write(tmp_path / "w.safetensors", sd)
    assert ck.load_checkpoint(f).config == expected_inferred(model.config)


@pytest.mark.parametrize("variant", ["compvis-linear", "legacy-conv", "legacy-linear", "diffusers-names"])
def test_single_file_vae_attention_variants(attn_model, tmp_path, variant):
    model = attn_model
    assert model.config.vae.mid_block_add_attention
    names = {"legacy-conv": {"q": "query", "k": "key", "v": "value", "proj_out": "proj_attn"},
             "legacy-linear": {"q": "query", "k": "key", "v": "value", "proj_out": "proj_attn"},
             "diffusers-names": {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0", "norm": "group_norm"},
             "compvis-linear": {}}[variant]
    sd = {}
    n_attn = 0
    for k, v in compvis(model).items():
        if ".mid.attn_1." in k:
            n_attn += 1
            head, _, tail = k.partition(".mid.attn_1.")
            module, _, leaf = tail.rpartition(".")
            if variant.endswith("linear") and v.ndim == 4:
                v = v[:, :, 0, 0]  # (C, C, 1, 1) -> (C, C)
            k = f"{head}.mid.attn_1.{names.get(module, module)}.{leaf}"
        sd[k] = v
    assert n_attn == 2 * 10  # norm, q, k, v, proj_out (weight + bias) in encoder and decoder
    assert_params_equal(load_sd(tmp_path, sd, model).params, model.params)


def test_single_file_extra_keys_ignored_and_logged(model, tmp_path, caplog):
    sd = compvis(model)
    sd["model_ema.decay"] = np.array(0.9999, dtype=np.float32)
    sd["model_ema.num_updates"] = np.array(1000, dtype=np.int32)
    for k in list(sd)[:5]:
        if k.startswith("model.diffusion_model."):
            sd["model_ema.diffusion_model" + k[len("model.diffusion_model."):].replace(".", "")] = sd[k] + 1
    sd["alphas_cumprod"] = np.linspace(1, 0, 1000, dtype=np.float32)
    sd["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"] = np.array(1.0, dtype=np.float16)
    with caplog.at_level(logging.DEBUG, logger="tinysd.checkpoint"):
        got = load_sd(tmp_path, sd, model)
    assert_params_equal(got.params, model.params)
    text = caplog.text
    for k in ("model_ema.decay", "model_ema.num_updates", "alphas_cumprod", "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"):
        assert k in text
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "model_ema" in r.getMessage())


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_single_file_half_precision_upcast(model, tmp_path, dtype):
    f = ck.to_single_file(model, tmp_path / "h.safetensors", dtype=dtype)
    got = ck.load_checkpoint(f)
    if dtype == "F16":
        want = {n: {k: v.astype(np.float16).astype(np.float32) for k, v in p.items()} for n, p in model.params.items()}
    else:
        want = {n: {k: bf16_reference(v) for k, v in p.items()} for n, p in model.params.items()}
    assert_params_equal(got.params, want)
    assert got.stored_dtypes == {n: (dtype,) for n in ck.NETWORKS}


def bf16_reference(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 value (ties to even mantissa), computed in float64 by comparing the two candidates."""
    x = np.asarray(x, dtype=np.float32)
    lo = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # truncation toward zero
    hi = (lo.view(np.uint32) + np.uint32(0x10000)).view(np.float32)  # next bf16 away from zero
    d_lo = np.abs(x.astype(np.float64) - lo.astype(np.float64))
    d_hi = np.abs(hi.astype(np.float64) - x.astype(np.float64))
    lo_even = (lo.view(np.uint32) >> 16) % 2 == 0
    return np.where((d_lo < d_hi) | ((d_lo == d_hi) & lo_even), lo, hi)


def test_bf16_rounding_matches_reference():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10000),
                        # exact ties: low 16 bits 0x8000, both parities of the kept mantissa
                        (rng.integers(0x3F800000, 0x40800000, 200, dtype=np.uint32) & np.uint32(0xFFFF0000)
                         | np.uint32(0x8000)).view(np.float32)]).astype(np.float32)
    x = np.concatenate([x, -x])
    got = (bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(got, bf16_reference(x))
    assert np.isnan((bf16_bits(np.array([np.nan], np.float32)).astype(np.uint32) << 16).view(np.float32)).all()


# ---------------------------------------------------------------------------------------------
# safetensors I/O against the safetensors library
# ---------------------------------------------------------------------------------------------
def test_reader_and_writer_match_safetensors_library(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b.c": rng.standard_normal(5).astype(np.float16),
               "d": rng.standard_normal((2, 1, 1)), "e": np.arange(7, dtype=np.int64), "s": np.array(3.5, np.float32)}
    stnp.save_file(tensors, str(tmp_path / "lib.safetensors"), metadata={"x": "y"})
    sf = SafetensorsFile(tmp_path / "lib.safetensors")
    assert sf.metadata == {"x": "y"}
    raw = sf.read_raw(sf.keys())
    for k, v in tensors.items():
        assert raw[k].dtype == v.dtype and raw[k].shape == v.shape and np.array_equal(raw[k], v)
    write_safetensors(tmp_path / "ours.safetensors", tensors, metadata={"x": "y"})
    back = stnp.load_file(str(tmp_path / "ours.safetensors"))
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


# ---------------------------------------------------------------------------------------------
# pickles: refused, never opened
# ---------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth", ".pkl"])
def test_pickle_refused_and_never_unpickled(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    f = tmp_path / f"model{suffix}"
    f.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(TinySDError, match=r"safetensors") as e:
        ck.load_checkpoint(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_folder_with_only_pickle_weights_refused(tiny, tmp_path):
    out = ck.save_diffusers(tiny, tmp_path / "m", tokenizer_dir=False)
    (out / "text_encoder" / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (out / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(TinySDError, match=r"pytorch_model\.bin.*safetensors"):
        ck.load_checkpoint(out)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# bad input: one-line TinySDError naming the file / tensor
# ---------------------------------------------------------------------------------------------
def raises(match: str, fn, *a, **kw) -> str:
    with pytest.raises(TinySDError, match=match) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_single_file_missing_tensor(tiny, tmp_path):
    sd = compvis(tiny)
    gone = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    del sd[gone]
    f = write(tmp_path / "m.safetensors", sd)
    msg = raises(r"missing", ck.load_checkpoint, f, config=tiny.config)
    assert str(f) in msg and gone in msg and "down_blocks.0.resnets.0.conv1.weight" in msg


def test_single_file_wrong_shape(tiny, tmp_path):
    sd = compvis(tiny)
    k = "first_stage_model.decoder.conv_out.weight"
    sd[k] = sd[k][:, :, :2]
    f = write(tmp_path / "m.safetensors", sd)
    msg = raises(r"wrong shape", ck.load_checkpoint, f, config=tiny.config)
    assert str(f) in msg and k in msg and str(list(sd[k].shape)) in msg


def test_single_file_unknown_network_key(tiny, tmp_path):
    sd = compvis(tiny)
    sd["model.diffusion_model.input_blocks.1.0.extra.weight"] = np.zeros(3, np.float32)
    f = write(tmp_path / "m.safetensors", sd)
    msg = raises(r"does not have", ck.load_checkpoint, f, config=tiny.config)
    assert "model.diffusion_model.input_blocks.1.0.extra.weight" in msg and str(f) in msg


def test_single_file_missing_network_and_foreign(tiny, tmp_path):
    sd = {k: v for k, v in compvis(tiny).items() if not k.startswith("first_stage_model.")}
    f = write(tmp_path / "m.safetensors", sd)
    assert "first_stage_model." in raises(r"no vae tensors", ck.load_checkpoint, f)
    sd = compvis(tiny) | {"cond_stage_model.model.transformer.resblocks.0.ln_1.weight": np.ones(4, np.float32)}
    f = write(tmp_path / "sd2.safetensors", sd)
    raises(r"OpenCLIP.*2\.x", ck.load_checkpoint, f)


def test_single_file_non_float_parameter(tiny, tmp_path):
    sd = compvis(tiny)
    k = "model.diffusion_model.out.2.bias"
    sd[k] = sd[k].astype(np.int32)
    f = write(tmp_path / "m.safetensors", sd)
    assert k in raises(r"dtype I32", ck.load_checkpoint, f, config=tiny.config)


def test_folder_missing_wrong_unexpected_duplicate(tiny, tmp_path):
    out = ck.save_diffusers(tiny, tmp_path / "m", tokenizer_dir=False)
    f = out / "unet" / "diffusion_pytorch_model.safetensors"
    original = dict(tiny.params["unet"])

    rewrite(f, lambda d: {k: v for k, v in d.items() if k != "conv_in.bias"})
    msg = raises(r"1 missing tensor\(s\): conv_in\.bias", ck.load_checkpoint, out)
    assert str(f) in msg
    rewrite(f, lambda d: original | {"conv_in.bias": np.zeros(3, np.float32)})
    assert "conv_in.bias is [3]" in raises(r"wrong shape", ck.load_checkpoint, out)
    rewrite(f, lambda d: original | {f"bogus.{i}.weight": np.zeros(1, np.float32) for i in range(9)})
    msg = raises(r"9 unexpected tensor\(s\): bogus\.0\.weight", ck.load_checkpoint, out)
    assert "and 4 more" in msg
    write(f, original)
    if tiny.config.vae.mid_block_add_attention:
        v = out / "vae" / "diffusion_pytorch_model.safetensors"
        k = "encoder.mid_block.attentions.0.to_q.weight"
        rewrite(v, lambda d: d | {k.replace("to_q", "query"): d[k]})
        raises(r"both give vae parameter", ck.load_checkpoint, out)


def test_truncated_and_corrupt_files(tiny, tmp_path):
    good = ck.to_single_file(tiny, tmp_path / "good.safetensors")
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) - 100],
        "header-only": data[: 8 + struct.unpack("<Q", data[:8])[0]],
        "tiny": data[:5],
        "huge-header": struct.pack("<Q", 1 << 40) + data[8:],
        "not-json": struct.pack("<Q", 6) + b"{nope}" + b"\0" * 16,
        "zip-pickle": b"PK\x03\x04" + b"\0" * 100,
    }
    for name, blob in cases.items():
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(blob)
        msg = raises(r"not a valid safetensors file", ck.load_checkpoint, f)
        assert str(f) in msg, name
    # a corrupt weights file inside a folder names that file
    out = ck.save_diffusers(tiny, tmp_path / "m", tokenizer_dir=False)
    v = out / "vae" / "diffusion_pytorch_model.safetensors"
    v.write_bytes(v.read_bytes()[:-4])
    assert str(v) in raises(r"truncated", ck.load_checkpoint, out)


def test_paths_and_json_errors(tiny, tmp_path):
    assert "nope" in raises(r"no such file", ck.load_checkpoint, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    raises(r"not a diffusers model folder", ck.load_checkpoint, tmp_path / "empty")
    (tmp_path / "x.onnx").write_bytes(b"x")
    raises(r"not a model", ck.load_checkpoint, tmp_path / "x.onnx")
    ck.to_single_file(tiny, tmp_path / "empty" / "a.safetensors")
    raises(r"pass the file", ck.load_checkpoint, tmp_path / "empty")

    out = ck.save_diffusers(tiny, tmp_path / "m", tokenizer_dir=False)
    (out / "unet" / "config.json").write_text("{not json")
    assert str(out / "unet" / "config.json") in raises(r"config", ck.load_checkpoint, out)
    out = ck.save_diffusers(tiny, tmp_path / "m2", tokenizer_dir=False)
    (out / "model_index.json").write_text("[1,")
    assert str(out / "model_index.json") in raises(r"invalid JSON", ck.load_checkpoint, out)
    out = ck.save_diffusers(tiny, tmp_path / "m3", tokenizer_dir=False)
    (out / "vae" / "config.json").unlink()
    assert str(out / "vae" / "config.json") in raises(r"missing", ck.load_checkpoint, out)
    (out / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (out / "vae" / "config.json").write_text(json.dumps(tiny.config.vae.to_dict()))
    assert str(out / "vae") in raises(r"no weights", ck.load_checkpoint, out)
    import shutil
    shutil.rmtree(out / "text_encoder")
    raises(r"no text_encoder/ folder", ck.load_checkpoint, out)


# ---------------------------------------------------------------------------------------------
# save_diffusers: atomic
# ---------------------------------------------------------------------------------------------
def test_save_diffusers_is_atomic(tiny, tmp_path, monkeypatch):
    target = tmp_path / "m"
    ck.save_diffusers(tiny, target, tokenizer_dir=False)
    raises(r"already exists", ck.save_diffusers, tiny, target)
    calls = []

    def failing(path, *a, **kw):  # the second weight file fails to write
        calls.append(path)
        if len(calls) % 3 == 2:
            raise OSError(28, "No space left on device")
        return write_safetensors(path, *a, **kw)

    monkeypatch.setattr(ck, "write_safetensors", failing)
    before = (target / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert str(target) in raises(r"No space left", ck.save_diffusers, tiny, target, overwrite=True, tokenizer_dir=False)
    assert (target / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before  # old model intact
    raises(r"No space left", ck.save_diffusers, tiny, tmp_path / "new", tokenizer_dir=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no partial folder, no temp left
    monkeypatch.undo()
    bad = {n: dict(p) for n, p in tiny.params.items()}
    bad["unet"]["conv_in.weight"] = bad["unet"]["conv_in.weight"][:1]
    raises(r"wrong shape", ck.save_diffusers, (tiny.config, bad), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    half = {n: {k: v.astype(np.float16).astype(np.float32) for k, v in p.items()} for n, p in tiny.params.items()}
    ck.save_diffusers((tiny.config, half), target, overwrite=True, tokenizer_dir=False)
    assert_params_equal(ck.load_checkpoint(target).params, half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ---------------------------------------------------------------------------------------------
# SD 1.5 / BK-SDM structure from header-only key -> shape listings
# ---------------------------------------------------------------------------------------------
def wild_variant(shapes: dict) -> dict:
    """The listing as real files carry it: CLIP without `text_model.`, position_ids, EMA copies, schedule buffers."""
    p = keymap.SINGLE_FILE_PREFIX["text_encoder"]
    out = {(p + k[len(p) + len("text_model."):] if k.startswith(p + "text_model.") else k): s for k, s in shapes.items()}
    out[p + "embeddings.position_ids"] = [1, 77]
    for k, s in list(shapes.items())[:50]:
        if k.startswith("model.diffusion_model."):
            out["model_ema." + k[len("model."):].replace(".", "")] = s
    out |= {"model_ema.decay": [], "model_ema.num_updates": [], "alphas_cumprod": [1000], "betas": [1000]}
    return out


@pytest.mark.parametrize("wild", [False, True], ids=["clean", "wild"])
@pytest.mark.parametrize("name", sorted(SHAPES["models"]))
def test_real_layouts_infer_and_map(name, wild):
    entry = SHAPES["models"][name]
    shapes = {k: tuple(v) for k, v in entry["shapes"].items()}
    if wild:
        shapes = wild_variant(shapes)
    cfg = ck.infer_config(shapes, source=name)
    source_cfg = ck.model_config_from_dict(entry["config"], name)
    assert cfg == expected_inferred(source_cfg)
    # SD 1.5's and BK-SDM's UNet / VAE use the SD 1.x values for everything shapes cannot carry: inferred exactly
    assert cfg.unet == source_cfg.unet and cfg.vae == source_cfg.vae
    if name == "sd15":
        u, v, t = cfg.unet, cfg.vae, cfg.text_encoder
        assert (u.block_out_channels, u.layers_per_block, u.cross_attention_dim, u.heads(0)) == ((320, 640, 1280, 1280), 2, 768, 8)
        assert u.mid_block_type == "UNetMidBlock2DCrossAttn" and not u.use_linear_projection
        assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (768, 12, 12)
        assert v.block_out_channels == (128, 256, 512, 512)
    else:
        assert cfg.unet.mid_block_type is None and cfg.unet.layers_per_block == 1
    cfg2, names = ck.map_single_file(shapes, source=f"{name}.safetensors")  # every key mapped, every shape checked
    assert cfg2 == cfg
    for net in ck.NETWORKS:
        p = keymap.SINGLE_FILE_PREFIX[net]
        n = sum(k.startswith(p) and not keymap.ignored(net, k[len(p):]) for k in shapes)
        assert len(names[net]) == n == len(ck.expected_shapes(net, getattr(cfg, net)))
        assert len(set(names[net].values())) == n
    # a misshapen tensor in the listing is caught without any data
    bad = dict(shapes)
    bad["model.diffusion_model.middle_block.1.proj_out.weight" if cfg.unet.mid_block_type
        else "model.diffusion_model.input_blocks.1.1.proj_out.weight"] = (1, 1, 1, 1)
    raises(r"wrong shape", ck.map_single_file, bad, source=name)


def test_sd15_inference_errors_name_the_key():
    shapes = {k: tuple(v) for k, v in SHAPES["models"]["sd15"]["shapes"].items()}
    gone = dict(shapes)
    del gone["model.diffusion_model.out.2.weight"]
    assert "model.diffusion_model.out.2.weight" in raises(r"cannot infer the unet config", ck.infer_config, gone, "f.safetensors")
    odd = {k: s for k, s in shapes.items() if not k.startswith("model.diffusion_model.input_blocks.4.")}
    raises(r"f\.safetensors: cannot infer the unet config", ck.infer_config, odd, "f.safetensors")
    deep = dict(shapes)
    deep["model.diffusion_model.input_blocks.1.1.transformer_blocks.1.norm1.weight"] = (320,)
    raises(r"transformer_layers_per_block", ck.infer_config, deep, "f.safetensors")


# ---------------------------------------------------------------------------------------------
# the key map tables
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHAPES["models"]) + sorted(SMALL))
def test_module_maps_are_one_to_one(name):
    cfg = ck.model_config_from_dict(SHAPES["models"][name]["config"], name) if name in SHAPES["models"] else SMALL[name]
    for pairs in (keymap.unet_module_map(cfg.unet), keymap.vae_module_map(cfg.vae)):
        assert len({c for c, _ in pairs}) == len({d for _, d in pairs}) == len(pairs)
        # no module is a prefix of another on either side, so longest-prefix translation is unambiguous
        for side in (0, 1):
            names = {p[side] for p in pairs}
            for n in names:
                parts = n.split(".")
                assert not any(".".join(parts[:i]) in names for i in range(1, len(parts))), n
