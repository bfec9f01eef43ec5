"""P1: splitting a fused-on-disk qkv weight, v is read from k's rows (a copy-paste offset)."""
from dataclasses import replace

from reference.names import KeyTarget

from . import Catch, Mutant

CATCH = Catch(bug="fused qkv split reads v from k's rows",
              test="test_loading.py::test_split_and_fused_on_disk_agree", names="v_proj")


class VReadsKRows(Mutant):
    def key_table(self, spec):
        table = dict(super().key_table(spec))
        for key, target in table.items():
            if ".qkv_proj." in key:
                q, k, v = target.slots
                table[key] = KeyTarget(target.shape, (q, k, replace(v, start=k.start, stop=k.stop)))
        return table


loader = VReadsKRows(__name__)
