"""Unit tests of the reference itself: each test asserts one rule of the brief
(shared/brief/semantics.md, sections 1-3, 6, 7) on small explicit specs.

The conformance suite compares candidates with the reference; these tests check that the
reference means what the brief says, so a wrong reference cannot make a wrong candidate
look right. Every assertion message names the rule it checks.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

import reference.checkpoint as checkpoint_module
from generators.checkpoints import STRAY_FILE, CheckpointPlan, canonical_tensors
from reference.checkpoint import (open_checkpoint, read_header, shard_file_name,
                                  write_checkpoint, write_safetensors)
from reference.contract import (CONFIG_FILE, INDEX_FILE, SINGLE_FILE, CorruptCheckpointError,
                                ExtraParam, LoadError, LoadOptions, MissingWeightsError, ModelSpec,
                                ShapeMismatchError, UnexpectedKeysError,
                                UnsafeCheckpointError, UnsupportedDtypeError,
                                UnsupportedLayoutError, torch_dtype)
from reference.dtypes import PLAIN_FLOATS, poison_mask
from reference.loading import ReferenceLoader
from reference.model import resampler_position_scale, rotary_inv_freq
from reference.names import (checkpoint_keys, fused_gate_up_rows, fused_qkv_rows,
                             to_checkpoint_tensors)
from reference.tp import gather_ranks

# ----- specs -------------------------------------------------------------------------------
# GQA (4 heads over 2 kv heads), every bias llama can have, small enough to load in ms.
GQA = ModelSpec(family="llama", vocab_size=16, hidden_size=16, intermediate_size=8,
                num_layers=1, num_heads=4, num_kv_heads=2, head_dim=4,
                attention_bias=True, mlp_bias=True)
L0 = "model.layers.0"

FUSED_PARAMS = pytest.mark.parametrize("fused_params", [True, False],
                                       ids=["fused_params", "split_params"])
ON_DISK = pytest.mark.parametrize("fused_on_disk", [False, True],
                                  ids=["split_disk", "fused_disk"])


# ----- helpers -----------------------------------------------------------------------------
def bits(t: torch.Tensor) -> torch.Tensor:
    """One integer per element holding its bit pattern (exact, NaN-aware comparison)."""
    flat = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        return flat.to(torch.uint8)
    return flat.view({1: torch.uint8, 2: torch.int16, 4: torch.int32,
                      8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def assert_state_bits(state, expected, rule: str) -> None:
    assert set(state) == set(expected), (
        f"{rule}: canonical names differ: only loaded {sorted(set(state) - set(expected))}, "
        f"only expected {sorted(set(expected) - set(state))}")
    for name, want in expected.items():
        got = state[name]
        assert got.dtype == want.dtype and got.shape == want.shape, (
            f"{rule}: {name} is {got.dtype} {tuple(got.shape)}, expected {want.dtype} "
            f"{tuple(want.shape)}")
        assert same_bits(got, want), f"{rule}: {name} differs bit for bit from the expected"


def canonical(spec: ModelSpec, seed: int = 0, disk=torch.float32) -> dict[str, torch.Tensor]:
    return canonical_tensors(spec, seed, disk)


def write(directory: Path, spec: ModelSpec, tensors, shards: int = 1) -> Path:
    """Write `tensors` (a dict or (key, tensor) items, in that order) as 1 file or shards."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    groups = [items[i::shards] for i in range(shards)]
    write_checkpoint(directory, spec.to_hf_config(), groups)
    return directory


def split_checkpoint(spec, tensors):
    return to_checkpoint_tensors(spec, tensors, fused=False)


def fused_checkpoint_by_hand(spec: ModelSpec, tensors) -> dict[str, torch.Tensor]:
    """A fused-on-disk layout built without the reference's tables: q|k|v and gate|up rows
    concatenated in that order (semantics 2, fused layout)."""
    out = dict(tensors)
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}"
        for fused, parts in (("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj")),
                             ("mlp.gate_up_proj", ("gate_proj", "up_proj"))):
            parent = fused.split(".")[0]
            for suffix in ("weight", "bias"):
                names = [f"{p}.{parent}.{part}.{suffix}" for part in parts]
                if names[0] in out:
                    out[f"{p}.{fused}.{suffix}"] = torch.cat([out.pop(n) for n in names])
    return out


def load(path, spec, loader: ReferenceLoader | None = None, **options):
    return (loader or ReferenceLoader()).load(str(path), spec, LoadOptions(**options))


def cast(tensors, spec: ModelSpec, override: str | None = None):
    """The expected state: floats cast to the parameter dtype with Tensor.to, extras as-is."""
    return {n: t.to(spec.parameter_dtype(n, override)) for n, t in tensors.items()}


def raw_safetensors(path: Path, header: str | bytes | dict, data: bytes = b"",
                    header_len: int | None = None) -> Path:
    """A safetensors file written by hand: 8-byte little-endian length, JSON, data."""
    raw = header if isinstance(header, bytes) else (
        header if isinstance(header, str) else json.dumps(header)).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len)
                     + raw + data)
    return path


def write_index(directory: Path, weight_map: dict | str) -> None:
    text = weight_map if isinstance(weight_map, str) else json.dumps(
        {"metadata": {}, "weight_map": weight_map})
    (directory / INDEX_FILE).write_text(text)


def sha256s(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def raises(exc_type, fn):
    with pytest.raises(exc_type) as info:
        fn()
    return info.value


# ===== 1. name mapping ==========================================================================
def test_checkpoint_keys_hold_split_and_fused_keys():
    table = checkpoint_keys(GQA)
    for key in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.qkv_proj.weight", "self_attn.qkv_proj.bias",
                "self_attn.q_proj.bias", "self_attn.o_proj.weight", "self_attn.o_proj.bias",
                "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.gate_up_proj.weight",
                "mlp.gate_up_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias"):
        assert f"{L0}.{key}" in table, f"name mapping: checkpoint_keys lacks {L0}.{key}"
    assert "lm_head.weight" in table and "model.embed_tokens.weight" in table
    qkv = table[f"{L0}.self_attn.qkv_proj.weight"]
    assert qkv.shape == (32, 16), f"fused qkv key shape {qkv.shape} != (H+2KV)d x h = (32, 16)"
    assert [s.canonical for s in qkv.slots] == [f"{L0}.self_attn.{m}.weight"
                                                for m in ("q_proj", "k_proj", "v_proj")], \
        "name mapping: a fused qkv key feeds q, k, v in that order"
    # One key feeds exactly the (parameter, rows) it names: split keys feed themselves.
    for name, shape in GQA.parameter_shapes().items():
        target = table[name]
        assert len(target.slots) == 1 and target.slots[0].canonical == name \
            and (target.slots[0].start, target.slots[0].stop) == (0, shape[0]), \
            f"name mapping: split key {name} must feed all of {name} and nothing else"
    # Tied: no lm_head key (it is ignored or unexpected, never loaded).
    assert "lm_head.weight" not in checkpoint_keys(ModelSpec(tie_word_embeddings=True))


