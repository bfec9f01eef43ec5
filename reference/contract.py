"""The loader contract: the one module a candidate's adapter imports.

It defines what is loaded (a :class:`ModelSpec` and a checkpoint directory), how
(:class:`LoadOptions`), what comes back (:class:`LoadResult`, in the *canonical* form:
one tensor per logical matrix under its Hugging Face split name, whatever the loader
keeps in memory), what may go wrong (the :class:`LoadError` family) and what a
candidate must provide (:class:`Loader`, with capability names and semantic variants).

Nothing here knows about Hypothesis or pytest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import torch

from .params import FUSED_PROJECTIONS, LINEAR_PROJECTIONS, ParamInfo, parameter_table

__all__ = [
    "CAPABILITIES", "VARIANTS", "variants_for", "per_family", "FAMILIES", "DTYPES", "FP8_CHECKPOINT_FORMATS",
    "LINEAR_PROJECTIONS", "fp8_quantization_config", "ModelSupport", "QuantSpec", "QUANT_FORMATS",
    "ExtraParam", "ModelSpec", "LoadOptions", "LoadResult", "Loader", "OffloadPlan",
    "LoadError", "ShapeMismatchError", "MissingWeightsError", "UnexpectedKeysError",
    "UnsafeCheckpointError", "CorruptCheckpointError", "UnsupportedDtypeError",
    "UnsupportedLayoutError", "NonFiniteInputError", "ERROR_FAMILIES",
    "CONFIG_FILE", "SINGLE_FILE", "INDEX_FILE", "check_loader", "torch_dtype",
    "FUSED_PROJECTIONS", "ParamInfo", "parameter_table",
]

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# What a loader can claim. The suite runs a property only when every capability it
# needs is claimed, and skips it with that reason otherwise.
CAPABILITIES: Mapping[str, str] = {
    "load": "loads split-on-disk llama / qwen2 and fused-on-disk phi3 checkpoints",
    "fused_on_disk": "also reads the non-native layout: fused qkv / gate_up for llama and "
                     "qwen2, split q / k / v and gate / up for phi3",
    "sharded": "reads several shards through model.safetensors.index.json",
    "tp": "simulated tensor parallelism: tp_size in {1, 2, 4} and a tp_rank",
    "meta_init": "builds the model on the meta device and materialises it while loading",
    "meta_submodule": "models with an extra submodule built on meta (model.resampler.*)",
    "extras": "models with extra parameters of any dtype (model.extras.*: int, bool, FP8)",
    "track": "reports missing weights exactly, and raises when tracking is on",
    "strict": "with strict on, raises on missing weights and on unexpected checkpoint keys "
              "(torch's load_state_dict(strict=True); see the strict_scope variant)",
    "poison": "fills every allocation with the poison pattern before loading",
    "forward": "computes logits of the tiny decoder",
    "finite_check": "with check_finite on, refuses NaN / Inf in float tensors, naming the key",
    "bytes": "reports each parameter's bytes: parameter_bytes(result) -> {canonical name: int}",
    "fp8_online": "online per-tensor dynamic FP8: load(..., LoadOptions(quantize='fp8')) "
                  "returns FP8 codes and a weight_scale per quantized linear",
    "fp8_quantize": "quantize(result) -> LoadResult quantizes an already loaded model "
                    "(load-then-quantize), under the same FP8 variants",
    "fp8_serialized": "serialized per-tensor FP8 checkpoints (FP8 weights, a scalar "
                      "weight_scale per checkpoint tensor, optional input_scale), split or "
                      "fused on disk, with the quantization_config real loaders read",
    "reload": "reload(result, checkpoint, spec, options) -> LoadResult: loads a checkpoint of "
              "all or some layers into the live (possibly quantized) model, in place",
    "offload": "offloads parameters to the host with prefetch",
    "cuda": "loads onto a CUDA device",
}
# issue 17: which serialized FP8 config a loader reads. compressed-tensors is the form
# every FP8 reader here knows; vLLM's `quant_method: fp8` is claimed separately
# (transformers reads `fp8` as its own block-wise FineGrainedFP8 method).
CAPABILITIES = {**CAPABILITIES,
                "fp8_vllm_config": "with fp8_serialized: also vLLM's `quant_method: fp8` "
                                   "per-tensor config (compressed-tensors otherwise)"}

# ----- block-wise FP8 (issue 16: reference/quant/fp8_block.py) --------------------------
CAPABILITIES = {**CAPABILITIES,
                "fp8_block_serialized": "serialized block-wise FP8 checkpoints (FP8 weights, a "
                                        "float32 weight_scale_inv per [bn, bk] block, "
                                        "`quant_method: fp8` with weight_block_size), split "
                                        "or fused on disk",
                "fp8_block_online": "online block-wise FP8: LoadOptions(quantize='fp8_block', "
                                    "quant_block=(bn, bk)) returns codes and a weight_scale_inv "
                                    "grid per linear"}

# ----- MXFP4 (issue 16: reference/quant/mxfp4.py) ------------------------------------------
CAPABILITIES = {**CAPABILITIES,
                "mxfp4_serialized": "serialized MXFP4 checkpoints (E2M1 codes packed two per "
                                    "byte as a uint8 weight, a uint8 E8M0 weight_scale per 32 "
                                    "input elements, Quark's OCP-MX quantization_config), "
                                    "split or fused on disk"}

# Where real loaders legitimately differ. Each variant has a default (the first value);
# a loader declares which one it follows and the reference computes the expected
# outcome under the same declaration.
VARIANTS: Mapping[str, tuple[str, ...]] = {
    # A checkpoint `lm_head.weight` in a tied model: ignored and reported as ignored, treated
    # as an unexpected key, or "untie": a head that differs (bitwise, after the dtype cast)
    # from the embedding unties the model and is loaded as its own parameter, while an equal
    # one is ignored (vLLM 0.32 maybe_untie_word_embeddings; transformers' tie_weights).
    "tied_checkpoint_head": ("ignore", "unexpected", "untie"),
    # A tied model whose checkpoint has the head but no embedding: the embedding is missing,
    # or "either": filled from the head (transformers treats tying as symmetric).
    "tied_embedding_source": ("embedding", "either"),
    # Unexpected keys without strict: reported (transformers), or always an error
    # (vLLM's load_weights looks every name up in params_dict).
    "unexpected_keys": ("report", "raise"),
    # What strict raises on: missing weights and unexpected keys, as torch's
    # load_state_dict(strict=True) and the libraries that copy it, or "unexpected" only,
    # for a loader that documents a strict of that scope.
    "strict_scope": ("missing_and_unexpected", "unexpected"),
    # ----- FP8 (semantics section 4; reference/fp8.py implements every value) ------------
    # The online quantization unit: the fused q/k/v and gate/up parameter as one tensor
    # (vLLM), each checkpoint tensor (HF, torchao: a module of the checkpoint's layout), or
    # each output row (per channel).
    "fp8_unit": ("fused", "tensor", "row"),
    # codes = W / s (the formula), or W * (1 / s) (vLLM's kernels and native path).
    "fp8_scale_op": ("divide", "reciprocal"),
    # The lower bound of an online scale: s >= 1 / (448 * 512) (vLLM's native path),
    # amax >= 1e-12 (torchao.float8's training path, amax_to_scale), or none (vLLM's CUDA
    # kernel and torchao's quantize_ in 0.18: a zero tensor gives s = 0).
    "fp8_scale_floor": ("m512", "eps", "none"),
    # The arithmetic of amax / 448: in float32 (the formula), or in the weight's own dtype
    # then cast to float32 (torchao's _choose_scale_float8: a rounded bf16 scale, and a
    # float16 amax / 448 that underflows to 0 below about 1.3e-5).
    "fp8_scale_dtype": ("float32", "weight"),
    # Serialized per-tensor scales of a fused parameter: requantized to one max scale
    # (vLLM), or kept one per slot (loaders that keep separate modules).
    "fp8_fused_scales": ("max_requant", "per_slot"),
    # The precision of the dequantization before that requantization (vLLM: float16).
    "fp8_dequant": ("float32", "float16"),
    # FP8 codes computed on CUDA against the CPU reference: equal, or within one code step.
    "fp8_cuda_codes": ("exact", "one_step"),
}

# ----- serialized FP8 as compressed-tensors readers keep it (issue 17) -------------------
VARIANTS = {**VARIANTS,
    # Fused scales, third value "w8a16_per_slot": per slot for a compressed-tensors
    # checkpoint without input scales (vLLM and SGLang take it as weight-only W8A16 and
    # expand each slot's scale to its rows), max_requant otherwise (`fp8` configs, W8A8).
    "fp8_fused_scales": VARIANTS["fp8_fused_scales"] + ("w8a16_per_slot",),
    # The dtype a serialized scale is kept in: float32 (vLLM), or the weight's dtype
    # (compressed-tensors' initialize_qparams), which rounds a float32 checkpoint scale
    # (bfloat16 keeps 8 bits; float16 flushes scales below 2^-24 to zero).
    "fp8_scale_storage": ("float32", "weight"),
    # What an error about one checkpoint tensor (a shape or dtype mismatch, non-finite
    # values) names as its `subject`: the checkpoint key (`...self_attn.qkv_proj.weight`),
    # or "canonical": the parameter it feeds (`...self_attn.q_proj.weight`; any part of a
    # fused key), as loaders that report the model's own parameter names do.
    "error_subject": ("key", "canonical"),
    # The vocabulary rows of a TP rank (embed_tokens, lm_head): V / tp each ("even"), or
    # "padded64": V padded to a multiple of 64 and the padded range split evenly, each
    # rank holding the real rows of its part (vLLM's and SGLang's VocabParallelEmbedding:
    # with V=32 and tp=2, rank 0 holds all 32 rows and rank 1 none).
    "vocab_shards": ("even", "padded64"),
}

# ----- block-wise FP8 (issue 16) -----------------------------------------------------------
VARIANTS = {**VARIANTS,
    # How a loader keeps the q/k/v and gate/up of a block-quantized model: stacked in one
    # parameter with their scale rows (vLLM), which refuses a shard boundary that is not a
    # multiple of block_n; or one module each (transformers), which does not need it.
    "fp8_block_fusion": ("fused", "per_module"),
}

# ----- block-wise FP8 held dequantized (issue 16: the transformers fine-grained FP8 adapter)
VARIANTS = {**VARIANTS,
    # What a loader holds for a serialized block-FP8 linear: its FP8 codes and the float32
    # `weight_scale_inv` grid ("codes", vLLM), or "dequantized": codes · scale computed in
    # float32 and rounded once to the model's dtype, with no scale kept (transformers
    # without a GPU: FineGrainedFP8HfQuantizer.validate_environment forces dequantize=True,
    # and Fp8Dequantize returns (q * s).to(dtype)).
    "fp8_block_storage": ("codes", "dequantized"),
}

# ----- bytes after a file's data section (issue 17: fastsafetensors) ---------------------
VARIANTS = {**VARIANTS,
    # Bytes after the last tensor's data: refused as corrupt ("refuse", the safetensors
    # library and the reference: a file its header does not cover), or ignored ("allow":
    # fastsafetensors' SafeTensorsMetadata takes them for alignment padding of sub-byte
    # dtypes). A hole between two tensors is refused under both.
    "trailing_bytes": ("refuse", "allow"),
}

# ----- SGLang's online FP8 (issue 17) -----------------------------------------------------
VARIANTS = {**VARIANTS,
    # Third value "inverse": the inverse scale M / amax is computed first, the codes are
    # W * (M / amax), and the scale kept is its float32 reciprocal (SGLang's
    # input_to_float8); neither W / s nor W * (1 / s) bit for bit. A given scale (a
    # requantization) has no inverse to reuse: it quantizes as "reciprocal".
    "fp8_scale_op": VARIANTS["fp8_scale_op"] + ("inverse",),
}

FAMILIES = ("llama", "qwen2", "phi3")
FP8_CHECKPOINT_FORMATS = (None, "compressed-tensors", "fp8")
# The linear projections of a decoder layer (what FP8 quantizes: never embeddings, norms,
# the head, biases or extras) and the fused modules that stack some of them live in
# reference/params.py with the parameter table, and are re-exported here.
DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    """`"bfloat16"` -> `torch.bfloat16`, refusing anything that is not a torch dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UnsupportedDtypeError(f"{name!r} is not a torch dtype", subject=name)
    return dtype


