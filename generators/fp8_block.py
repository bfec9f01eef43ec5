"""Block-wise FP8 cases: serialized block FP8 checkpoints and float checkpoints for online
block quantization, built on the ordinary load cases (every layout, shard count, TP rank
and option a candidate claims is still drawn).

Blocks are small, so a tiny model has several per matrix: 2x4 and 4x8 tile the drawn
sizes evenly (even head_dim, even I); 3x4, 2x3 and 1x3 leave partial edge blocks (rows,
columns or both) and put fused shard boundaries inside a block (which a loader that
stacks q/k/v must refuse). Serialized scales span 2^-20 .. 2^10; every finite code is
drawn. Online checkpoints scale their weights by the per-tensor gains and may hold a zero
block inside a non-zero matrix.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from reference.contract import ModelSupport, QuantSpec
from reference.names import layout_keys
from reference.quant.fp8_block import layout_problems
from .cases import LoadCase, load_cases
from .fp8 import WEIGHT_GAINS

__all__ = ["BLOCKS", "serialized_block_cases", "online_block_cases"]

# [bn, bk]: even tilings first (they shrink there), then partial edges and misaligned shards
BLOCKS = ((2, 4), (4, 8), (3, 4), (2, 3), (1, 3))


def _fuses_on_disk(spec, block) -> bool:
    """Whether a fused-on-disk checkpoint can hold this block layout: one scale row per
    block row of the fused tensor needs every shard boundary on a block boundary."""
    return not layout_problems(spec, block, 1, "fused")


@st.composite
def serialized_block_cases(draw, capabilities: frozenset[str], *, device: str = "cpu",
                           tp: bool = False, wrong_scale_shape: bool = False,
                           fused_on_disk: bool | None = None, aligned: bool = False,
                           support: ModelSupport = ModelSupport()) -> LoadCase:
    """A serialized block FP8 checkpoint (`quant_method: fp8`, weight_block_size) and options
    within `capabilities`, allocations poisoned where claimed. Fused on disk only where the
    shard boundaries are whole blocks (`fused_on_disk` forces the layout, and then an
    aligned block); `aligned` draws only blocks every layout and this TP size can hold;
    `wrong_scale_shape` writes one weight_scale_inv with an extra block row."""
    base = draw(load_cases(capabilities, device=device, tp=tp, support=support),
                label="base case")
    spec, tp_size = base.plan.spec, base.options.tp_size
    # a natively fused (phi3) checkpoint is split on disk for a misaligned block: only for
    # a loader that reads the non-native layout
    keep_native = base.plan.fused and "fused_on_disk" not in capabilities

    def fits(b) -> bool:
        if keep_native and not _fuses_on_disk(spec, b):
            return False
        return not (aligned or fused_on_disk) or (
            _fuses_on_disk(spec, b) and not layout_problems(spec, b, tp_size, "fused"))
    blocks = [b for b in BLOCKS if fits(b)] or [(1, 1)]
    block = draw(st.sampled_from(blocks), label="block")
    spec = replace(spec, quant=QuantSpec("fp8_block", block))
    fused = base.plan.fused if fused_on_disk is None else fused_on_disk
    plan = replace(base.plan, spec=spec, fused=fused and _fuses_on_disk(spec, block))
    if wrong_scale_shape:
        scales = sorted(k for k in layout_keys(spec, plan.fused) if k.endswith("_scale_inv"))
        plan = replace(plan, wrong_shape=(draw(st.sampled_from(scales), label="wrong shape"),))
    return LoadCase(plan, replace(base.options, poison="poison" in capabilities))


@st.composite
def online_block_cases(draw, capabilities: frozenset[str], *, device: str = "cpu",
                       tp: bool = False, aligned: bool = False,
                       support: ModelSupport = ModelSupport()) -> LoadCase:
    """A float checkpoint loaded with online block FP8 quantization (a drawn block), its
    linear weights multiplied by a drawn gain, up to two of them with a zero block."""
    base = draw(load_cases(capabilities, device=device, tp=tp, support=support),
                label="base case")
    spec, tp_size = base.plan.spec, base.options.tp_size
    blocks = [b for b in BLOCKS if not aligned or not layout_problems(spec, b, tp_size, "fused")]
    block = draw(st.sampled_from(blocks or [(1, 1)]), label="block")
    weights = spec.quantized_weights()
    plan = replace(base.plan, weight_gain=draw(st.sampled_from(WEIGHT_GAINS), label="gain"),
                   zero_blocks=tuple(draw(st.lists(st.sampled_from(weights), max_size=2,
                                                   unique=True), label="zero blocks")))
    return LoadCase(plan, replace(base.options, quantize="fp8_block", quant_block=block))