NEAR_MISS = {
    f"{L0}.self_attn.qq_proj.weight": (16, 16),            # doubled letter
    f"{L0}.mlp.ggate_up_proj.weight": (16, 16),            # doubled letter, fused name
    "model.layers.03.mlp.up_proj.weight": (8, 16),          # zero-padded layer 3
    "model.layers.00.self_attn.k_proj.weight": (8, 16),     # zero-padded layer 0
    f"base_model.{L0}.self_attn.q_proj.weight": (16, 16),   # foreign prefix
    "base_model.model.norm.weight": (16,),
    f"{L0}.self_attn.q_proj.weight_scale": (16, 16),        # suffix on the last component
    f"{L0}.mlp.down_proj.weight_scale": (16, 8),
    "model.norm.weight_scale": (16,),
    "lm_head.weight_scale": (16, 16),
    f"{L0}.self_attn.q_proj.weight.extra": (16, 16),        # one more component
    "model.layers.3.self_attn.o_proj.bias.weight": (16,),
}
NEAR_SPEC = ModelSpec(family="llama", vocab_size=16, hidden_size=16, intermediate_size=8,
                      num_layers=4, num_heads=4, num_kv_heads=2, head_dim=4,
                      attention_bias=True, mlp_bias=True)


def test_near_miss_keys_are_not_in_the_key_table():
    table = checkpoint_keys(NEAR_SPEC)
    for key in NEAR_MISS:
        assert key not in table, f"name mapping is exact per component: {key} must map nowhere"


@FUSED_PARAMS
def test_near_miss_keys_are_unexpected_and_never_loaded(tmp_path, fused_params):
    tensors = canonical(NEAR_SPEC)
    hostile = {k: torch.full(shape, 1234.5) for k, shape in NEAR_MISS.items()}
    path = write(tmp_path / "ckpt", NEAR_SPEC, {**split_checkpoint(NEAR_SPEC, tensors), **hostile})
    loader = ReferenceLoader(fused_params=fused_params)
    result = load(path, NEAR_SPEC, loader)
    assert result.unexpected == frozenset(NEAR_MISS), (
        f"name mapping: near-miss keys must be reported unexpected; got {sorted(result.unexpected)}")
    assert not result.missing and not result.ignored
    assert_state_bits(result.state, cast(tensors, NEAR_SPEC),
                      "name mapping: a near-miss key fed a parameter")
    for name, t in result.state.items():
        assert not (t == 1234.5).any(), f"name mapping: {name} holds a near-miss key's value"
    err = raises(UnexpectedKeysError, lambda: load(path, NEAR_SPEC, loader, strict=True))
    for key in NEAR_MISS:
        assert key in str(err), f"strict: the error must name unexpected key {key}: {err}"


# ===== 2. fused layout ==========================================================================
def test_fused_row_offsets_for_gqa():
    spec = ModelSpec(num_heads=6, num_kv_heads=2, head_dim=4, hidden_size=24,
                     intermediate_size=10)
    H, KV, d, I = 6, 2, 4, 10
    assert fused_qkv_rows(spec) == {"q_proj": (0, H * d), "k_proj": (H * d, (H + KV) * d),
                                    "v_proj": ((H + KV) * d, (H + 2 * KV) * d)}, \
        "fused qkv: q rows [0,Hd), k [Hd,(H+KV)d), v the next KV*d"
    assert fused_gate_up_rows(spec) == {"gate_proj": (0, I), "up_proj": (I, 2 * I)}, \
        "fused gate_up: gate rows [0,I), up [I,2I)"
    table = checkpoint_keys(spec)
    slots = {s.canonical.split(".")[-2]: (s.start, s.stop)
             for s in table[f"{L0}.self_attn.qkv_proj.weight"].slots}
    assert slots == fused_qkv_rows(spec), "checkpoint_keys' qkv slots disagree with fused_qkv_rows"
    slots = {s.canonical.split(".")[-2]: (s.start, s.stop)
             for s in table[f"{L0}.mlp.gate_up_proj.weight"].slots}
    assert slots == fused_gate_up_rows(spec), "gate_up slots disagree with fused_gate_up_rows"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@FUSED_PARAMS
def test_split_and_fused_on_disk_load_bit_identically(tmp_path, fused_params, dtype):
    spec = ModelSpec(family="llama", vocab_size=16, hidden_size=16, intermediate_size=8,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
                     attention_bias=True, mlp_bias=True, dtype=dtype)
    tensors = canonical(spec, seed=3)
    split = write(tmp_path / "split", spec, split_checkpoint(spec, tensors))
    fused = write(tmp_path / "fused", spec, fused_checkpoint_by_hand(spec, tensors))
    loader = ReferenceLoader(fused_params=fused_params)
    expected = cast(tensors, spec)
    for path, layout in ((split, "split"), (fused, "fused")):
        result = load(path, spec, loader)
        assert not result.missing and not result.unexpected, (
            f"{layout} on disk: every key maps ({sorted(result.missing)}, "
            f"{sorted(result.unexpected)})")
        assert_state_bits(result.state, expected,
                          f"fused layout: {layout}-on-disk into fused_params={fused_params}")


def test_fused_params_state_is_a_view_of_one_fused_parameter(tmp_path):
    tensors = canonical(GQA)
    result = load(write(tmp_path / "c", GQA, split_checkpoint(GQA, tensors)), GQA,
                  ReferenceLoader(fused_params=True))
    q, k, v = (result.state[f"{L0}.self_attn.{m}.weight"] for m in ("q_proj", "k_proj", "v_proj"))
    fused = result.model.model.layers[0].self_attn.qkv_proj.weight
    assert fused.shape == (32, 16)
    assert torch.equal(fused[0:16], q) and torch.equal(fused[16:24], k) \
        and torch.equal(fused[24:32], v), "fused layout: q|k|v rows at cumulative offsets"
    assert q.data_ptr() == fused.data_ptr(), "canonical q is a view of the fused parameter"


# ===== 3. tensor parallelism ====================================================================
def _tp_full(tmp_path, fused_on_disk):
    tensors = canonical(GQA, seed=5)
    disk = fused_checkpoint_by_hand(GQA, tensors) if fused_on_disk else split_checkpoint(
        GQA, tensors)
    return tensors, write(tmp_path / "ckpt", GQA, disk)


