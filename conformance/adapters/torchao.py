"""The torchao adapter: torchao's FP8 weight quantization as an FP8 candidate.

torchao has no checkpoint loader. This adapter therefore does the loading itself, into a
tiny module tree of the Hugging Face shape (`nn.Embedding`, `nn.Linear` with HF's module
names, in the family's native layout: separate q/k/v and gate/up for llama and qwen2,
fused `qkv_proj` and `gate_up_proj` for phi3), reading the files with the `safetensors`
library. The part under test is torchao's own quantization: `torchao.quantize_` with
`Float8WeightOnlyConfig(granularity=PerTensor())` (`loader`) or `PerRow()` (`row_loader`)
applied to the seven projections of every decoder layer, and the codes and scales read
back out of torchao's `Float8Tensor` (`qdata`, `scale`).

Why these configs: `Float8DynamicActivationFloat8WeightConfig` refuses to run without a
CUDA device of compute capability >= 8.9 (an AssertionError in torchao 0.18.0), and it
silently leaves any weight whose dimensions are not multiples of 16 unquantized
(`_fp8_mm_compat`). `Float8WeightOnlyConfig` quantizes the weight with the same
`Float8Tensor.from_hp` and runs on the CPU (the matmul dequantizes).

torchao's convention is ours: `dequantized = qdata.float() * scale`
(`_dequantize_affine_float8`), with `scale = amax / 448` (`_choose_scale_float8`, no lower
bound) and `qdata = clamp(W.float() / scale, -448, 448).to(float8_e4m3fn)`
(`_quantize_affine_float8`). The scale is stored as float32 with shape (1, 1) per tensor
and (rows, 1) per row; the canonical `weight_scale` is its () or (rows,) view.

Nothing here checks weights for NaN / Inf before quantizing: torchao does not, and the
suite should see what torchao does with them.

Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

import torchao
from torchao.quantization import Float8WeightOnlyConfig, PerRow, PerTensor, quantize_

from reference.contract import (CONFIG_FILE, INDEX_FILE, LINEAR_PROJECTIONS, SINGLE_FILE,
                                CorruptCheckpointError, LoadError, LoadOptions, LoadResult,
                                MissingWeightsError, ModelSpec, ShapeMismatchError,
                                UnexpectedKeysError, UnsafeCheckpointError,
                                UnsupportedDtypeError, UnsupportedLayoutError, torch_dtype)

__all__ = ["TorchaoFp8Loader", "loader", "row_loader", "make_loader"]

FP8 = torch.float8_e4m3fn
# fused module -> the logical modules stacked in its rows (HF phi3's layout).
_FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
_PLAIN_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
              "U16": getattr(torch, "uint16", None), "U32": getattr(torch, "uint32", None),
              "U64": getattr(torch, "uint64", None)}
# Which problem is raised first when a checkpoint has several (the others are named as
# acceptable alternatives): the file's validity, then keys, shapes, dtypes, coverage.
_ORDER = ("corrupt_checkpoint", "unexpected", "shape_mismatch", "unsupported_dtype", "missing")


# ----- the model: HF module names, native layout ----------------------------------------
class _Norm(nn.Module):
    def __init__(self, size: int, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype))


def _linear(out_features: int, in_features: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, dtype=dtype, device="cpu")


def _fused_rows(spec: ModelSpec, fused: str) -> list[tuple[str, int, int]]:
    """(logical module, first row, end row) of each slot of a fused module."""
    sizes = {"self_attn.q_proj": spec.q_size, "self_attn.k_proj": spec.kv_size,
             "self_attn.v_proj": spec.kv_size, "mlp.gate_proj": spec.intermediate_size,
             "mlp.up_proj": spec.intermediate_size}
    rows, start = [], 0
    for part in _FUSED[fused]:
        rows.append((part, start, start + sizes[part]))
        start += sizes[part]
    return rows


def build_model(spec: ModelSpec, dtype: torch.dtype) -> nn.Module:
    """The tiny decoder as HF builds it (weights uninitialised: every one is loaded)."""
    h, i = spec.hidden_size, spec.intermediate_size
    root = nn.Module()
    root.model = nn.Module()
    root.model.embed_tokens = nn.Embedding(spec.vocab_size, h, dtype=dtype)
    layers = nn.ModuleList()
    for _ in range(spec.num_layers):
        layer = nn.Module()
        layer.input_layernorm = _Norm(h, dtype)
        layer.post_attention_layernorm = _Norm(h, dtype)
        layer.self_attn, layer.mlp = nn.Module(), nn.Module()
        if spec.fused_on_disk_natively:
            layer.self_attn.qkv_proj = _linear(spec.q_size + 2 * spec.kv_size, h, False, dtype)
            layer.mlp.gate_up_proj = _linear(2 * i, h, False, dtype)
        else:
            for name, out_f in (("q_proj", spec.q_size), ("k_proj", spec.kv_size),
                                ("v_proj", spec.kv_size)):
                setattr(layer.self_attn, name, _linear(out_f, h, spec.has_bias(name), dtype))
            layer.mlp.gate_proj = _linear(i, h, spec.has_bias("gate_proj"), dtype)
            layer.mlp.up_proj = _linear(i, h, spec.has_bias("up_proj"), dtype)
        layer.self_attn.o_proj = _linear(h, spec.q_size, spec.has_bias("o_proj"), dtype)
        layer.mlp.down_proj = _linear(h, i, spec.has_bias("down_proj"), dtype)
        layers.append(layer)
    root.model.layers = layers
    root.model.norm = _Norm(h, dtype)
    root.model.rotary_emb = nn.Module()
    # HF's constructor value (LlamaRotaryEmbedding's default rope init), float32.
    exponents = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float()
    root.model.rotary_emb.register_buffer(
        "inv_freq", 1.0 / (spec.rope_theta ** (exponents / spec.head_dim)), persistent=False)
    if spec.tie_word_embeddings:
        root.lm_head = nn.Linear(h, spec.vocab_size, bias=False, dtype=dtype)
        root.lm_head.weight = root.model.embed_tokens.weight
    else:
        root.lm_head = nn.Linear(h, spec.vocab_size, bias=False, dtype=dtype)
    root.spec = spec
    return root


def _projection_modules(spec: ModelSpec) -> list[str]:
    """Qualified names of the modules FP8 quantizes (the decoder layers' projections)."""
    names = []
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}"
        if spec.fused_on_disk_natively:
            names += [f"{p}.self_attn.qkv_proj", f"{p}.self_attn.o_proj",
                      f"{p}.mlp.gate_up_proj", f"{p}.mlp.down_proj"]
        else:
            names += [f"{p}.{m}" for m in LINEAR_PROJECTIONS]
    return names


