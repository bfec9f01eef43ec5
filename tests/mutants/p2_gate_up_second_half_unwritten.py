"""P2 (vllm #51125): a fused-on-disk gate_up weight fills only the gate half; the up half of
the allocation is never written (NaN downstream)."""
from . import Catch, Mutant

CATCH = Catch(bug="fused gate_up: second half never written (vllm #51125)",
              test="test_loading.py::test_load_matches_reference", names="up_proj")


class UpHalfUnwritten(Mutant):
    def copy_slot(self, ckpt, copy, dest, spec, options):
        if ".gate_up_proj." in copy.entry.key and ".up_proj." in copy.slot.canonical:
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = UpHalfUnwritten(__name__)
