"""The parameter table: what each canonical parameter of a spec *is* (its role, layer,
linear module, fused group and slot, TP split, and the quantization tensors beside it),
computed once per spec, so that nobody decides it by parsing names. Importable from
`reference.contract` (which re-exports it), as are the two tables it is built from.

Nothing here knows about Hypothesis or pytest.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .contract import ModelSpec

__all__ = ["LINEAR_PROJECTIONS", "FUSED_PROJECTIONS", "ParamInfo", "parameter_table"]

# The linear projections of a decoder layer: what FP8 quantizes (never embeddings, norms,
# the head, biases or extras).
LINEAR_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# fused module -> the logical modules stacked in its rows, in order (vLLM's qkv_proj and
# gate_up_proj; phi3's checkpoint layout). The one table: names.py, contract.py and the
# parameter table read it.
FUSED_PROJECTIONS: Mapping[str, tuple[str, ...]] = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}

_ROLE_OF_SUFFIX = {"weight": "linear_weight", "bias": "linear_bias",
                   "weight_scale": "weight_scale", "input_scale": "input_scale",
                   "weight_scale_inv": "block_scale"}
_TOP_LEVEL_ROLES = {"model.embed_tokens.weight": "embedding", "lm_head.weight": "head",
                    "model.norm.weight": "norm"}
_COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


@dataclass(frozen=True)
class ParamInfo:
    """What one canonical parameter of a spec is, so that nobody parses its name.

    role        embedding, head, norm, linear_weight, linear_bias, weight_scale,
                input_scale, block_scale (a grid of scales that splits with its weight: block
                FP8's weight_scale_inv, MXFP4's weight_scale), extra or resampler
    layer       its decoder layer (None outside the layers)
    module      its linear projection (`self_attn.q_proj`), None for others
    fused       the fused module that stacks it (`self_attn.qkv_proj`) and its `slot` there
    tp_dim      the dimension tensor parallelism splits (0: rows, 1: columns; None:
                replicated; a block scale grid splits with its weight)
    quant       the quantization tensors beside a quantized weight (its scales)
    of          for a quantization tensor, the weight it belongs to
    """

    name: str
    role: str
    layer: int | None = None
    module: str | None = None
    fused: str | None = None
    slot: int | None = None
    tp_dim: int | None = None
    quant: tuple[str, ...] = ()
    of: str | None = None

    @property
    def is_scale(self) -> bool:
        return self.role in ("weight_scale", "input_scale", "block_scale")


def _layer_param(spec: "ModelSpec", name: str, scales: Mapping[str, str]) -> ParamInfo:
    layer, rest = name[len("model.layers."):].split(".", 1)
    module, _, suffix = rest.rpartition(".")
    if module not in LINEAR_PROJECTIONS:  # norms and in-layer extras
        role = "extra" if module == "extras" or module.startswith("extras.") else "norm"
        return ParamInfo(name, role, int(layer))
    fused = next(((f, parts.index(module)) for f, parts in FUSED_PROJECTIONS.items()
                  if module in parts), (None, None))
    proj = module.split(".")[1]
    role = _ROLE_OF_SUFFIX[suffix]
    if spec.quant is not None and suffix == spec.quant.quant_format().scale_suffix:
        role = "block_scale"  # the format's scale grid (MXFP4's E8M0 bytes), not one scalar
    weight = f"model.layers.{layer}.{module}.weight"
    if role in ("weight_scale", "input_scale"):
        tp_dim = None  # per-tensor scales are replicated
    elif role == "linear_bias":
        tp_dim = 0 if proj in _COLUMN_PARALLEL else None
    else:
        tp_dim = 0 if proj in _COLUMN_PARALLEL else 1
    quant = tuple(n for n, w in scales.items() if w == name) if role == "linear_weight" else ()
    return ParamInfo(name, role, int(layer), module, fused[0], fused[1], tp_dim, quant,
                     weight if role in ("weight_scale", "input_scale", "block_scale") else None)


def parameter_table(spec: "ModelSpec") -> Mapping[str, ParamInfo]:
    """canonical name -> ParamInfo for every parameter of `spec` (its parameter_shapes),
    computed once per spec: the one source adapters and the suite read instead of
    parsing names (`endswith("_scale")`, `split(".")[-2]`)."""
    table = _TABLES.get(spec)
    if table is not None:
        return table
    names = list(spec.parameter_shapes())
    scales = {n: n[: n.index(".weight") + len(".weight")] for n in names
              if n.startswith("model.layers.")
              and n.endswith((".weight_scale", ".weight_scale_inv"))
              and ".extras." not in n}
    scales.update({n: n[: -len("input_scale")] + "weight" for n in names
                   if n.endswith(".input_scale") and ".extras." not in n})
    extras = {e.canonical_name: e.layer for e in spec.extras}
    table = {}
    for name in names:
        if name in extras:
            table[name] = ParamInfo(name, "extra", extras[name])
        elif name.startswith("model.layers."):
            table[name] = _layer_param(spec, name, scales)
        elif name.startswith("model.resampler."):
            table[name] = ParamInfo(name, "resampler")
        else:
            role = _TOP_LEVEL_ROLES[name]
            table[name] = ParamInfo(name, role, tp_dim=0 if role != "norm" else None)
    if len(_TABLES) > 256:  # specs are small and frozen; keep the cache bounded
        _TABLES.clear()
    _TABLES[spec] = table = MappingProxyType(table)
    return table


_TABLES: dict = {}
