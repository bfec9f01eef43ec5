"""Dtype rules: a float tensor loaded into an integer / bool / FP8 parameter is silently
cast instead of refused."""
from . import Catch, Mutant
from reference import loading
from reference.dtypes import can_cast

CATCH = Catch(bug="float tensor silently cast into an int / bool / FP8 parameter",
              test="test_loading.py::test_dtype_rules", names=r"model\.extras\.")


class CastsAnything(Mutant):
    def plan(self, spec, entries, options):
        original = loading.can_cast
        loading.can_cast = lambda source, target: True
        try:
            return super().plan(spec, entries, options)
        finally:
            loading.can_cast = original

    def copy_slot(self, ckpt, copy, dest, spec, options):
        if copy.entry.dtype != dest.dtype and not can_cast(copy.entry.dtype, dest.dtype):
            dest.copy_(ckpt.read(copy.entry).reshape(dest.shape).to(dest.dtype))
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = CastsAnything(__name__)
