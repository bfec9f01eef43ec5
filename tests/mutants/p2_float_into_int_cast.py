"""Dtype rules: a float tensor loaded into an integer / bool / FP8 parameter is silently
cast instead of refused."""
from reference.dtypes import can_cast

from . import Catch, Mutant

CATCH = Catch(bug="float tensor silently cast into an int / bool / FP8 parameter",
              test="test_loading.py::test_dtype_rules", names=r"model\.extras\.")


class CastsAnything(Mutant):
    def accepts_dtype(self, source, target):
        return True  # the bug: everything converts

    def copy_slot(self, ckpt, copy, dest, spec, options):
        if copy.entry.dtype != dest.dtype and not can_cast(copy.entry.dtype, dest.dtype):
            dest.copy_(ckpt.read(copy.entry).reshape(dest.shape).to(dest.dtype))
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = CastsAnything(__name__)