@pytest.mark.parametrize("tp", [2, 4])
@ON_DISK
@FUSED_PARAMS
def test_tp_slices(tmp_path, tp, fused_on_disk, fused_params):
    full, path = _tp_full(tmp_path, fused_on_disk)
    loader = ReferenceLoader(fused_params=fused_params)
    H, KV, d, I, V = 4, 2, 4, 8, 16
    states = []
    for r in range(tp):
        s = load(path, GQA, loader, tp_size=tp, tp_rank=r).state
        states.append(s)
        q_rows = H * d // tp
        for suffix in ("weight", "bias"):
            name = f"{L0}.self_attn.q_proj.{suffix}"
            assert torch.equal(s[name], full[name][r * q_rows:(r + 1) * q_rows]), \
                f"TP column-parallel: rank {r}/{tp} {name} must be rows of its q heads"
            if tp > KV:
                head = r // (tp // KV)
                rows = slice(head * d, (head + 1) * d)
            else:
                per = KV // tp * d
                rows = slice(r * per, (r + 1) * per)
            for m in ("k_proj", "v_proj"):
                name = f"{L0}.self_attn.{m}.{suffix}"
                assert torch.equal(s[name], full[name][rows]), (
                    f"TP kv: rank {r}/{tp} {name} must hold kv rows {rows} "
                    f"(head r // (tp / KV) when tp > KV)")
            for m in ("gate_proj", "up_proj"):
                name = f"{L0}.mlp.{m}.{suffix}"
                per = I // tp
                assert torch.equal(s[name], full[name][r * per:(r + 1) * per]), \
                    f"TP column-parallel: rank {r}/{tp} {name} sliced on dim 0"
        for m, width in (("self_attn.o_proj", H * d), ("mlp.down_proj", I)):
            name, per = f"{L0}.{m}.weight", width // tp
            assert torch.equal(s[name], full[name][:, r * per:(r + 1) * per]), \
                f"TP row-parallel: rank {r}/{tp} {name} sliced on dim 1"
            assert torch.equal(s[f"{L0}.{m}.bias"], full[f"{L0}.{m}.bias"]), \
                f"TP: row-parallel bias {L0}.{m}.bias is replicated, never sliced"
        for name in (f"{L0}.input_layernorm.weight", f"{L0}.post_attention_layernorm.weight",
                     "model.norm.weight"):
            assert torch.equal(s[name], full[name]), f"TP: norm {name} is replicated"
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            per = V // tp
            assert torch.equal(s[name], full[name][r * per:(r + 1) * per]), \
                f"TP: {name} vocab rows are sliced by rank"
    qs = [bits(s[f"{L0}.self_attn.q_proj.weight"]) for s in states]
    for a in range(tp):
        for b in range(a + 1, tp):
            assert not torch.equal(qs[a], qs[b]), f"TP: ranks {a} and {b} hold the same q slice"
    tp1 = load(path, GQA, loader).state
    gathered = gather_ranks(GQA, states)
    assert_state_bits(gathered, dict(tp1), f"TP: gather_ranks of {tp} ranks equals the tp=1 load")


def test_tp_kv_replication_with_one_kv_head(tmp_path):
    spec = ModelSpec(num_heads=4, num_kv_heads=1, head_dim=4, hidden_size=16,
                     intermediate_size=8, vocab_size=16)
    tensors = canonical(spec)
    path = write(tmp_path / "c", spec, split_checkpoint(spec, tensors))
    for r in range(4):
        s = load(path, spec, tp_size=4, tp_rank=r).state
        for m in ("k_proj", "v_proj"):
            name = f"{L0}.self_attn.{m}.weight"
            assert torch.equal(s[name], tensors[name]), \
                f"TP kv replication: with KV=1 every rank holds the one kv head ({name}, rank {r})"


@pytest.mark.parametrize("spec, tp", [
    (GQA, 3),                                                             # not a power of two
    (ModelSpec(num_heads=6, num_kv_heads=3, head_dim=4, hidden_size=24,
               intermediate_size=8, vocab_size=16), 2),                   # heads 6, kv 3
    (ModelSpec(num_heads=4, num_kv_heads=2, head_dim=4, hidden_size=16,
               intermediate_size=6, vocab_size=16), 4),                   # I=6
    (ModelSpec(num_heads=4, num_kv_heads=2, head_dim=4, hidden_size=16,
               intermediate_size=8, vocab_size=18), 4),                   # V=18
    (ModelSpec(num_heads=2, num_kv_heads=1, head_dim=4, hidden_size=16,
               intermediate_size=8, vocab_size=16), 4),                   # heads 2
], ids=["tp3", "kv3-tp2", "I6-tp4", "V18-tp4", "heads2-tp4"])
def test_indivisible_tp_raises_unsupported_layout(tmp_path, spec, tp):
    path = write(tmp_path / "c", spec, split_checkpoint(spec, canonical(spec)))
    err = raises(UnsupportedLayoutError, lambda: load(path, spec, tp_size=tp, tp_rank=1))
    assert f"tp_size={tp}" in str(err), f"the layout error must name tp_size={tp}: {err}"


# ===== 4. dtypes ================================================================================
# float32 values on and between representable bf16 / fp16 values, with the halfway cases.
HALFWAY = {
    torch.bfloat16: [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), -(1 + 3 * 2**-8), 2 + 2**-7,
                     1 + 2**-8 + 2**-20, 1 + 2**-8 - 2**-20],
    torch.float16: [1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 2 + 2**-10, 1 + 2**-11 + 2**-20,
                    65520.0, 1e-8],
}
EXPECTED_HALFWAY = {  # round to nearest, ties to even
    torch.bfloat16: [1.0, 1 + 2**-6, -1.0, -(1 + 2**-6), 2.0, 1 + 2**-7, 1.0],
    torch.float16: [1.0, 1 + 2**-9, -1.0, 2.0, 1 + 2**-10, float("inf"), 0.0],
}


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("how", ["spec", "override"])
@FUSED_PARAMS
def test_float32_on_disk_rounds_to_nearest_even(tmp_path, target, how, fused_params):
    name = str(target).split(".")[1]
    spec = ModelSpec(dtype=name if how == "spec" else "float32")
    tensors = canonical(spec, seed=9)
    special = torch.tensor(HALFWAY[target], dtype=torch.float32)
    embed = tensors["model.embed_tokens.weight"].clone()
    embed.view(-1)[:len(special)] = special
    tensors["model.embed_tokens.weight"] = embed
    # The same values in a fused key, so the cast through fused rows is covered too.
    tensors[f"{L0}.self_attn.k_proj.weight"].view(-1)[:len(special)] = special
    path = write(tmp_path / "c", spec, fused_checkpoint_by_hand(spec, tensors))
    options = {} if how == "spec" else {"dtype": name}
    result = load(path, spec, ReferenceLoader(fused_params=fused_params), **options)
    assert_state_bits(result.state, {n: t.to(target) for n, t in tensors.items()},
                      f"dtypes: float32 -> {name} must equal Tensor.to bit for bit")
    for key in ("model.embed_tokens.weight", f"{L0}.self_attn.k_proj.weight"):
        got = result.state[key].reshape(-1)[:len(special)].float().tolist()
        assert got == EXPECTED_HALFWAY[target], (
            f"dtypes: round-to-nearest-even of halfway values into {name} ({key}): "
            f"{HALFWAY[target]} -> {got}, expected {EXPECTED_HALFWAY[target]}")


