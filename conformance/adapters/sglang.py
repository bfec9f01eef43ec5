"""loadcheck adapter for SGLang (issue 17): SGLang's own model loader on CPU, no engine.

Every load is SGLang's `DefaultModelLoader.load_model` (the `load_format="safetensors"`
loader a server uses) for `ModelConfig(checkpoint, dtype=...)`, `LoadConfig(load_format=
"safetensors")` and `DeviceConfig("cpu")`, in a single-process gloo "distributed"
environment set up once per process as SGLang's own layer tests do
(`sglang/test/layer_ut_utils.py::init_single_process_dist` and
`test_utils.py::publish_build_topology`, restated here: importing them pulls SGLang's
benchmark datasets). No scheduler, KV cache or attention backend is started. Needs its
own environment: `requirements/sglang-cpu.txt`, `tox -e sglang`.

What the adapter adds around SGLang, and nothing else:

* Import shims, in `_sglang_env.py`: torchvision is a hard import of SGLang's multimodal
  modules and PyPI's torchvision needs CUDA libraries, so `torchvision.*` is SGLang's own
  platform stub (`sglang._platform_stubs._MockModule`, what SGLang installs for triton on
  macOS) and transformers is told it is absent.
* The rotary embedding's CPU switch (`layers/rotary_embedding/base.py` `_is_cpu`): SGLang
  decides it from `SGLANG_USE_CPU_ENGINE`, which would also turn on its AMX / sgl_kernel
  CPU paths; without it the rotary layer imports vLLM's custom ops. Only that module's
  flag is set.
* `tp`: a simulated rank. SGLang's layers read the TP rank and size from the parallel
  context (`get_parallel().tp_rank / tp_size`, `attn_tp_rank / attn_tp_size`) and from
  the TP group coordinator (`get_group_rank_size(tp_group)`); for one load the adapter
  sets them with SGLang's own scoped `get_parallel().override(...)` and the coordinator's
  two attributes, then restores them. No collective runs while loading.
* `poison`: after SGLang built the model and before any weight arrives, every parameter
  is filled with the poison pattern (SGLang allocates with `torch.empty`).
* The canonical view: SGLang keeps q/k/v in `qkv_proj` and gate/up in `gate_up_proj`; the
  state holds row views at SGLang's own shard offsets, and the vocab rows of the real
  vocabulary (SGLang pads it).

Not claimed: `track` / `strict` (SGLang's legacy `load_weights` returns nothing and skips
unknown names with a log line), `meta_init`, `extras`, `meta_submodule`, `forward` (needs
a forward batch and an attention backend: an engine), `offload`, `bytes`, `cuda`.
"""

from __future__ import annotations

import copy
import gc
import re
import threading
import traceback
from contextlib import contextmanager
from typing import Iterator

import torch

from reference.contract import (CorruptCheckpointError, LoadOptions, LoadResult, ModelSpec,
                                ShapeMismatchError, UnsupportedDtypeError,
                                UnsupportedLayoutError)

from ._sglang_env import prepare_imports, single_process_groups
from .vllm import _poison_

__all__ = ["SglangLoader", "SglangFp8Loader", "loader", "fp8_loader", "make_loader"]

_LOCK = threading.RLock()
_READY = False
_FUSED = {"self_attn.qkv_proj": (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"),
                                 ("self_attn.v_proj", "v")),
          "mlp.gate_up_proj": (("mlp.gate_proj", 0), ("mlp.up_proj", 1))}
_VOCAB = ("model.embed_tokens", "lm_head")
# The attention's KV-cache scales a quantization config adds (quantization/kv_cache.py
# BaseKVCacheMethod: k_scale = v_scale = -1.0, "not loaded" sentinels): not part of the
# contract's model; left out of the state and never poisoned.
_KV_SCALES = (".attn.k_scale", ".attn.v_scale")


def _setup() -> None:
    global _READY
    if _READY:
        return
    prepare_imports()
    single_process_groups()
    import sglang.srt.layers.rotary_embedding.base as rotary
    rotary._is_cpu = True  # the CPU rotary path, not vLLM's custom op (see the docstring)
    gc.freeze()  # the import graph is large; later objects stay collectable
    _READY = True


def _sglang_version() -> str:
    from importlib.metadata import version
    return f"sglang {version('sglang')}, torch {torch.__version__}"