def _key_table(spec: ModelSpec, params: Mapping[str, torch.Tensor]
               ) -> dict[str, tuple[tuple[int, ...], list[tuple[str, str, tuple | None,
                                                            tuple | None]]]]:
    """checkpoint key -> (its expected shape, [(canonical name, model parameter, rows of the
    parameter written or None for all, rows of the key read or None for all)]), for both
    layouts: a fused key fills separate parameters, a split key rows of a fused one."""
    shapes = spec.parameter_shapes()
    table: dict[str, tuple[tuple[int, ...], list]] = {}
    fused_of = {part: fused for fused, parts in _FUSED.items() for part in parts}
    for name, shape in shapes.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        if name in params:
            table[name] = (shape, [(name, name, None, None)])
            continue
        module, _, suffix = name.rpartition(".")
        prefix, _, rest = module.partition(".layers.")
        layer, _, logical = rest.partition(".")
        fused = fused_of.get(logical)
        if fused is not None:  # a split key into phi3's fused module
            param = f"{prefix}.layers.{layer}.{fused}.{suffix}"
            rows = next((a, b) for part, a, b in _fused_rows(spec, fused) if part == logical)
            table[name] = (shape, [(name, param, rows, None)])
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        for fused in _FUSED:
            for suffix in ("weight", "bias"):
                key = f"{p}{fused}.{suffix}"
                parts = [f"{p}{part}.{suffix}" for part in _FUSED[fused]]
                if not all(n in shapes for n in parts):
                    continue
                slots = _fused_rows(spec, fused)
                shape = (slots[-1][2],) + tuple(shapes[parts[0]][1:])
                if key in params:  # phi3's own layout: the whole fused parameter
                    table[key] = (shape, [(n, key, (a, b), (a, b))
                                          for n, (_, a, b) in zip(parts, slots)])
                else:  # a fused key into separate modules
                    table[key] = (shape, [(n, n, None, (a, b))
                                          for n, (_, a, b) in zip(parts, slots)])
    return table


