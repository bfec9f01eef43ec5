"""Model specs: tiny llama / qwen2 / phi3 decoders that shrink toward the smallest model.

Every choice is a Hypothesis primitive whose simplest value is the smallest model
(one layer, one kv head, MHA, float32, no biases, untied), so a failing example shrinks
to the least model that still fails.
"""

from __future__ import annotations

from hypothesis import strategies as st

from reference.contract import DTYPES, FAMILIES, ExtraParam, ModelSpec

__all__ = ["model_specs", "extra_params", "EXTRA_DTYPES"]

# Dtypes of `model.extras.*`: packed quantized weights, zero points, group indices, masks
# and pre-quantized FP8 tensors.
EXTRA_DTYPES = ("int32", "int8", "uint8", "int64", "int16", "bool", "float8_e4m3fn",
                "float8_e5m2")


@st.composite
def extra_params(draw, max_count: int = 2) -> tuple[ExtraParam, ...]:
    count = draw(st.integers(0, max_count))
    extras = []
    for i in range(count):
        dtype = draw(st.sampled_from(EXTRA_DTYPES))
        # (16, 16) and (256,) hold every FP8 bit pattern once the data generator places them.
        shape = draw(st.sampled_from([(4,), (2, 3), (16, 16), (256,), ()]))
        extras.append(ExtraParam(f"{dtype.replace('float8_', 'fp8_')}_{i}", dtype, shape))
    return tuple(extras)


@st.composite
def model_specs(draw, *, families=FAMILIES, tp_size: int = 1, meta_submodule: bool = False,
                extras: bool = False, max_layers: int = 2, kv_heads=None) -> ModelSpec:
    """A tiny decoder that `tp_size` ranks can split (heads, kv heads, I and V divisible).
    `kv_heads` (a strategy) overrides the draw of num_kv_heads from 1, 2, 4."""
    family = draw(st.sampled_from(families))
    num_kv_heads = draw(kv_heads if kv_heads is not None else st.sampled_from([1, 2, 4]))
    group = draw(st.sampled_from([1, 2, 4]))  # heads per kv head: 1 is MHA, > 1 is GQA
    num_heads = num_kv_heads * max(group, tp_size // num_kv_heads if tp_size > num_kv_heads else 1)
    if family == "qwen2":
        attention_bias, mlp_bias = True, False
    elif family == "llama":
        attention_bias, mlp_bias = draw(st.booleans()), draw(st.booleans())
    else:
        attention_bias = mlp_bias = False
    return ModelSpec(
        family=family,
        vocab_size=tp_size * draw(st.integers(2, 8)) * 2,
        # transformers' LlamaConfig refuses hidden_size % num_heads != 0 even with head_dim set.
        hidden_size=draw(st.sampled_from([h for h in (8, 16, 32) if h % num_heads == 0])),
        intermediate_size=tp_size * draw(st.integers(1, 6)) * 2,
        num_layers=draw(st.integers(1, max_layers)),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=draw(st.sampled_from([2, 4, 8])),
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        meta_submodule=draw(st.booleans()) if meta_submodule else False,
        extras=draw(extra_params()) if extras else (),
    )