# float64 just past a bf16 / fp16 tie: one rounding goes up, float64 -> float32 -> target
# lands on the tie first and rounds to even (down). Then float16 ties into bfloat16 and
# bfloat16 values at float16's subnormal ties.
ONE_ROUNDING = {
    ("float64", torch.bfloat16): ([1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30), 1 + 2**-8],
                                  [1 + 2**-7, -(1 + 2**-7), 1.0]),
    ("float64", torch.float16): ([1 + 2**-11 + 2**-40, 2**-24 * (2.5 + 2**-30), 1 + 2**-11],
                                 [1 + 2**-10, 2**-24 * 3, 1.0]),
    ("float16", torch.bfloat16): ([1 + 2**-8, 1 + 3 * 2**-8, 3 * 2**-9 + 2**-16],
                                  [1.0, 1 + 2**-6, 3 * 2**-9]),
    ("bfloat16", torch.float16): ([2**-24 * 2.5, 2**-24 * 3.5, 2**-24 * 0.5, 65536.0],
                                  [2**-24 * 2, 2**-24 * 4, 0.0, float("inf")]),
}


@pytest.mark.parametrize("disk, target", list(ONE_ROUNDING), ids=lambda v: str(v).split(".")[-1])
def test_float_casts_round_once_to_nearest_even(tmp_path, disk, target):
    """Issue 14: a float64 checkpoint value loads as its one nearest-even rounding (torch's
    own conversion rounds through float32: 1 + 2^-8 + 2^-30 became 1.0, not 1.0078125), and
    float16 <-> bfloat16 ties go to even, in plain and fused keys alike."""
    values, expected = ONE_ROUNDING[(disk, target)]
    name = str(target).split(".")[1]
    spec = ModelSpec(dtype=name)
    tensors = {n: t.to(getattr(torch, disk)) for n, t in canonical(spec, seed=9).items()}
    special = torch.tensor(values, dtype=torch.float64).to(getattr(torch, disk))
    assert special.tolist() == values, f"{values} are not exact in {disk}"
    for key in ("model.embed_tokens.weight", f"{L0}.self_attn.k_proj.weight"):
        tensors[key].view(-1)[:len(special)] = special
    path = write(tmp_path / "c", spec, fused_checkpoint_by_hand(spec, tensors))
    result = load(path, spec)
    for key in ("model.embed_tokens.weight", f"{L0}.self_attn.k_proj.weight"):
        got = result.state[key].reshape(-1)[:len(special)].double().tolist()
        assert got == expected, (f"dtypes: {disk} {values} ({key}) loads into {name} as "
                                 f"{got}; one rounding to nearest even gives {expected}")


EXTRAS = (ExtraParam("packed", "int32", (2, 3)), ExtraParam("mask", "bool", (5,)),
          ExtraParam("fp8_codes", "float8_e4m3fn", (256,)),
          ExtraParam("fp8_e5", "float8_e5m2", (16, 16)), ExtraParam("zero", "uint8", ()),
          ExtraParam("g_idx", "int64", (3,)), ExtraParam("small", "int8", (4,)))
EXTRA_SPEC = ModelSpec(extras=EXTRAS)


@pytest.mark.parametrize("override", [None, "bfloat16", "float16"])
@pytest.mark.parametrize("meta_init", [False, True])
@FUSED_PARAMS
def test_extras_keep_dtype_and_bits(tmp_path, override, meta_init, fused_params):
    tensors = canonical(EXTRA_SPEC, seed=11)
    fp8 = tensors["model.extras.fp8_codes"]
    assert sorted(bits(fp8).tolist()) == list(range(256)), "test setup: all 256 FP8 codes"
    path = write(tmp_path / "c", EXTRA_SPEC, split_checkpoint(EXTRA_SPEC, tensors))
    result = load(path, EXTRA_SPEC, ReferenceLoader(fused_params=fused_params),
                  dtype=override, meta_init=meta_init)
    float_dtype = torch_dtype(override or EXTRA_SPEC.dtype)
    for extra in EXTRAS:
        got, want = result.state[extra.canonical_name], tensors[extra.canonical_name]
        assert got.dtype == torch_dtype(extra.dtype), (
            f"dtypes: extra {extra.canonical_name} must keep {extra.dtype} (override "
            f"{override}), got {got.dtype}")
        assert same_bits(got, want), f"dtypes: extra {extra.canonical_name} must keep its bits"
    for name, t in result.state.items():
        if not name.startswith("model.extras."):
            assert t.dtype == float_dtype, (
                f"dtypes: LoadOptions(dtype={override}) applies to float {name}: {t.dtype}")
            assert same_bits(t, tensors[name].to(float_dtype)), f"dtypes: {name} bits"


@pytest.mark.parametrize("key, dtype", [
    ("model.extras.packed", torch.float32),       # float into int
    ("model.extras.mask", torch.float32),         # float into bool
    ("model.extras.fp8_codes", torch.float32),    # float into FP8: FP8 stays FP8
    ("model.extras.fp8_codes", torch.float8_e5m2),  # one FP8 into another
    ("model.extras.g_idx", torch.int32),          # int into another int
    ("model.norm.weight", torch.int32),           # int into float
    ("model.norm.weight", torch.bool),            # bool into float
    ("model.norm.weight", torch.float8_e4m3fn),   # FP8 into float
])
def test_dtype_class_mismatch_raises_naming_the_key(tmp_path, key, dtype):
    tensors = canonical(EXTRA_SPEC)
    tensors[key] = tensors[key].float().to(dtype)
    path = write(tmp_path / "c", EXTRA_SPEC, split_checkpoint(EXTRA_SPEC, tensors))
    for options in ({}, {"dtype": "bfloat16"}):
        err = raises(UnsupportedDtypeError, lambda: load(path, EXTRA_SPEC, **options))
        assert key in str(err) and err.subject == key, (
            f"dtypes: a {dtype} tensor into {key} is an error naming the key, never a "
            f"silent cast: {err}")


# ===== 5. errors ================================================================================
def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    tensors = canonical(GQA)
    key = f"{L0}.self_attn.k_proj.weight"
    tensors[key] = torch.zeros(9, 16)
    path = write(tmp_path / "c", GQA, split_checkpoint(GQA, tensors))
    err = raises(ShapeMismatchError, lambda: load(path, GQA))
    assert err.subject == key and key in str(err), f"shape mismatch must name {key}: {err}"
    assert "[8, 16]" in str(err) and "[9, 16]" in str(err), \
        f"shape mismatch must name the expected [8, 16] and found [9, 16]: {err}"


