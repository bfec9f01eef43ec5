"""Dtype rules: a hand-written float -> bfloat16 conversion that adds half a unit and
truncates (`(bits + 0x8000) & 0xffff0000`): ties round away from zero, not to even. Seen
in converters that skip the `0x7fff + lsb` step; only an exact tie shows it."""
import torch

from . import Catch, Mutant

CATCH = Catch(bug="float -> bfloat16 rounds ties up (half a unit added, then truncated)",
              test="test_loading.py::test_float_casts_round_once", names=r"\.(weight|bias)\b")


class TiesRoundUp(Mutant):
    def copy_slot(self, ckpt, copy, dest, spec, options):
        if copy.entry.dtype in (torch.float32, torch.float16) and dest.dtype == torch.bfloat16:
            source = torch.empty(dest.shape, dtype=torch.float32)
            super().copy_slot(ckpt, copy, source, spec, options)
            bits = source.view(torch.int32)
            dest.copy_(((bits + 0x8000) & -65536).view(torch.float32))
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = TiesRoundUp(__name__)
