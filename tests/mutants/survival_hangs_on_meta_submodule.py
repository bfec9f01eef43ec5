"""Survival: a loader that never returns on one layout (a model with a meta-built
submodule). The suite must give that example a timeout and a `hang` record, and go on."""
import time

from . import Catch, Mutant

CATCH = Catch(bug="never returns on models with a meta-built submodule",
              test="test_meta.py::test_meta_submodule_materialised_after_load",
              names=r"\[hang\]", options=("--candidate-timeout=2",))


class HangsOnMeta(Mutant):
    def load(self, checkpoint, spec, options):
        while spec.meta_submodule:
            time.sleep(0.05)  # waits forever (releasing the GIL, as a stuck I/O call would)
        return super().load(checkpoint, spec, options)


loader = HangsOnMeta(__name__)