def test_shape_mismatch_of_a_fused_key(tmp_path):
    tensors = canonical(GQA)
    disk = fused_checkpoint_by_hand(GQA, tensors)
    key = f"{L0}.mlp.gate_up_proj.weight"
    disk[key] = torch.zeros(17, 16)
    err = raises(ShapeMismatchError, lambda: load(write(tmp_path / "c", GQA, disk), GQA))
    assert key in str(err) and "[16, 16]" in str(err) and "[17, 16]" in str(err), \
        f"shape mismatch of a fused key names it and both shapes: {err}"


def test_error_subjects_follow_the_declared_variant(tmp_path):
    """Issue 14: a tensor error names the checkpoint key, or under error_subject=canonical
    the parameters it feeds (any part of a fused key); the raised error carries what every
    problem of each family names, and a missing-weights error every missing name."""
    tensors = canonical(GQA)
    disk = fused_checkpoint_by_hand(GQA, tensors)
    key = f"{L0}.mlp.gate_up_proj.weight"
    disk[key] = torch.zeros(17, 16)
    disk.pop("model.norm.weight")
    disk.pop(f"{L0}.input_layernorm.weight")
    path = write(tmp_path / "c", GQA, disk)
    err = raises(ShapeMismatchError, lambda: load(path, GQA, track=True))
    assert err.subject == key and err.accepted_subjects["shape_mismatch"] == {key}, \
        f"key variant: {err.subject}, {err.accepted_subjects}"
    parts = {f"{L0}.mlp.gate_proj.weight", f"{L0}.mlp.up_proj.weight"}  # not loaded either
    missing = {"model.norm.weight", f"{L0}.input_layernorm.weight"} | parts
    assert err.accepted_names["missing"] == missing, err.accepted_names
    loader = ReferenceLoader(variants={"error_subject": "canonical"})
    err = raises(ShapeMismatchError, lambda: load(path, GQA, loader, track=True))
    assert err.subject in parts and err.accepted_subjects["shape_mismatch"] == parts, \
        f"canonical variant: {err.subject}, {err.accepted_subjects}"


def _with_extra_key(tmp_path):
    disk = {**split_checkpoint(GQA, canonical(GQA)), "model.layers.0.mlp.g_idx": torch.arange(4)}
    return write(tmp_path / "c", GQA, disk)


def test_unexpected_keys_reported_when_not_strict(tmp_path):
    result = load(_with_extra_key(tmp_path), GQA)
    assert result.unexpected == {"model.layers.0.mlp.g_idx"}, \
        f"unexpected keys are reported: {sorted(result.unexpected)}"
    assert "model.layers.0.mlp.g_idx" not in result.loaded


def test_unexpected_keys_raise_when_strict(tmp_path):
    err = raises(UnexpectedKeysError, lambda: load(_with_extra_key(tmp_path), GQA, strict=True))
    assert "model.layers.0.mlp.g_idx" in str(err), f"strict: name the unexpected key: {err}"


@pytest.mark.parametrize("strict", [False, True])
def test_unexpected_keys_raise_under_variant_raise(tmp_path, strict):
    loader = ReferenceLoader(variants={"unexpected_keys": "raise"})
    err = raises(UnexpectedKeysError, lambda: load(_with_extra_key(tmp_path), GQA, loader,
                                                   strict=strict))
    assert "model.layers.0.mlp.g_idx" in str(err), \
        f"variant unexpected_keys=raise: always an error naming the key: {err}"


@ON_DISK
@FUSED_PARAMS
def test_single_dropped_bias_is_exactly_missing(tmp_path, fused_on_disk, fused_params):
    tensors = canonical(GQA)
    dropped = f"{L0}.self_attn.v_proj.bias"
    if fused_on_disk:  # split keys inside a fused-on-disk checkpoint: v bias on its own
        disk = fused_checkpoint_by_hand(GQA, tensors)
        disk.pop(f"{L0}.self_attn.qkv_proj.bias")
        disk.update({f"{L0}.self_attn.{m}.bias": tensors[f"{L0}.self_attn.{m}.bias"]
                     for m in ("q_proj", "k_proj")})
    else:
        disk = split_checkpoint(GQA, tensors)
        disk.pop(dropped)
    loader = ReferenceLoader(fused_params=fused_params)
    result = load(write(tmp_path / "c", GQA, disk), GQA, loader)
    assert result.missing == {dropped}, \
        f"missing lists exactly the uncovered parameters: {sorted(result.missing)}"
    assert result.loaded == set(GQA.parameter_shapes()) - {dropped}
    assert not result.unexpected


def test_tracking_raises_listing_missing_names_sorted(tmp_path):
    tensors = canonical(GQA)
    disk = split_checkpoint(GQA, tensors)
    dropped = ["model.norm.weight", f"{L0}.mlp.up_proj.bias", f"{L0}.self_attn.k_proj.weight",
               "lm_head.weight"]
    for key in dropped:
        disk.pop(key)
    path = write(tmp_path / "c", GQA, disk)
    assert load(path, GQA).missing == set(dropped), "tracking off: reported, not raised"
    err = raises(MissingWeightsError, lambda: load(path, GQA, track=True))
    message = str(err)
    positions = [message.find(name) for name in sorted(dropped)]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), \
        f"tracking: the message lists every missing name, sorted: {message}"


@pytest.mark.parametrize("doubled", [f"{L0}.self_attn.q_proj.weight", f"{L0}.mlp.up_proj.bias"])
def test_key_covered_twice_is_corrupt(tmp_path, doubled):
    plan = CheckpointPlan(GQA, fused=True, doubled=(doubled,))
    err = raises(CorruptCheckpointError, lambda: load(plan.write(tmp_path / "c"), GQA))
    assert doubled in str(err), f"a parameter fed by two keys is corrupt, naming it: {err}"


def test_two_problems_list_both_families(tmp_path):
    tensors = canonical(GQA)
    disk = split_checkpoint(GQA, tensors)
    disk[f"{L0}.mlp.gate_proj.weight"] = torch.zeros(9, 16)
    disk["model.unused"] = torch.zeros(2)
    path = write(tmp_path / "c", GQA, disk)
    err = raises((UnexpectedKeysError, ShapeMismatchError), lambda: load(path, GQA, strict=True))
    assert {"unexpected", "shape_mismatch"} <= err.alternatives, \
        f"two problems: the raised error's alternatives name both: {sorted(err.alternatives)}"
    disk.pop("model.norm.weight")
    path = write(tmp_path / "d", GQA, disk)
    err = raises(ShapeMismatchError, lambda: load(path, GQA, track=True))
    assert {"shape_mismatch", "missing"} <= err.alternatives, \
        f"shape mismatch + missing: alternatives {sorted(err.alternatives)}"
    extra = {**split_checkpoint(EXTRA_SPEC, canonical(EXTRA_SPEC)),
             "model.extras.packed": torch.zeros(2, 3), "model.norm.weight": torch.zeros(3)}
    err = raises(LoadError, lambda: load(write(tmp_path / "e", EXTRA_SPEC, extra), EXTRA_SPEC))
    assert {"shape_mismatch", "unsupported_dtype"} <= err.alternatives, \
        f"shape mismatch + dtype: alternatives {sorted(err.alternatives)}"