# ----- reading the checkpoint ----------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _header(path: Path) -> dict[str, tuple[torch.dtype | None, tuple[int, ...]]]:
    """Validate a safetensors header (what the library trusts is checked here too: lengths,
    offsets, shapes, overlaps, duplicate keys); key -> (dtype, shape)."""
    def corrupt(why: str, key: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path.name}: {why}", subject=key or path.name)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"{size} bytes: too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise corrupt(f"header length {length} exceeds the file")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise corrupt(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    body = size - 8 - length
    entries, spans = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise corrupt("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise corrupt(f"tensor {key!r}: malformed entry", key)
        if info["dtype"] not in _ST_DTYPES or _ST_DTYPES[info["dtype"]] is None:
            raise UnsupportedDtypeError(f"{path.name}: tensor {key!r} has dtype "
                                        f"{info['dtype']!r}", subject=key)
        dtype = _ST_DTYPES[info["dtype"]]
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                  and d >= 0 for d in shape):
            raise corrupt(f"tensor {key!r}: invalid shape {shape!r}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= body):
            raise corrupt(f"tensor {key!r}: invalid data_offsets {offsets!r}", key)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if offsets[1] - offsets[0] != nbytes:
            raise corrupt(f"tensor {key!r}: shape {shape} needs {nbytes} bytes, offsets give "
                          f"{offsets[1] - offsets[0]}", key)
        spans.append((offsets[0], offsets[1], key))
        entries[key] = (dtype, tuple(shape))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin < end:
            raise corrupt(f"tensor {key!r} overlaps another", key)
        end = max(end, stop)
    return entries


def _check_link(directory: Path, name: str) -> None:
    """The suite's symlink policy (README), for the index, the single file and every shard:
    a file resolves directly into the directory, or, from a Hugging Face hub-cache snapshot
    (`<repo>/snapshots/<rev>/`), into that repo's `blobs/`."""
    path = directory / name
    if not (path.is_symlink() or path.exists()):
        return
    root, home = directory.resolve(), path.resolve().parent
    if home != root and not (root.parent.name == "snapshots"
                             and home == root.parent.parent / "blobs"):
        raise UnsafeCheckpointError(f"{name} resolves outside {directory}", subject=name)


def _files(directory: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """key -> the file the checkpoint assigns it to, and each file's validated header."""
    if not directory.is_dir():
        raise CorruptCheckpointError(f"{directory} is not a directory", subject=str(directory))
    index = directory / INDEX_FILE
    _check_link(directory, INDEX_FILE)
    if index.exists():
        try:
            data = json.loads(index.read_text(), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{INDEX_FILE}: {exc}", subject=INDEX_FILE) from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise CorruptCheckpointError(f"{INDEX_FILE} has no weight_map", subject=INDEX_FILE)
        assigned = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or not name or "/" in name or "\\" in name \
                    or name in (".", "..") or os.path.isabs(name):
                raise UnsafeCheckpointError(f"{INDEX_FILE}: shard name {name!r} for {key!r} "
                                            f"is not a plain file name", subject=str(name))
            path = directory / name
            _check_link(directory, name)
            if not path.is_file():
                raise CorruptCheckpointError(f"{INDEX_FILE} names {name}, which is not a file",
                                             subject=name)
            assigned[key] = path
    else:
        single = directory / SINGLE_FILE
        _check_link(directory, SINGLE_FILE)
        if not single.is_file():
            raise CorruptCheckpointError(f"{directory} has neither {SINGLE_FILE} nor "
                                         f"{INDEX_FILE}", subject=str(directory))
        assigned = {}
    headers: dict[str, dict] = {}
    for path in sorted(set(assigned.values())) if index.exists() else [directory / SINGLE_FILE]:
        headers[path.name] = _header(path)
    if not index.exists():
        assigned = {key: directory / SINGLE_FILE for key in headers[SINGLE_FILE]}
    for file_name, entries in headers.items():
        for key in entries:
            if assigned.get(key, directory / file_name).name != file_name or key not in assigned:
                raise CorruptCheckpointError(f"tensor {key!r} sits in {file_name}, which the "
                                             f"index does not assign it to", subject=key)
    for key, path in assigned.items():
        if key not in headers[path.name]:
            raise CorruptCheckpointError(f"{INDEX_FILE} puts {key!r} in {path.name}, which "
                                         f"does not hold it", subject=key)
    return assigned, headers


# ----- the loader -----------------------------------------------------------------------
class TorchaoFp8Loader:
    """Plain loading into HF-shaped modules, then torchao's `quantize_` with
    `Float8WeightOnlyConfig` at the chosen granularity."""

    capabilities = frozenset({"load", "fused_on_disk", "sharded", "track", "strict", "poison",
                              "fp8_online", "fp8_quantize"})

    def __init__(self, granularity: str = "tensor"):
        if granularity not in ("tensor", "row"):
            raise ValueError(f"granularity {granularity!r}: 'tensor' or 'row'")
        self.granularity = granularity
        self.name = "torchao" if granularity == "tensor" else "torchao-row"
        self.version = torchao.__version__
        # Each FP8 variant, from torchao 0.18.0's source (see docs/findings/torchao.md):
        # - unit: quantize_ replaces each nn.Linear's weight, one scale per module (the
        #   checkpoint's / HF's module; phi3's fused qkv_proj is one module) or per row;
        # - scale_op divide: _quantize_affine_float8 computes `tensor_fp32 / scale_expanded`;
        # - scale_floor none: _choose_scale_float8 returns `max_abs / quant_max` with no
        #   clamp (the 1e-12 eps lives only in torchao.float8's training path,
        #   float8_utils.amax_to_scale, which quantize_ does not use);
        # - scale_dtype weight: max_abs / quant_max is computed in the weight's dtype and
        #   only then cast to float32.
        self.variants = {"fp8_unit": granularity, "fp8_scale_op": "divide",
                         "fp8_scale_floor": "none", "fp8_scale_dtype": "weight",
                         "tied_checkpoint_head": "ignore", "unexpected_keys": "report"}

    def _config(self) -> Float8WeightOnlyConfig:
        return Float8WeightOnlyConfig(
            granularity=PerTensor() if self.granularity == "tensor" else PerRow())

    # ----- load ----------------------------------------------------------------------
    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        if options.tp_size != 1:
            raise UnsupportedLayoutError("tensor parallelism is not supported",
                                         subject="tp_size")
        if options.device != "cpu":
            raise UnsupportedLayoutError(f"device {options.device}: this adapter loads on the "
                                         f"CPU", subject=options.device)
        if options.meta_init:
            raise UnsupportedLayoutError("meta_init is not supported", subject="meta_init")
        if spec.fp8_checkpoint or spec.extras or spec.meta_submodule:
            raise UnsupportedLayoutError(f"{spec.summary()}: serialized FP8 checkpoints, "
                                         f"extras and meta submodules are not supported",
                                         subject=CONFIG_FILE)
        directory = Path(checkpoint)
        assigned, headers = _files(directory)
        dtype = torch_dtype(options.dtype or spec.dtype)
        model = build_model(spec, dtype)
        params = dict(model.named_parameters())  # a tied head appears once (the embedding)
        if options.poison:
            with torch.no_grad():
                for p in params.values():
                    p.view(torch.uint8).fill_(0xFF)
        table = _key_table(spec, params)
        problems: list[LoadError] = []
        unexpected, ignored, covered = set(), set(), {}
        plan = []
        for key in sorted(assigned):
            if key not in table:
                if key == "lm_head.weight" and spec.tie_word_embeddings:
                    ignored.add(key)
                else:
                    unexpected.add(key)
                continue
            src_dtype, shape = headers[assigned[key].name][key]
            want, slots = table[key]
            if shape != want and not (want == () and shape == (1,)):
                problems.append(ShapeMismatchError(f"{key}: expected shape {list(want)}, "
                                                   f"checkpoint has {list(shape)}", subject=key))
                continue
            if src_dtype not in _PLAIN_FLOATS:
                param = params[slots[0][1]]
                problems.append(UnsupportedDtypeError(
                    f"{key}: checkpoint dtype {src_dtype} cannot load into a {param.dtype} "
                    f"parameter", subject=key))
                continue
            for canonical, *_ in slots:
                if canonical in covered:
                    problems.append(CorruptCheckpointError(
                        f"{canonical} is fed by both {covered[canonical]} and {key}",
                        subject=canonical))
                covered[canonical] = key
            plan.append((key, slots))
        loaded = set(covered)
        missing = {n for n in spec.parameter_shapes() if n not in loaded
                   and not (n == "lm_head.weight" and spec.tie_word_embeddings)}
        if unexpected and options.strict:
            names = sorted(unexpected)
            problems.append(UnexpectedKeysError(f"unexpected checkpoint keys: "
                                                f"{', '.join(names)}", subject=names[0]))
        if missing and (options.track or options.strict):  # strict: torch's, both ways
            names = sorted(missing)
            problems.append(MissingWeightsError(f"weights not initialized from the "
                                                f"checkpoint: {', '.join(names)}",
                                                subject=names[0]))
        if problems:
            ranked = sorted(problems, key=lambda e: (_ORDER.index(e.family), str(e)))
            ranked[0].alternatives = frozenset(e.family for e in ranked)
            raise ranked[0]
        from safetensors import safe_open
        by_file: dict[str, list] = {}
        for key, slots in plan:
            by_file.setdefault(assigned[key].name, []).append((key, slots))
        with torch.no_grad():
            for file_name, items in sorted(by_file.items()):
                try:
                    with safe_open(str(directory / file_name), framework="pt") as f:
                        for key, slots in items:
                            tensor = f.get_tensor(key)
                            for _, pname, dest_rows, src_rows in slots:
                                dest = params[pname]
                                if dest_rows is not None:
                                    dest = dest[dest_rows[0]:dest_rows[1]]
                                src = tensor if src_rows is None else \
                                    tensor[src_rows[0]:src_rows[1]]
                                dest.copy_(src.reshape(dest.shape))
                except LoadError:
                    raise
                except Exception as exc:  # safetensors refusing what the header check passed
                    raise CorruptCheckpointError(f"{file_name}: {type(exc).__name__}: {exc}",
                                                 subject=file_name) from exc
        result = self._result(model, spec, loaded, missing, unexpected, ignored)
        if options.quantize == "fp8":
            return self.quantize(result)
        return result

    # ----- FP8 -----------------------------------------------------------------------
    def quantize(self, result: LoadResult) -> LoadResult:
        """torchao's quantize_ on the projections of a loaded model (in place)."""
        model = result.model
        spec = model.spec
        targets = set(_projection_modules(spec))
        if any(_is_quantized(model.get_submodule(n).weight) for n in targets):
            raise UnsupportedLayoutError("the model is already quantized", subject="quantize")
        quantize_(model, self._config(), filter_fn=lambda module, fqn: fqn in targets)
        return self._result(model, spec, set(result.loaded), set(result.missing),
                            set(result.unexpected), set(result.ignored))

    # ----- canonical form ------------------------------------------------------------
    def _result(self, model: nn.Module, spec: ModelSpec, loaded, missing, unexpected, ignored
                ) -> LoadResult:
        return LoadResult(
            state=canonical_state(model, spec), buffers={
                "model.rotary_emb.inv_freq": model.model.rotary_emb.inv_freq},
            loaded=frozenset(loaded), missing=frozenset(missing),
            unexpected=frozenset(unexpected), ignored=frozenset(ignored),
            aliases={"lm_head.weight": "model.embed_tokens.weight"}
            if spec.tie_word_embeddings else {},
            model=model)


def _is_quantized(weight: torch.Tensor) -> bool:
    return hasattr(weight, "qdata") and hasattr(weight, "scale")


def _codes_and_scale(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's Float8Tensor -> (FP8 codes, float32 scale of shape () or (rows,)).
    torchao dequantizes as qdata.float() * scale (scale (1, 1) or (rows, 1))."""
    codes, scale = weight.qdata, weight.scale
    if scale.numel() == 1:
        return codes, scale.reshape(())
    return codes, scale.reshape(-1)


def canonical_state(model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """One tensor per logical matrix under its split HF name (views of fused modules), FP8
    codes and weight_scale for a quantized projection."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.named_parameters():
        module, _, suffix = name.rpartition(".")
        fused = next((f for f in _FUSED if module.endswith("." + f)), None)
        quantized = _is_quantized(tensor)
        if quantized:
            data, scale = _codes_and_scale(tensor)
        else:
            data, scale = tensor.detach(), None
        if fused is None:
            state[name] = data
            if scale is not None:
                state[name + "_scale"] = scale
            continue
        prefix = module[: -len(fused)]
        for part, start, stop in _fused_rows(spec, fused):
            canonical = f"{prefix}{part}.{suffix}"
            state[canonical] = data[start:stop]
            if scale is not None:
                state[canonical + "_scale"] = scale if scale.dim() == 0 else scale[start:stop]
    return state


def make_loader(granularity: str = "tensor") -> TorchaoFp8Loader:
    return TorchaoFp8Loader(granularity)


loader = TorchaoFp8Loader("tensor")
row_loader = TorchaoFp8Loader("row")
