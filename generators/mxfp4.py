"""MXFP4 cases: serialized MXFP4 checkpoints (reference/quant/mxfp4.py) built on the ordinary
load cases (every layout, shard count, TP rank and option a candidate claims is drawn).

Codes: the packed weights are seeded bytes, every one of the 256 byte patterns first where a
matrix has room (so all 16 codes in both nibbles), random bytes after. Scales: E8M0 bytes
over 2 .. 252 (`checkpoints.mxfp4_scale_bytes`: every code times every scale is a normal
float32, both ends in every matrix), never 0xFF (NaN, and the poison pattern). Shapes: the
drawn tiny models have rows of 8 .. 32 input elements, so most groups are partial (the
format allows a last group under 32); a "32-aligned" draw resizes the model so every
matrix's input columns, and under TP every row-parallel rank's, are whole groups (one or
two per rank), which is the only layout a TP split can hold (the others are refused).
"""

from __future__ import annotations

from dataclasses import replace
from math import lcm

from hypothesis import strategies as st

from reference.contract import ModelSpec, ModelSupport, QuantSpec
from reference.names import layout_keys
from reference.quant.mxfp4 import GROUP, layout_problems
from .cases import LoadCase, load_cases

__all__ = ["aligned_spec", "mxfp4_cases"]


def aligned_spec(spec: ModelSpec, tp_size: int, groups: int) -> ModelSpec:
    """`spec` resized so that each rank's input columns of o_proj and down_proj are
    `groups` whole MXFP4 groups at `tp_size` (and hidden = heads x head_dim, the form
    every family's config accepts); heads, kv heads and the rest are kept."""
    unit = GROUP * tp_size * groups
    head_dim = lcm(spec.num_heads, unit) // spec.num_heads
    return replace(spec, head_dim=head_dim, hidden_size=spec.num_heads * head_dim,
                   intermediate_size=unit)


@st.composite
def mxfp4_cases(draw, capabilities: frozenset[str], *, device: str = "cpu", tp: bool = False,
                aligned: bool = False, wrong_scale_shape: bool = False,
                fused_on_disk: bool | None = None, forward: bool = False,
                support: ModelSupport = ModelSupport()) -> LoadCase:
    """A serialized MXFP4 checkpoint and options within `capabilities`, allocations poisoned
    where claimed. `aligned` (or a drawn half of the TP cases) resizes the model to whole
    groups per rank; otherwise a TP split inside a group is drawn, which must be refused.
    `fused_on_disk` forces the layout; `wrong_scale_shape` writes one weight_scale with an
    extra row; `forward` draws a float32 model whose scales stay in 2^-7 .. 2^0 (weights
    within ±6, so logits are finite and compare at float32's tolerance)."""
    base = draw(load_cases(capabilities, device=device, tp=tp, support=support),
                label="base case")
    spec, tp_size = base.plan.spec, base.options.tp_size
    if aligned or (tp_size > 1 and draw(st.booleans(), label="32-aligned")):
        spec = aligned_spec(spec, tp_size, draw(st.sampled_from((1, 2)), label="groups per rank"))
    spec = replace(spec, quant=QuantSpec("mxfp4"))
    fused = base.plan.fused if fused_on_disk is None else fused_on_disk
    if forward and "float32" in support.dtypes:
        spec = replace(spec, dtype="float32")
    plan = replace(base.plan, spec=spec, fused=fused,
                   mxfp4_scale_range=(120, 127) if forward else None)
    options = replace(base.options, dtype=None) if forward else base.options
    if wrong_scale_shape:
        scales = sorted(k for k in layout_keys(spec, plan.fused) if k.endswith(".weight_scale"))
        plan = replace(plan, wrong_shape=(draw(st.sampled_from(scales), label="wrong shape"),))
    assert not aligned or not layout_problems(spec, tp_size)
    return LoadCase(plan, replace(options, poison="poison" in capabilities))