# ===== 6. tying =================================================================================
TIED = ModelSpec(tie_word_embeddings=True, vocab_size=16, hidden_size=16, num_heads=4,
                 num_kv_heads=2, head_dim=4)


def _tied_checkpoint(tmp_path, with_head: bool):
    tensors = canonical(TIED)
    disk = split_checkpoint(TIED, tensors)
    if with_head:
        disk["lm_head.weight"] = torch.full((16, 16), 3.0)
    return tensors, write(tmp_path / ("head" if with_head else "nohead"), TIED, disk)


@pytest.mark.parametrize("meta_init", [
    False,
    True,  # to_empty per module once untied the head (fixed in TinyDecoderLM.materialize)
])
@pytest.mark.parametrize("map_weights", [True, False])
def test_tied_head_is_the_embedding(tmp_path, meta_init, map_weights):
    tensors, path = _tied_checkpoint(tmp_path, with_head=False)
    result = load(path, TIED, ReferenceLoader(map_weights=map_weights), meta_init=meta_init)
    assert result.aliases == {"lm_head.weight": "model.embed_tokens.weight"}, \
        f"tied: aliases must name the head's storage: {result.aliases}"
    assert "lm_head.weight" not in result.missing, "tied: the head is not a missing weight"
    model = result.model
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    assert head.data_ptr() == embed.data_ptr() and head.shape == embed.shape, \
        "tied: the model's lm_head must share the embedding's storage"
    embed.data[0, 0] = 42.0
    assert head[0, 0].item() == 42.0, "tied: a write into the embedding shows in the head"


@pytest.mark.parametrize("variant, field", [("ignore", "ignored"), ("unexpected", "unexpected")])
def test_checkpoint_head_in_tied_model(tmp_path, variant, field):
    tensors, path = _tied_checkpoint(tmp_path, with_head=True)
    loader = ReferenceLoader(variants={"tied_checkpoint_head": variant})
    result = load(path, TIED, loader)
    assert getattr(result, field) == {"lm_head.weight"}, \
        f"tied, variant {variant}: a checkpoint lm_head.weight is {field}"
    other = "unexpected" if field == "ignored" else "ignored"
    assert not getattr(result, other), f"tied, variant {variant}: nothing is {other}"
    assert same_bits(result.state["model.embed_tokens.weight"],
                     tensors["model.embed_tokens.weight"]), \
        "tied: the checkpoint head must never overwrite the embedding"
    assert not (result.model.lm_head.weight == 3.0).any(), "tied: the checkpoint head is not loaded"
    if variant == "unexpected":
        raises(UnexpectedKeysError, lambda: load(path, TIED, loader, strict=True))
    else:
        assert load(path, TIED, loader, strict=True).ignored == {"lm_head.weight"}, \
            "tied, variant ignore: an ignored head is no unexpected key under strict"


def test_untied_without_head_is_missing(tmp_path):
    spec = GQA
    disk = split_checkpoint(spec, canonical(spec))
    disk.pop("lm_head.weight")
    path = write(tmp_path / "c", spec, disk)
    result = load(path, spec)
    assert result.missing == {"lm_head.weight"} and not result.aliases, \
        f"untied: an absent head is a missing weight: {sorted(result.missing)}"
    err = raises(MissingWeightsError, lambda: load(path, spec, track=True))
    assert "lm_head.weight" in str(err)


# ===== 7. sharded checkpoints ===================================================================
def test_tensors_only_from_the_assigned_shard_and_stray_file_ignored(tmp_path):
    plan = CheckpointPlan(GQA, shards=3, stray_file=True, order_seed=4)
    path = plan.write(tmp_path / "c")
    assert (path / STRAY_FILE).is_file() and (path / INDEX_FILE).is_file()
    with open_checkpoint(path) as ckpt:
        assert set(e.file for e in ckpt.entries.values()) <= {
            shard_file_name(i, 3) for i in range(3)}, "sharded: entries only from indexed files"
    stray = read_header(path / STRAY_FILE)
    assert set(stray) == set(split_checkpoint(GQA, plan.canonical())), "setup: a full stray file"
    result = load(path, GQA)
    assert_state_bits(result.state, cast(plan.canonical(), GQA),
                      "sharded: tensors come only from the index-assigned file")
    # A stray file that is garbage too: a loader that opened it would fail.
    (path / STRAY_FILE).write_bytes(b"\xff" * 64)
    assert_state_bits(load(path, GQA).state, cast(plan.canonical(), GQA),
                      f"sharded: the unindexed {STRAY_FILE} is never read")


@pytest.mark.parametrize("hostile", ["../x.safetensors", "sub/x.safetensors",
                                     "/abs/x.safetensors", "..", "", "./x.safetensors"])
def test_unsafe_shard_names_refused_before_any_file_opens(tmp_path, monkeypatch, hostile):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(json.dumps(GQA.to_hf_config()))
    # "a.safetensors" does not exist either: checking it first would give a corrupt error.
    write_index(directory, {"model.norm.weight": "a.safetensors",
                            "model.embed_tokens.weight": hostile})
    opened = []
    monkeypatch.setattr(checkpoint_module, "read_header",
                        lambda path: opened.append(path) or pytest.fail(f"opened {path}"))
    err = raises(UnsafeCheckpointError, lambda: load(directory, GQA))
    assert not opened, f"unsafe names are refused before any file is opened: {opened}"
    assert repr(hostile) in str(err) or hostile in str(err), \
        f"the unsafe-checkpoint error names the shard {hostile!r}: {err}"


def test_unsafe_shard_name_even_when_the_file_exists(tmp_path):
    directory = tmp_path / "c"
    (directory / "sub").mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(json.dumps(GQA.to_hf_config()))
    write_safetensors(directory / "sub" / "x.safetensors", split_checkpoint(
        GQA, canonical(GQA)).items())
    write_index(directory, {k: "sub/x.safetensors" for k in split_checkpoint(GQA, canonical(GQA))})
    raises(UnsafeCheckpointError, lambda: load(directory, GQA))


def _two_shards(tmp_path, disk, assign):
    """Write shards by hand, shard i holding the keys assign[i]; the caller writes the index."""
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(json.dumps(GQA.to_hf_config()))
    names = [shard_file_name(i, len(assign)) for i in range(len(assign))]
    for name, keys in zip(names, assign):
        write_safetensors(directory / name, [(k, disk[k]) for k in keys])
    return directory, names


