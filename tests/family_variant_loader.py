"""A loader whose behaviour depends on the model family, as real libraries' does: a
checkpoint `lm_head.weight` in a tied model is ignored for qwen2 and an unexpected key for
the other families. It declares so per family (`tied_checkpoint_head`), and the suite must
judge it by those values. `FLAT_DECLARATION` (set by the test through an environment
variable) makes it declare one value for every family instead: the suite must catch that."""

import os

from reference.loading import ReferenceLoader

FLAT = os.environ.get("LOADCHECK_TEST_FLAT_DECLARATION") == "1"


class PerFamilyHead:
    name = "per-family-head"
    version = "1"

    def __init__(self):
        self.capabilities = ReferenceLoader.capabilities
        self.variants = {"tied_checkpoint_head": "ignore" if FLAT else
                         {"qwen2": "ignore", "default": "unexpected"}}
        # two plain loaders, one per behaviour: nothing of the reference's per-family logic
        self._ignore = ReferenceLoader(variants={"tied_checkpoint_head": "ignore"})
        self._unexpected = ReferenceLoader(variants={"tied_checkpoint_head": "unexpected"})

    def _for(self, spec):
        return self._ignore if spec.family == "qwen2" else self._unexpected

    def load(self, checkpoint, spec, options):
        return self._for(spec).load(checkpoint, spec, options)

    def __getattr__(self, name):  # forward, parameter_bytes, offload, ...: family-free
        return getattr(self._ignore, name)


loader = PerFamilyHead()
