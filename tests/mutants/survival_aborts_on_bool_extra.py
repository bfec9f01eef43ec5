"""Survival: a loader that aborts the interpreter (SIGABRT, as a failed C++ assertion does)
on one layout (a bool parameter). Only --isolate survives it: the suite must record a
`crash` for that example and finish the run."""
import os

from . import Catch, Mutant

CATCH = Catch(bug="aborts the process on a bool parameter",
              test="test_loading.py::test_dtype_rules", names=r"\[crash\].*SIGABRT", options=("--isolate",))


class AbortsOnBool(Mutant):
    def load(self, checkpoint, spec, options):
        if any(e.dtype == "bool" for e in spec.extras):
            os.abort()
        return super().load(checkpoint, spec, options)


loader = AbortsOnBool(__name__)