def test_tensor_in_a_file_the_index_assigns_elsewhere_is_corrupt(tmp_path):
    disk = split_checkpoint(GQA, canonical(GQA))
    keys = sorted(disk)
    moved = "model.norm.weight"
    first = [k for k in keys[::2] if k != moved]
    second = [k for k in keys if k not in first]
    directory, names = _two_shards(tmp_path, disk, [first, second])
    weight_map = {k: names[0] for k in first} | {k: names[1] for k in second}
    weight_map[moved] = names[0]  # but it sits in the second file
    write_index(directory, weight_map)
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert moved in str(err) and names[1] in str(err), \
        f"a tensor outside its assigned file is corrupt, naming tensor and file: {err}"


def test_same_key_in_two_files_is_corrupt(tmp_path):
    disk = split_checkpoint(GQA, canonical(GQA))
    keys = sorted(disk)
    twice = "model.norm.weight"
    first, second = keys[::2], [k for k in keys[1::2]] + [twice]
    assert twice in first
    directory, names = _two_shards(tmp_path, disk, [first, second])
    write_index(directory, {k: names[0] for k in first} | {k: names[1] for k in keys[1::2]})
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert twice in str(err), f"the same key in two files is an error naming it: {err}"


def test_index_naming_a_missing_file_is_corrupt(tmp_path):
    disk = split_checkpoint(GQA, canonical(GQA))
    keys = [k for k in sorted(disk) if k != "model.norm.weight"]
    directory, names = _two_shards(tmp_path, disk, [keys])
    weight_map = {k: names[0] for k in keys}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    write_index(directory, weight_map)
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert "model-00002-of-00002.safetensors" in str(err) \
        and err.subject == "model-00002-of-00002.safetensors", \
        f"an index naming a missing file is corrupt, naming the file: {err}"


def test_index_assigning_a_tensor_its_file_lacks_is_corrupt(tmp_path):
    disk = split_checkpoint(GQA, canonical(GQA))
    keys = sorted(disk)
    directory, names = _two_shards(tmp_path, disk, [keys])
    write_index(directory, {k: names[0] for k in keys} | {"model.ghost.weight": names[0]})
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert "model.ghost.weight" in str(err), f"an index entry with no tensor is corrupt: {err}"


def _single_file_dir(tmp_path) -> Path:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(json.dumps(GQA.to_hf_config()))
    return directory


def _f32_entry(start, count):
    return {"dtype": "F32", "shape": [count], "data_offsets": [start * 4, (start + count) * 4]}


def test_duplicate_json_keys_in_a_header_are_corrupt(tmp_path):
    directory = _single_file_dir(tmp_path)
    entry = json.dumps(_f32_entry(0, 16))
    other = json.dumps(_f32_entry(16, 16))
    header = ('{"model.norm.weight":' + entry + ',"model.norm.weight":' + other + "}")
    raw_safetensors(directory / SINGLE_FILE, header, bytes(128))
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert SINGLE_FILE in str(err) and "model.norm.weight" in str(err), \
        f"a header with duplicate keys is corrupt, naming the file and key: {err}"


def test_duplicate_json_keys_in_the_index_are_corrupt(tmp_path):
    plan = CheckpointPlan(GQA, shards=2)
    path = plan.write(tmp_path / "c")
    index = json.loads((path / INDEX_FILE).read_text())
    key, name = next(iter(index["weight_map"].items()))
    other = [n for n in set(index["weight_map"].values()) if n != name][0]
    text = json.dumps(index)
    text = text.replace('"weight_map": {', f'"weight_map": {{"{key}": "{other}", ', 1)
    (path / INDEX_FILE).write_text(text)
    err = raises(CorruptCheckpointError, lambda: load(path, GQA))
    assert INDEX_FILE in str(err) and key in str(err), \
        f"an index with a duplicate key is corrupt: {err}"


def test_overlapping_data_offsets_are_corrupt(tmp_path):
    directory = _single_file_dir(tmp_path)
    header = {"model.norm.weight": _f32_entry(0, 16), "model.layers.0.input_layernorm.weight":
              _f32_entry(8, 16)}
    raw_safetensors(directory / SINGLE_FILE, header, bytes(24 * 4))
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert SINGLE_FILE in str(err) and "overlap" in str(err) \
        and "model.layers.0.input_layernorm.weight" in str(err), \
        f"overlapping data_offsets are corrupt, naming file and tensors: {err}"


def test_overlap_hidden_behind_an_empty_tensor_is_corrupt(tmp_path):
    directory = _single_file_dir(tmp_path)
    header = {"model.norm.weight": _f32_entry(0, 16),
              "model.empty": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
              "model.layers.0.input_layernorm.weight": _f32_entry(4, 16)}
    raw_safetensors(directory / SINGLE_FILE, header, bytes(20 * 4))
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        read_header(directory / SINGLE_FILE)


@pytest.mark.parametrize("extra", [1, 2**20, 2**40])
def test_header_length_beyond_the_file_is_corrupt(tmp_path, extra):
    directory = _single_file_dir(tmp_path)
    header = json.dumps({"model.norm.weight": _f32_entry(0, 16)}).encode()
    header += b" " * (-len(header) % 8)
    raw_safetensors(directory / SINGLE_FILE, header, bytes(64),
                    header_len=len(header) + 64 + extra)
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert SINGLE_FILE in str(err) and err.subject == SINGLE_FILE, \
        f"a header length beyond the file is corrupt, naming the file: {err}"


def test_data_offsets_beyond_the_file_are_corrupt(tmp_path):
    directory = _single_file_dir(tmp_path)
    raw_safetensors(directory / SINGLE_FILE, {"model.norm.weight": _f32_entry(0, 16)}, bytes(32))
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert "model.norm.weight" in str(err), f"offsets past the data section: {err}"