@contextmanager
def _simulated_rank(tp_size: int, tp_rank: int) -> Iterator[None]:
    if tp_size == 1:
        yield
        return
    from sglang.srt.runtime_context import get_parallel
    parallel = get_parallel()
    # In one process every group is the same coordinator object: the simulated rank gets
    # its own copies of the TP and attention-TP coordinators, the others stay as built.
    simulated = {}
    for field in ("tp_group", "attn_tp_group"):
        group = copy.copy(getattr(parallel, field))
        group.world_size, group.rank_in_group = tp_size, tp_rank
        simulated[field] = group
    with parallel.override(tp_size=tp_size, tp_rank=tp_rank, attn_tp_size=tp_size,
                           attn_tp_rank=tp_rank, moe_tp_size=tp_size, **simulated):
        yield


# ----- errors ----------------------------------------------------------------------------
_SHAPE = re.compile(r"size mismatch|shape mismatch|must match the size of tensor|"
                    r"The size of tensor a|param_data\.shape|loaded_weight\.shape|"
                    r"doesn't match|does not match|exceeds dimension size", re.I)


def _map_error(exc: BaseException) -> BaseException:
    """SGLang's exception -> the loadcheck family (by type and message), else itself."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (AssertionError, RuntimeError, ValueError)) and _SHAPE.search(str(exc)):
        return ShapeMismatchError(text)
    if isinstance(exc, AssertionError) and exc.__traceback__ is not None:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        if "sglang" in last.filename and ".shape" in (last.line or "") and "==" in (last.line or ""):
            return ShapeMismatchError(f"{text} ({last.line.strip()})")
    if isinstance(exc, ValueError) and re.search(r"float32 is not supported|dtype", str(exc)) \
            and "quantiz" in str(exc).lower():
        return UnsupportedDtypeError(text, subject="torch_dtype")
    if isinstance(exc, RuntimeError) and re.search(r"Cannot find any model weights|"
                                                   r"shard file\(s\) missing", str(exc)):
        return CorruptCheckpointError(text)
    from ._hf import checkpoint_error, exception_chain
    for link in exception_chain(exc):
        if isinstance(link, (UnicodeDecodeError,)) or type(link).__name__ == "error":
            return CorruptCheckpointError(f"{type(link).__name__}: {link}")
        mapped = checkpoint_error(link)
        if mapped is not None:
            return mapped
    return exc


# ----- the canonical view ----------------------------------------------------------------
def _rank_size(module: torch.nn.Module) -> int:
    from sglang.srt.distributed.utils import get_group_rank_size
    return get_group_rank_size(getattr(module, "tp_group", None))[1]


def _fused_rows(module: torch.nn.Module, fused: str) -> list[tuple[str, int, int]]:
    """(logical module, start row, stop row) of this rank's fused parameter, from SGLang's
    own shard offsets (QKVParallelLinear) or output sizes (MergedColumnParallelLinear)."""
    if fused.endswith("qkv_proj"):
        return [(logical, module._get_shard_offset_mapping(shard),
                 module._get_shard_offset_mapping(shard) + module._get_shard_size_mapping(shard))
                for logical, shard in _FUSED[fused]]
    out, start, tp = [], 0, _rank_size(module)
    for (logical, _), size in zip(_FUSED[fused], module.output_sizes):
        out.append((logical, start, start + size // tp))
        start += size // tp
    return out


def _rows_first(module: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """An FP8 weight as (out, in) rows: Fp8LinearMethod keeps the processed codes as
    `qweight.t()`, (in, out) (fp8.py process_weights_after_loading)."""
    if tensor.dtype != torch.float8_e4m3fn or tensor.dim() != 2:
        return tensor
    k = getattr(module, "input_size_per_partition", None)
    n = getattr(module, "output_size_per_partition", None)
    if tensor.shape == (k, n) and (k != n or (tensor.stride(0) == 1 and n > 1)):
        return tensor.t()
    return tensor


def _canonical_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name.endswith(_KV_SCALES):
            continue
        module_name, _, leaf = name.rpartition(".")
        fused = next((f for f in _FUSED if module_name.endswith("." + f)), None)
        tensor = _rows_first(modules[module_name], param.data) if module_name else param.data
        if leaf in ("weight_scale", "input_scale") and tensor.numel() == 1:
            tensor = tensor.reshape(())  # one per-tensor scale: every logical matrix's
        if fused is not None:
            prefix = module_name[: -len(fused)]
            for logical, start, stop in _fused_rows(modules[module_name], fused):
                state[f"{prefix}{logical}.{leaf}"] = tensor[start:stop] if tensor.dim() \
                    else tensor
        elif module_name in _VOCAB and leaf == "weight":
            indices = modules[module_name].shard_indices
            state[name] = tensor[: indices.org_vocab_end_index - indices.org_vocab_start_index]
        else:
            state[name] = tensor
    return state


class SglangLoader:
    name = "sglang"
    capabilities = frozenset({"load", "fused_on_disk", "sharded", "tp", "poison"})
    # models/llama.py `_legacy_load_weights`: a tied model's checkpoint `lm_head.weight`
    # is skipped whatever it holds (`if self.config.tie_word_embeddings and "lm_head.weight"
    # in name: continue`).
    # layers/vocab_parallel_embedding.py: the vocabulary is padded to a multiple of 64
    # (times tp when that does not divide) and the padded range split evenly.
    variants = {"tied_checkpoint_head": "ignore", "unexpected_keys": "report",
                "vocab_shards": "padded64"}

    @property
    def version(self) -> str:
        return _sglang_version()

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        if options.meta_init:
            raise UnsupportedLayoutError("meta_init is not an SGLang load option",
                                         subject="meta_init")
        with _LOCK:
            _setup()
            try:
                return self._load(checkpoint, spec, options)
            except BaseException as exc:
                mapped = _map_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc

    def _load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        from sglang.srt.configs.device_config import DeviceConfig
        from sglang.srt.configs.load_config import LoadConfig
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.model_loader import get_model_loader

        with _simulated_rank(options.tp_size, options.tp_rank):
            # the config's dtype, as the vLLM adapter passes it: SGLang's "auto" loads a
            # float32 checkpoint in float16 (finding S1)
            model_config = ModelConfig(checkpoint, dtype=options.dtype or spec.dtype,
                                       quantization=options.quantize)
            sglang_loader = get_model_loader(LoadConfig(load_format="safetensors"),
                                             model_config)
            if options.poison:
                self._poison_before_loading(sglang_loader)
            model = sglang_loader.load_model(model_config=model_config,
                                             device_config=DeviceConfig("cpu"))
            state = _canonical_state(model)
        aliases = {}
        head = getattr(model, "lm_head", None)
        if spec.tie_word_embeddings and head is not None and \
                head.weight is model.model.embed_tokens.weight:
            aliases["lm_head.weight"] = "model.embed_tokens.weight"
        return LoadResult(state=state, aliases=aliases, model=model)

    @staticmethod
    def _poison_before_loading(sglang_loader) -> None:
        """Fill every parameter once SGLang built the model, before any weight arrives
        (`_initialize_model` builds it inside `load_model`; wrapped for this load only)."""
        import sglang.srt.model_loader.loader as loader_module
        initialize = loader_module._initialize_model
        load_model = sglang_loader.load_model

        def poisoned(*args, **kwargs):
            model = initialize(*args, **kwargs)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if param.device.type != "meta" and not name.endswith(_KV_SCALES):
                        _poison_(param.data)
            return model

        def load_model_poisoned(**kwargs):
            loader_module._initialize_model = poisoned
            try:
                return load_model(**kwargs)
            finally:
                loader_module._initialize_model = initialize
        sglang_loader.load_model = load_model_poisoned


class SglangFp8Loader(SglangLoader):
    """SGLang's own online FP8 (`LoadOptions(quantize="fp8")` is `ModelConfig(...,
    quantization="fp8")`): `Fp8LinearMethod.process_weights_after_loading` quantizes each
    linear's weight after loading, on CPU per tensor with `input_to_float8`
    (`layers/quantization/fp8.py:1151-1174`; the per-channel branch needs cutlass, XPU,
    Marlin or aiter). Nothing is substituted. Serialized FP8 is not claimed: a `fp8`
    config requantizes with `sgl_per_tensor_quant_fp8` (sgl_kernel, CUDA only: NameError
    here) and compressed-tensors asserts on CUDA (findings page). A float32 model with FP8
    is refused (`Fp8Config.get_supported_act_dtypes`: bfloat16, float16; checked at
    `model_loader/loader.py:269`), mapped to UnsupportedDtypeError: a declared entry of its
    baseline, not a model_support limit (float32 without FP8 loads as in `sglang`).

    The canonical view: the processed weight is `qweight.t()`, (in, out); the state holds
    its `.t()`, rows per logical matrix, and the fused parameter's one scale as each
    logical matrix's `weight_scale`."""

    name = "sglang-fp8"
    capabilities = SglangLoader.capabilities | {"fp8_online"}
    variants = {**SglangLoader.variants,
                # process_weights_after_loading quantizes the fused qkv_proj / gate_up_proj
                # parameter as one tensor (one input_to_float8 call, one amax)
                "fp8_unit": "fused",
                # fp8_utils.py input_to_float8: scale = fp_max / amax; codes =
                # (x.float() * scale).clamp(...); returns scale.float().reciprocal()
                "fp8_scale_op": "inverse",
                # amax = max(|min|, |max|).float().clamp(min=1e-12)
                "fp8_scale_floor": "eps",
                "fp8_scale_dtype": "float32"}


loader = SglangLoader()
fp8_loader = SglangFp8Loader()


def make_loader() -> SglangLoader:
    return SglangLoader()
