"""Model specs: tiny llama / qwen2 / phi3 decoders that shrink toward the smallest model.

Every choice is a Hypothesis primitive whose simplest value is the smallest model
(one layer, one kv head, MHA, float32, no biases, untied), so a failing example shrinks
to the least model that still fails.
"""

from __future__ import annotations

import torch
from collections import Counter

from hypothesis import assume, event, strategies as st

from reference.contract import DTYPES, FAMILIES, ExtraParam, ModelSpec, ModelSupport

__all__ = ["model_specs", "extra_params", "EXTRA_DTYPES", "ALL_DTYPES", "DTYPE_CLASSES",
           "any_dtype"]

# Dtypes of `model.extras.*`: packed quantized weights, zero points, group indices, masks
# and pre-quantized FP8 tensors.
EXTRA_DTYPES = ("int32", "int8", "uint8", "int64", "int16", "bool", "float8_e4m3fn",
                "float8_e5m2")


# Every dtype torch can hold a parameter in (for byte accounting): the ones safetensors
# cannot store (fnuz FP8, sub-byte ints, FP4 pairs) are never in a checkpoint, so they
# stay missing, which is what a byte count of an offloaded model meets too.
_DTYPE_CLASSES = {
    "float": ("float32", "float16", "bfloat16", "float64"),
    "fp8": ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
            "float8_e8m0fnu"),
    "int": ("int8", "int16", "int32", "int64"),
    "uint": ("uint8", "uint16", "uint32", "uint64"),
    "bool": ("bool",),
    "sub-byte": ("uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
                 "int1", "int2", "int3", "int4", "int5", "int6", "int7"),
    "fp4 pair": ("float4_e2m1fn_x2",),
}
DTYPE_CLASSES = {cls: tuple(n for n in names if isinstance(getattr(torch, n, None), torch.dtype))
                 for cls, names in _DTYPE_CLASSES.items()}
ALL_DTYPES = tuple(n for names in DTYPE_CLASSES.values() for n in names)
# A class first, then a member: sub-byte ints are 14 of the 33 names and must not crowd
# out the single FP4 or e8m0 dtype.
any_dtype = st.sampled_from(sorted(c for c, names in DTYPE_CLASSES.items() if names)).flatmap(
    lambda cls: st.sampled_from(DTYPE_CLASSES[cls]))


@st.composite
def extra_params(draw, max_count: int = 2, min_count: int = 0,
                 dtypes=st.sampled_from(EXTRA_DTYPES)) -> tuple[ExtraParam, ...]:
    """Extra parameters; `dtypes` is the strategy their dtype names come from."""
    count = draw(st.integers(min_count, max_count))
    extras = []
    for i in range(count):
        dtype = draw(dtypes)
        # (16, 16) and (256,) hold every FP8 bit pattern once the data generator places them.
        shape = draw(st.sampled_from([(4,), (2, 3), (16, 16), (256,), ()]))
        extras.append(ExtraParam(f"{dtype.replace('float8_', 'fp8_').replace('float4_', 'fp4_')}_{i}",
                                 dtype, shape))
    return tuple(extras)


def _placed(draw, extras: tuple[ExtraParam, ...], layers: int) -> tuple[ExtraParam, ...]:
    """Each extra at the top (model.extras) or, when `layers`, in a drawn decoder layer."""
    if not layers:
        return extras
    return tuple(ExtraParam(e.name, e.dtype, e.shape,
                            draw(st.one_of(st.integers(0, layers - 1), st.none())))
                 for e in extras)


# How many drawn specs had a feature left out because the loader does not support it,
# per feature, in this process (the suite records it at the end of a run, so a report
# says what was not tested).
NOT_GENERATED: Counter[str] = Counter()


def _left_out(feature: str) -> None:
    NOT_GENERATED[feature] += 1
    event(f"outside model support: {feature}")


def _supported(drawn: bool, supported: bool, feature: str) -> bool:
    if drawn and not supported:
        _left_out(feature)
        return False
    return drawn


@st.composite
def model_specs(draw, *, families=FAMILIES, tp_size: int = 1, meta_submodule: bool = False,
                extras: bool = False, max_layers: int = 2, kv_heads=None,
                extra_strategy=None, extras_in_layers: bool = False,
                support: ModelSupport = ModelSupport()) -> ModelSpec:
    """A tiny decoder that `tp_size` ranks can split (heads, kv heads and I divisible; V
    too, or one short of it: loaders that pad the vocabulary take it, others refuse it).
    `kv_heads` (a strategy) overrides the draw of num_kv_heads from 1, 2, 4;
    `extras_in_layers` places each extra in a drawn decoder layer (or at the top).
    Only specs inside `support` (the loader's declared model support): a feature it lacks
    is drawn as usual and then left out, with a Hypothesis event saying so
    (`--hypothesis-show-statistics` counts them), so the draws stay those of a full run."""
    family = draw(st.sampled_from([f for f in families if support.takes_family(f)]))
    num_kv_heads = draw(kv_heads if kv_heads is not None else st.sampled_from([1, 2, 4]))
    # heads per kv head: 1 is MHA, > 1 is GQA
    group = draw(st.sampled_from([g for g in (1, 2, 4) if g in support.kv_groups]))
    num_heads = num_kv_heads * max(group, tp_size // num_kv_heads if tp_size > num_kv_heads else 1)
    assume(num_heads // num_kv_heads in support.kv_groups)  # only tp can force another ratio
    if family == "qwen2":
        attention_bias, mlp_bias = True, False
    elif family == "llama":
        attention_bias = _supported(draw(st.booleans()), support.ATTENTION_BIASES <= support.biases,
                                    "attention biases")
        mlp_bias = _supported(draw(st.booleans()), support.MLP_BIASES <= support.biases,
                              "MLP biases")
    else:
        attention_bias = mlp_bias = False
    # Drawn in this order on purpose: the order fixes pr's derandomized sequences, which
    # tests/test_strategies.py and the mutant budgets were measured on.
    vocab_size = tp_size * draw(st.integers(2, 8)) * 2
    # transformers' LlamaConfig refuses hidden_size % num_heads != 0 even with head_dim set.
    hidden_size = draw(st.sampled_from([h for h in (8, 16, 32) if h % num_heads == 0 and (
        support.free_head_dim or h // num_heads % 2 == 0)]))
    intermediate_size = tp_size * draw(st.integers(1, 6)) * 2
    num_layers = draw(st.integers(1, max_layers))
    if tp_size > 1:  # V % tp != 0: vLLM and SGLang pad the vocabulary (vocab_shards)
        vocab_size -= draw(st.sampled_from((0, 0, 0, 1)))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    if not support.free_head_dim and head_dim != hidden_size // num_heads:
        _left_out("head_dim != hidden/heads")
        head_dim = hidden_size // num_heads
    tie_word_embeddings = _supported(draw(st.booleans()), support.tied_heads, "tied heads")
    dtype = draw(st.sampled_from([d for d in DTYPES if d in support.dtypes]))
    meta = draw(st.booleans()) if meta_submodule else False
    drawn_extras = _placed(draw, draw(extra_strategy if extra_strategy is not None
                                      else extra_params()),
                           num_layers if extras_in_layers else 0) if extras else ()
    return ModelSpec(
        family=family, vocab_size=vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, attention_bias=attention_bias,
        mlp_bias=mlp_bias, tie_word_embeddings=tie_word_embeddings, dtype=dtype,
        meta_submodule=meta, extras=drawn_extras,
    )
