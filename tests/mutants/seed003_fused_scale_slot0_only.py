"""Seed 003 (vllm #39765, issue #39764; sglang #29151): a fused-on-disk FP8 checkpoint has
one weight_scale for the whole qkv_proj / gate_up_proj; the loader writes it to slot 0
only, and the other slots keep whatever the allocation held (torch.empty garbage), which
then corrupts max-scale requantization."""
from . import Catch, Mutant

CATCH = Catch(bug="fused-on-disk FP8 scale written to slot 0 only (vllm #39765)",
              test="test_fp8.py::test_serialized_fp8_matches_reference",
              names=r"slot [12] \((k|v|up)_proj\) of [\w.]+\): scale (differs: expected|never written)")


class FusedScaleSlotZeroOnly(Mutant):
    def plan(self, spec, entries, options):
        plan = super().plan(spec, entries, options)
        plan.copies = [c for c in plan.copies if not (
            c.entry.key.endswith("_scale") and c.entry.key.split(".")[-2] in
            ("qkv_proj", "gate_up_proj") and c.slot.canonical.split(".")[-2] not in
            ("q_proj", "gate_proj"))]
        return plan


loader = FusedScaleSlotZeroOnly(__name__)