class _Detonator:
    """Unpickling this touches a marker file: proof that something unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path, monkeypatch):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(json.dumps(GQA.to_hf_config()))
    marker = tmp_path / "UNPICKLED"
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_Detonator(marker)))
    calls = []
    for target, attr in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, attr, lambda *a, **k: calls.append(a) or pytest.fail(
            "something unpickled"))
    err = raises(CorruptCheckpointError, lambda: load(directory, GQA))
    assert not calls and not marker.exists(), "a pickle-only checkpoint is never unpickled"
    assert "model.safetensors" in str(err), f"the refusal says what is missing: {err}"


# ===== 8. order independence =====================================================================
@ON_DISK
def test_tensor_order_and_shard_split_do_not_matter(tmp_path, fused_on_disk):
    base = None
    for i, (order_seed, shards) in enumerate([(0, 1), (1, 1), (2, 2), (3, 3), (4, 4)]):
        plan = CheckpointPlan(GQA, fused=fused_on_disk, order_seed=order_seed, shards=shards,
                              data_seed=1)
        result = load(plan.write(tmp_path / f"c{i}"), GQA)
        state = {n: t.clone() for n, t in result.state.items()}
        if base is None:
            base = state
            assert_state_bits(base, cast(plan.canonical(), GQA), "order: the first load")
        else:
            assert_state_bits(state, base, f"order: order_seed={order_seed}, {shards} shards")
    # And by hand: the same items reversed in one file.
    items = list(split_checkpoint(GQA, canonical(GQA, seed=1)).items())
    assert_state_bits(load(write(tmp_path / "rev", GQA, items[::-1]), GQA).state, base,
                      "order: reversed key order in one file")


# ===== 9. meta initialisation ===================================================================
META_SPEC = ModelSpec(meta_submodule=True, dtype="bfloat16", num_heads=4, num_kv_heads=2,
                      head_dim=4, extras=(ExtraParam("fp8", "float8_e4m3fn", (4, 4)),
                                          ExtraParam("packed", "int32", (3,))))


@pytest.mark.parametrize("poison", [False, True])
@FUSED_PARAMS
def test_meta_init_leaves_nothing_on_meta(tmp_path, poison, fused_params):
    tensors = canonical(META_SPEC, seed=2)
    path = write(tmp_path / "c", META_SPEC, split_checkpoint(META_SPEC, tensors))
    result = load(path, META_SPEC, ReferenceLoader(fused_params=fused_params),
                  meta_init=True, poison=poison)
    model = result.model
    for name, t in [*result.state.items(), *result.buffers.items(),
                    *model.named_parameters(), *model.named_buffers()]:
        assert not t.is_meta, f"meta: {name} is still on meta after loading"
    assert set(result.placement.values()) == {"cpu"}, f"meta: placement {result.placement}"
    assert_state_bits(result.state, cast(tensors, META_SPEC),
                      "meta: values and dtypes after a meta-initialised load")
    assert result.state["model.extras.fp8"].dtype == torch.float8_e4m3fn, "meta: FP8 stays FP8"
    expected_buffers = {"model.rotary_emb.inv_freq": rotary_inv_freq(META_SPEC),
                        "model.resampler.position_scale": resampler_position_scale(META_SPEC)}
    assert set(result.buffers) == set(expected_buffers) == set(META_SPEC.buffer_names())
    for name, want in expected_buffers.items():
        assert same_bits(result.buffers[name], want), \
            f"meta: non-persistent buffer {name} equals the constructor's value, not garbage"
    # The device move after loading: idempotent, device only, never dtype.
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    model.move_to("cpu")
    model.move_to("cpu")
    assert {n: p.dtype for n, p in model.named_parameters()} == dtypes, \
        "meta: the device move after loading changes the device only, never the dtype"


# ===== 10. never writing into a checkpoint =======================================================
@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("meta_init", [False, True])
@ON_DISK
@FUSED_PARAMS
def test_writing_into_loaded_parameters_never_reaches_the_checkpoint(
        tmp_path, shards, meta_init, fused_on_disk, fused_params):
    spec = ModelSpec(num_heads=4, num_kv_heads=2, head_dim=4,
                     extras=(ExtraParam("packed", "int32", (4,)),
                             ExtraParam("codes", "float8_e4m3fn", (8,))))
    plan = CheckpointPlan(spec, fused=fused_on_disk, shards=shards)
    path = plan.write(tmp_path / "c")
    before = sha256s(path)
    loader = ReferenceLoader(fused_params=fused_params)  # map_weights=True by default
    result = load(path, spec, loader, meta_init=meta_init)
    sizes = {p.stat().st_size for p in path.glob("*.safetensors")}
    mapped = [n for n, t in result.state.items() if t.untyped_storage().nbytes() in sizes]
    assert mapped, "test setup: some parameter should sit on a mapping of a checkpoint file"
    with torch.no_grad():
        for t in result.state.values():
            t.fill_(0)
        for p in result.model.parameters():
            p.fill_(0)
    assert sha256s(path) == before, \
        "a write into a loaded (mapped, copy-on-write) parameter reached the checkpoint file"
    again = load(path, spec, loader)
    assert_state_bits(again.state, cast(plan.canonical(), spec),
                      "a reload after writing into the first load's parameters sees the file")


# ===== 11. poison ===============================================================================
@pytest.mark.parametrize("dropped", [f"{L0}.self_attn.k_proj.bias", f"{L0}.mlp.down_proj.weight",
                                     "model.norm.weight", f"{L0}.mlp.gate_proj.weight"])
@pytest.mark.parametrize("meta_init", [False, True])
@FUSED_PARAMS
def test_missing_parameter_keeps_poison(tmp_path, dropped, meta_init, fused_params):
    disk = split_checkpoint(GQA, canonical(GQA))
    disk.pop(dropped)
    path = write(tmp_path / "c", GQA, disk)
    result = load(path, GQA, ReferenceLoader(fused_params=fused_params), poison=True,
                  meta_init=meta_init)
    assert result.missing == {dropped}
    assert poison_mask(result.state[dropped]).all(), \
        f"poison: the missing parameter {dropped} must still hold poison everywhere"
    for name, t in result.state.items():
        if name != dropped and t.dtype in PLAIN_FLOATS:
            assert not poison_mask(t).any(), f"poison: loaded parameter {name} holds poison"


# ===== 12. forward ==============================================================================
FWD = dict(vocab_size=16, hidden_size=16, intermediate_size=8, num_layers=2, num_heads=4,
           num_kv_heads=2, head_dim=4)


@pytest.mark.parametrize("fused_params", [True, False])
def test_forward_shape_and_tied_head(tmp_path, fused_params):
    untied = ModelSpec(**FWD)
    tied = ModelSpec(**FWD, tie_word_embeddings=True)
    tensors = canonical(untied, seed=4)
    loader = ReferenceLoader(fused_params=fused_params)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2]])
    same = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"].clone()})
    no_head = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    r_untied = load(write(tmp_path / "u", untied, split_checkpoint(untied, same)), untied, loader)
    r_tied = load(write(tmp_path / "t", tied, split_checkpoint(tied, no_head)), tied, loader)
    r_other = load(write(tmp_path / "o", untied, split_checkpoint(untied, tensors)), untied, loader)
    with torch.no_grad():
        logits = loader.forward(r_tied, ids)
        reference = loader.forward(r_untied, ids)
        other = loader.forward(r_other, ids)
    assert logits.shape == (1, ids.shape[1], 16), f"forward: logits [1, seq, vocab], {logits.shape}"
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, reference), \
        "forward: tied logits equal hidden @ embed.T (an untied model whose head is the embedding)"
    assert not torch.allclose(logits, other), "forward: the untied head is used when untied"