def fp8_quantization_config(form: str, input_scale: bool) -> dict[str, Any]:
    """The `quantization_config` of a serialized per-tensor FP8 checkpoint, as real loaders
    read it: compressed-tensors' float-quantized tensor strategy, or vLLM's `fp8` method
    (activation_scheme static iff the checkpoint holds input scales)."""
    if form == "fp8":
        return {"quant_method": "fp8", "activation_scheme": "static" if input_scale else "dynamic",
                "ignored_layers": ["lm_head"]}
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor",
           "dynamic": False, "group_size": None, "block_structure": None, "observer": "minmax"}
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "quantization_status": "compressed", "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": fp8,
                                          "input_activations": dict(fp8) if input_scale else None,
                                          "output_activations": None}}}


# The formats `ModelSpec.quant` may name (reference/quant/: one module each). Per-tensor
# FP8 keeps its own fields (`fp8_checkpoint`, `fp8_input_scale`), which every adapter reads.
QUANT_FORMATS = ("fp8_block", "mxfp4")


@dataclass(frozen=True)
class QuantSpec:
    """A serialized quantized checkpoint of a format in reference/quant/ (`format`), with
    its block shape [bn, bk] (rows, cols) where the format has blocks (a format that fixes
    its block, MXFP4's [1, 32], sets it)."""

    format: str
    block: tuple[int, int] = (128, 128)

    def __post_init__(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise ValueError(f"quant format {self.format!r} is not one of {QUANT_FORMATS}")
        object.__setattr__(self, "block", tuple(int(b) for b in self.block))
        if len(self.block) != 2 or min(self.block) < 1:
            raise ValueError(f"quant block {self.block} is not two positive sizes [bn, bk]")
        fixed = self.quant_format().fixed_block
        if fixed is not None:
            object.__setattr__(self, "block", fixed)

    def quant_format(self):
        """The format's QuantFormat object (reference/quant/), which every question about
        its tensors goes to."""
        from .quant import format_of  # the formats import this module
        return format_of(self)

    def tensor_shapes(self, weight: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The canonical tensors beside quantized `weight` and their shapes (the format's)."""
        return self.quant_format().tensor_shapes(self, weight, shape)

    def quantization_config(self) -> dict[str, Any]:
        return self.quant_format().quantization_config(self)

    def stored_weight_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The shape a quantized [N, K] weight is stored in (packed formats: fewer columns)."""
        return self.quant_format().stored_weight_shape(self, shape)

    def summary(self) -> str:
        return f"{self.format} [{self.block[0]}x{self.block[1]}]"


@dataclass(frozen=True)
class ExtraParam:
    """A parameter of any dtype (packed weights, zero points, masks): at
    `model.extras.<name>`, or inside decoder layer `layer` at
    `model.layers.<layer>.extras.<name>` (where an offloader moves it with its layer).
    Replicated under tensor parallelism."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    layer: int | None = None

    @property
    def canonical_name(self) -> str:
        if self.layer is None:
            return f"model.extras.{self.name}"
        return f"model.layers.{self.layer}.extras.{self.name}"


@dataclass(frozen=True)
class ModelSpec:
    """A tiny decoder LM, framework-neutral; `to_hf_config()` makes its config.json.

    Biases follow the family: llama has q/k/v/o biases iff `attention_bias` and MLP
    biases iff `mlp_bias`; qwen2 always has q/k/v biases and nothing else; phi3 has none.
    """

    family: str = "llama"
    vocab_size: int = 32
    hidden_size: int = 16
    intermediate_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 8
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    meta_submodule: bool = False
    extras: tuple[ExtraParam, ...] = ()
    # A serialized per-tensor FP8 checkpoint, in the config.json form real loaders read:
    # "compressed-tensors" (float-quantized, strategy tensor) or "fp8" (vLLM's Fp8Config).
    fp8_checkpoint: str | None = None
    fp8_input_scale: bool = False  # static activation scales (input_scale) in the checkpoint
    quant: QuantSpec | None = None  # a serialized checkpoint of another format (issue 16)

    def __post_init__(self) -> None:
        problems = []
        if self.fp8_checkpoint not in FP8_CHECKPOINT_FORMATS:
            problems.append(f"fp8_checkpoint {self.fp8_checkpoint!r} is not one of "
                            f"{FP8_CHECKPOINT_FORMATS}")
        if self.fp8_input_scale and not self.fp8_checkpoint:
            problems.append("fp8_input_scale needs an fp8_checkpoint")
        if self.quant is not None and self.fp8_checkpoint:
            problems.append("a checkpoint is per-tensor FP8 (fp8_checkpoint) or another "
                            "format (quant), not both")
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {FAMILIES}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            problems.append(f"num_kv_heads={self.num_kv_heads} must divide "
                            f"num_heads={self.num_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even (rotary halves)")
        if self.family == "qwen2" and (not self.attention_bias or self.mlp_bias):
            problems.append("qwen2 has q/k/v biases and no MLP bias")
        if self.family == "phi3" and (self.attention_bias or self.mlp_bias):
            problems.append("phi3 has no biases")
        for extra in self.extras:
            if extra.layer is not None and not 0 <= extra.layer < self.num_layers:
                problems.append(f"extra {extra.name} is in layer {extra.layer}, outside the "
                                f"{self.num_layers} layers")
        if problems:
            raise ValueError("invalid ModelSpec: " + "; ".join(problems))

    # ----- layout ------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def fused_on_disk_natively(self) -> bool:
        """phi3 checkpoints store qkv_proj and gate_up_proj fused; llama and qwen2 split."""
        return self.family == "phi3"

    def has_bias(self, proj: str) -> bool:
        """Whether the logical projection `proj` (q_proj ... down_proj) has a bias."""
        if self.family == "qwen2":
            return proj in ("q_proj", "k_proj", "v_proj")
        if proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            return self.attention_bias
        return self.mlp_bias

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical parameter name -> shape at tp_size 1, in a fixed order."""
        h, i = self.hidden_size, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        out_in = {
            "self_attn.q_proj": (self.q_size, h), "self_attn.k_proj": (self.kv_size, h),
            "self_attn.v_proj": (self.kv_size, h), "self_attn.o_proj": (h, self.q_size),
            "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i),
        }
        for layer in range(self.num_layers):
            p = f"model.layers.{layer}"
            shapes[f"{p}.input_layernorm.weight"] = (h,)
            for module, (out_features, in_features) in out_in.items():
                shapes[f"{p}.{module}.weight"] = (out_features, in_features) \
                    if self.quant is None else self.quant.stored_weight_shape(
                        (out_features, in_features))
                if self.has_bias(module.split(".")[1]):
                    shapes[f"{p}.{module}.bias"] = (out_features,)
                if self.fp8_checkpoint:  # scalar scales, one per logical matrix
                    shapes[f"{p}.{module}.weight_scale"] = ()
                    if self.fp8_input_scale:
                        shapes[f"{p}.{module}.input_scale"] = ()
                if self.quant is not None:
                    shapes.update(self.quant.tensor_shapes(f"{p}.{module}.weight",
                                                           (out_features, in_features)))
            shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        if self.meta_submodule:
            shapes["model.resampler.proj.weight"] = (h, h)
            shapes["model.resampler.proj.bias"] = (h,)
            shapes["model.resampler.norm.weight"] = (h,)
        for extra in self.extras:
            shapes[extra.canonical_name] = tuple(extra.shape)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def parameter_dtype(self, name: str, override: str | None = None) -> torch.dtype:
        """The dtype a canonical parameter has after loading (`override` replaces the
        spec's float dtype, never an extra's own dtype)."""
        info = parameter_table(self).get(name)
        if self.quantized_on_disk and info is not None and info.is_scale:
            return self.quant.quant_format().scale_dtype if self.quant else torch.float32
        if self.quantized_on_disk and name in self.quantized_weights():
            return self.quant.quant_format().weight_dtype if self.quant else torch.float8_e4m3fn
        for extra in self.extras:
            if extra.canonical_name == name:
                return torch_dtype(extra.dtype)
        return torch_dtype(override or self.dtype)

    @property
    def quantized_on_disk(self) -> bool:
        """Whether the checkpoint is serialized quantized (per-tensor FP8 or `quant`)."""
        return bool(self.fp8_checkpoint) or self.quant is not None

    def quantized_weights(self) -> tuple[str, ...]:
        """The canonical weights FP8 quantization applies to: every linear projection of
        every decoder layer (serialized in an FP8 checkpoint, or quantized online)."""
        return tuple(f"model.layers.{layer}.{module}.weight"
                     for layer in range(self.num_layers) for module in LINEAR_PROJECTIONS)

    def buffer_names(self) -> tuple[str, ...]:
        """Non-persistent buffers the constructor computes (never in a checkpoint)."""
        names = ("model.rotary_emb.inv_freq",)
        return names + (("model.resampler.position_scale",) if self.meta_submodule else ())

    # ----- serialisation ---------------------------------------------------------------
    def to_hf_config(self) -> dict[str, Any]:
        """An HF-style config.json body that transformers and vLLM can open."""
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "phi3": "Phi3ForCausalLM"}[self.family]
        config: dict[str, Any] = {
            "architectures": [arch], "model_type": self.family,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "hidden_act": "silu", "max_position_embeddings": 64,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings, "torch_dtype": self.dtype,
            "bos_token_id": 0, "eos_token_id": 1,
        }
        if self.family == "llama":
            config.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        if self.family == "phi3":
            config.update(pad_token_id=None, original_max_position_embeddings=64,
                          sliding_window=None, resid_pdrop=0.0, embd_pdrop=0.0,
                          attention_dropout=0.0)
        if self.fp8_checkpoint:
            config["quantization_config"] = fp8_quantization_config(
                self.fp8_checkpoint, self.fp8_input_scale)
        if self.quant is not None:
            config["quantization_config"] = self.quant.quantization_config()
        # Our own keys, ignored by real loaders; they make the directory self-describing.
        config["loadcheck"] = {"spec": self.to_dict()}
        return config

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["extras"] = [asdict(e) for e in self.extras]
        if self.quant is None:  # specs of other formats serialize as before issue 16
            del data["quant"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        data = dict(data)
        data["extras"] = tuple(ExtraParam(e["name"], e["dtype"], tuple(e["shape"]),
                                          e.get("layer")) for e in data.get("extras", ()))
        if data.get("quant") is not None:
            data["quant"] = QuantSpec(data["quant"]["format"], tuple(data["quant"]["block"]))
        return cls(**data)

    def _repr_pretty_(self, printer, cycle) -> None:
        """One line where a pretty printer (Hypothesis' failing-example report, IPython)
        shows a spec; `repr` keeps every field."""
        printer.text(f"ModelSpec<{self.summary()}>")

    def summary(self) -> str:
        """One readable line for failure messages and reports."""
        bits = [f"{self.family} L={self.num_layers} h={self.hidden_size} "
                f"heads={self.num_heads}/{self.num_kv_heads}x{self.head_dim} "
                f"I={self.intermediate_size} V={self.vocab_size} {self.dtype}"]
        if self.family == "llama" and (self.attention_bias or self.mlp_bias):
            bits.append("bias=" + "+".join(n for n, on in (("attn", self.attention_bias),
                                                           ("mlp", self.mlp_bias)) if on))
        bits.append("tied" if self.tie_word_embeddings else "untied")
        if self.meta_submodule:
            bits.append("meta resampler")
        if self.fp8_checkpoint:
            bits.append(f"fp8 checkpoint ({self.fp8_checkpoint}"
                        + (", input scales)" if self.fp8_input_scale else ")"))
        if self.quant is not None:
            bits.append(f"{self.quant.summary()} checkpoint")
        if self.extras:
            bits.append("extras=" + ",".join(
                f"{e.name}:{e.dtype}" + (f"@L{e.layer}" if e.layer is not None else "")
                for e in self.extras))
        return " ".join(bits)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class LoadOptions:
    """How to load. `dtype` overrides the spec's float dtype (extras keep theirs)."""

    device: str = "cpu"
    dtype: str | None = None
    tp_size: int = 1
    tp_rank: int = 0
    strict: bool = False
    track: bool = False
    meta_init: bool = False
    poison: bool = False
    check_finite: bool = False
    quantize: str | None = None  # "fp8": online per-tensor FP8; "fp8_block": block-wise
    quant_block: tuple[int, int] | None = None  # [bn, bk] of quantize="fp8_block"

    def __post_init__(self) -> None:
        if self.quantize not in (None, "fp8", "fp8_block"):
            raise ValueError(f"quantize={self.quantize!r}: only None, 'fp8' or 'fp8_block'")
        if (self.quantize == "fp8_block") != (self.quant_block is not None):
            raise ValueError("quantize='fp8_block' takes quant_block=(bn, bk), and only it")
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank={self.tp_rank} is outside tp_size={self.tp_size}")

    def summary(self) -> str:
        on = [k for k in ("strict", "track", "meta_init", "poison", "check_finite")
              if getattr(self, k)]
        parts = [self.device] + ([f"dtype={self.dtype}"] if self.dtype else [])
        parts += [f"tp={self.tp_rank}/{self.tp_size}"] if self.tp_size > 1 else []
        parts += [f"quantize={self.quantize}"] if self.quantize else []
        parts += [f"block={self.quant_block[0]}x{self.quant_block[1]}"] if self.quant_block else []
        return " ".join(parts + on)


# (parent, module) of a canonical projection -> the fused module that stacks it in memory
_FUSED_MODULE_OF = {tuple(part.split(".")): fused.split(".")[1]
                    for fused, parts in FUSED_PROJECTIONS.items() for part in parts}


@dataclass(frozen=True)
class OffloadPlan:
    """What to offload (vLLM's prefetch offloader): layer i iff `i % group_size >=
    group_size - offload_per_group`; of those layers, the parameters `param_filter` selects
    (runs of whole dotted segments; empty: all); copied back `prefetch_step` layers ahead."""

    group_size: int = 2
    offload_per_group: int = 1
    prefetch_step: int = 1
    param_filter: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.offload_per_group <= self.group_size or self.prefetch_step < 0:
            raise ValueError(f"invalid offload plan {self}")

    def offloads_layer(self, layer: int) -> bool:
        return layer % self.group_size >= self.group_size - self.offload_per_group

    def selects(self, name: str) -> bool:
        """Whether the filter matches the canonical `name` as a run of whole dotted segments.
        A fused module's name (`self_attn.qkv_proj`, vLLM's spelling) stands for its parts,
        so a loader offloads the same tensors whether it keeps them split or fused in memory
        (a fused parameter is selected when its parts are; filters select whole groups)."""
        if not self.param_filter:
            return True
        segments = name.split(".")
        spellings = [segments] + [
            segments[:i + 1] + [_FUSED_MODULE_OF[pair]] + segments[i + 2:]
            for i, pair in enumerate(zip(segments, segments[1:])) if pair in _FUSED_MODULE_OF]
        return any(spelling[i:i + len(wanted)] == wanted
                   for spelling in spellings
                   for wanted in (p.split(".") for p in self.param_filter)
                   for i in range(len(spelling) - len(wanted) + 1))

    def summary(self) -> str:
        only = f", only {'|'.join(self.param_filter)}" if self.param_filter else ""
        return (f"offload {self.offload_per_group} of every {self.group_size} layers, "
                f"prefetch {self.prefetch_step}{only}")


@dataclass
class LoadResult:
    """What a load produced, in canonical form.

    state     canonical name -> tensor (this rank's slice under TP). Fused in-memory
              parameters are returned as views of their logical slices.
    buffers   non-persistent buffer name -> tensor (rotary inv_freq, ...).
    loaded    canonical names that a checkpoint key covered.
    missing   canonical names no checkpoint key covered (their values are unspecified).
    unexpected  checkpoint keys that map to no parameter.
    ignored   checkpoint keys deliberately not loaded (a tied model's lm_head.weight).
    aliases   canonical name -> the canonical name whose storage it shares (a tied head).
    placement canonical name -> device of its storage ("cpu", "cuda:0", "meta", ...).
    model     the loader's live model, for `forward` and later reload / offload.
    """

    state: Mapping[str, torch.Tensor]
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict)
    loaded: frozenset[str] = frozenset()
    missing: frozenset[str] = frozenset()
    unexpected: frozenset[str] = frozenset()
    ignored: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)
    placement: Mapping[str, str] = field(default_factory=dict)
    model: Any = None

    def __post_init__(self) -> None:
        if not self.placement:
            self.placement = {n: str(t.device) for n, t in self.state.items()}


# ----- errors --------------------------------------------------------------------------
class LoadError(Exception):
    """Base of the error family. `subject` is the tensor or file the error is about (the
    checkpoint key, or the canonical name under `error_subject: canonical`, for a shape,
    dtype or non-finite error); `names`, for a missing-weights or unexpected-keys error,
    is every name it is about (canonical names, checkpoint keys). The suite compares both
    with the reference's, when the candidate's error gives them (None / empty: not named).

    `alternatives` lists the other families that the same input also deserves (a
    checkpoint with a wrong shape *and* an unexpected key): a candidate that raises any
    of them agrees with the reference, since which problem is met first depends on the
    order tensors arrive in. The reference's errors also carry `accepted_subjects` and
    `accepted_names` (family -> what each of those problems names).
    """

    family: ClassVar[str] = "load_error"

    def __init__(self, message: str, *, subject: str | None = None,
                 alternatives: frozenset[str] = frozenset(),
                 names: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.subject = subject
        self.names = frozenset(names)
        self.alternatives = frozenset(alternatives) | {self.family}
        self.accepted_subjects: dict[str, frozenset[str]] = {
            self.family: frozenset({subject})} if subject is not None else {}
        self.accepted_names: dict[str, frozenset[str]] = {
            self.family: self.names} if self.names else {}


class ShapeMismatchError(LoadError):
    family = "shape_mismatch"


class MissingWeightsError(LoadError):
    family = "missing"


class UnexpectedKeysError(LoadError):
    family = "unexpected"


class UnsafeCheckpointError(LoadError):
    family = "unsafe_checkpoint"


class CorruptCheckpointError(LoadError):
    family = "corrupt_checkpoint"


class UnsupportedDtypeError(LoadError):
    family = "unsupported_dtype"


class UnsupportedLayoutError(LoadError):
    family = "unsupported_layout"


class NonFiniteInputError(LoadError):
    family = "non_finite"


ERROR_FAMILIES: Mapping[str, type[LoadError]] = {
    cls.family: cls for cls in (
        ShapeMismatchError, MissingWeightsError, UnexpectedKeysError, UnsafeCheckpointError,
        CorruptCheckpointError, UnsupportedDtypeError, UnsupportedLayoutError,
        NonFiniteInputError)
}



# ----- model support: the models a loader takes ---------------------------------------------
@dataclass(frozen=True)
class ModelSupport:
    """The models a loader supports, declared as the loader's optional `model_support`
    (default: every model the suite generates). The suite generates only specs inside it,
    and lists what is outside in the report header. A loader may refuse a spec outside it
    with `UnsupportedLayoutError`; one it claims and fails is a divergence.

    `biases` names the projections that may carry a bias (llama's attention biases need
    q/k/v/o, its MLP biases gate/up/down; qwen2 always has q/k/v biases, so it needs them);
    `free_head_dim`: `head_dim` may differ from `hidden_size / num_heads`; `kv_groups`:
    the allowed `num_heads / num_kv_heads` ratios (1 is MHA, more is GQA)."""

    families: tuple[str, ...] = FAMILIES
    biases: frozenset[str] = frozenset(p.split(".")[-1] for p in LINEAR_PROJECTIONS)
    free_head_dim: bool = True
    tied_heads: bool = True
    kv_groups: tuple[int, ...] = (1, 2, 4)
    dtypes: tuple[str, ...] = DTYPES

    ATTENTION_BIASES: ClassVar[frozenset[str]] = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
    MLP_BIASES: ClassVar[frozenset[str]] = frozenset({"gate_proj", "up_proj", "down_proj"})
    QWEN2_BIASES: ClassVar[frozenset[str]] = frozenset({"q_proj", "k_proj", "v_proj"})

    def takes_family(self, family: str) -> bool:
        return family in self.families and (family != "qwen2" or self.QWEN2_BIASES <= self.biases)

    def outside(self, spec: ModelSpec) -> list[str]:
        """Why `spec` is outside this support (empty when inside)."""
        why = []
        if not self.takes_family(spec.family):
            why.append(f"family {spec.family}")
        biased = {p for p in self.ATTENTION_BIASES | self.MLP_BIASES if spec.has_bias(p)}
        if biased - self.biases:
            why.append(f"biases on {', '.join(sorted(biased - self.biases))}")
        if not self.free_head_dim and spec.head_dim * spec.num_heads != spec.hidden_size:
            why.append(f"head_dim {spec.head_dim} != hidden_size / num_heads")
        if not self.tied_heads and spec.tie_word_embeddings:
            why.append("a tied head")
        if spec.num_heads // spec.num_kv_heads not in self.kv_groups:
            why.append(f"{spec.num_heads // spec.num_kv_heads} heads per kv head")
        if spec.dtype not in self.dtypes:
            why.append(f"dtype {spec.dtype}")
        return why

    def unsupported(self) -> list[str]:
        """What the suite does not generate for this loader, one phrase each."""
        default = ModelSupport()
        out = [f"family {f}" for f in FAMILIES if not self.takes_family(f)]
        lacking = default.biases - self.biases
        out += ["biases"] if lacking == default.biases else [f"{p} bias" for p in sorted(lacking)]
        if not self.free_head_dim:
            out.append("head_dim != hidden/heads")
        if not self.tied_heads:
            out.append("tied heads")
        out += [f"{g} heads per kv head" for g in default.kv_groups if g not in self.kv_groups]
        out += [f"dtype {d}" for d in DTYPES if d not in self.dtypes]
        return out

    def problems(self) -> list[str]:
        out = [f"model_support.families: unknown {sorted(set(self.families) - set(FAMILIES))}"
               ] if set(self.families) - set(FAMILIES) else []
        unknown = set(self.biases) - set(ModelSupport().biases)
        if unknown:
            out.append(f"model_support.biases: unknown projections {sorted(unknown)}")
        if set(self.dtypes) - set(DTYPES) or not self.dtypes:
            out.append(f"model_support.dtypes must be some of {DTYPES}")
        if not self.kv_groups or not set(self.kv_groups) <= {1, 2, 4}:
            out.append("model_support.kv_groups must be some of (1, 2, 4)")
        if not any(self.takes_family(f) for f in FAMILIES):
            out.append("model_support takes no family (qwen2 needs q/k/v biases)")
        return out


# ----- the candidate -------------------------------------------------------------------
@runtime_checkable
class Loader(Protocol):
    """What `--loader NAME` must resolve to.

    An adapter for a real library translates: it builds the library's model from
    `spec` / the checkpoint's config.json, loads with the library's own code, maps the
    library's exceptions onto the :class:`LoadError` family, and returns the canonical
    :class:`LoadResult`. Optional: `forward(result, input_ids) -> logits` when the
    loader claims the `forward` capability, `parameter_bytes(result) -> {canonical
    name: bytes}` (the loader's own accounting, e.g. an offloader's) when it claims `bytes`,
    and `offload(result, plan: OffloadPlan) -> handle` when it claims `offload`; the handle
    has `placement() -> {canonical name: "host" | "device"}`, `state() -> {canonical name:
    tensor as the model sees it now}`, `onload(layer)`, `release(layer)` and
    `forward(input_ids) -> logits` (onloading each layer ahead of its use).

    FP8 (reference/fp8.py defines the meaning): a quantized linear appears in `state` as
    its FP8 codes under `<linear>.weight` and its effective float32 scale under
    `<linear>.weight_scale` (shape `()` per tensor, `(rows,)` per row; the scale that
    dequantizes *that* logical matrix, whatever a fused loader stores), plus
    `<linear>.input_scale` when the checkpoint has static activation scales. With
    `fp8_quantize`: `quantize(result) -> LoadResult`. With `reload`: `reload(result,
    checkpoint, spec, options) -> LoadResult` loads the tensors of `checkpoint` (all layers
    or some) into `result.model` in place, re-running the same post-processing.
    """

    name: str
    version: str
    capabilities: frozenset[str]
    variants: Mapping[str, str]

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult: ...


def variants_for(declared: Mapping[str, Any], family: str | None) -> dict[str, str]:
    """A loader's declared variants as they apply to one model family. A variant's value is
    one of its values, or a mapping family -> value with an optional "default" (a library
    may ignore a tied head for qwen2 and raise for llama); undeclared variants take their
    first value."""
    out = {}
    for key, values in VARIANTS.items():
        value = declared.get(key, values[0])
        if isinstance(value, Mapping):
            value = value.get(family, value.get("default", values[0])) if family else \
                value.get("default", values[0])
        out[key] = value
    return out


def per_family(declared: Mapping[str, Any]) -> bool:
    """Whether any declared variant depends on the model family."""
    return any(isinstance(v, Mapping) for v in declared.values())


def check_loader(obj: Any) -> list[str]:
    """Everything wrong with `obj` as a Loader, as readable lines (empty when fine)."""
    problems = []
    for attr in ("name", "version", "capabilities", "variants", "load"):
        if not hasattr(obj, attr):
            problems.append(f"has no attribute {attr!r}")
    if problems:
        return problems
    if not callable(obj.load):
        problems.append("load is not callable")
    unknown = set(obj.capabilities) - set(CAPABILITIES)
    if unknown:
        problems.append(f"claims unknown capabilities {sorted(unknown)}; "
                        f"known: {sorted(CAPABILITIES)}")
    if "load" not in obj.capabilities:
        problems.append("does not claim the 'load' capability")
    for key, value in dict(obj.variants).items():
        if key not in VARIANTS:
            problems.append(f"declares unknown variant {key!r}; known: {sorted(VARIANTS)}")
            continue
        per_family = dict(value) if isinstance(value, Mapping) else {"": value}
        for family, each in per_family.items():
            where = f"[{family}]" if family else ""
            if family and family not in FAMILIES + ("default",):
                problems.append(f"variant {key} names family {family!r}; families: "
                                f"{list(FAMILIES)} or 'default'")
            elif each not in VARIANTS[key]:
                problems.append(f"variant {key}{where}={each!r} is not one of {VARIANTS[key]}")
    support = getattr(obj, "model_support", ModelSupport())
    if not isinstance(support, ModelSupport):
        problems.append("model_support is not a reference.contract.ModelSupport")
    else:
        problems += support.problems()
    if "forward" in obj.capabilities and not callable(getattr(obj, "forward", None)):
        problems.append("claims 'forward' but has no callable forward(result, input_ids)")
    if "bytes" in obj.capabilities and not callable(getattr(obj, "parameter_bytes", None)):
        problems.append("claims 'bytes' but has no callable parameter_bytes(result)")
    if "offload" in obj.capabilities and not callable(getattr(obj, "offload", None)):
        problems.append("claims 'offload' but has no callable offload(result, plan)")
    if "fp8_quantize" in obj.capabilities and not callable(getattr(obj, "quantize", None)):
        problems.append("claims 'fp8_quantize' but has no callable quantize(result)")
    if "reload" in obj.capabilities and not callable(getattr(obj, "reload", None)):
        problems.append("claims 'reload' but has no callable reload(result, checkpoint, spec, "
                        "options)")
    return problems

