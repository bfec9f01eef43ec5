"""P9 (vllm #56283): the offload setting is silently ignored: nothing leaves the device, and
an output-equality test alone would pass."""
from dataclasses import replace

from . import Catch, Mutant

CATCH = Catch(bug="offloading silently not applied (vllm #56283)",
              test="test_offload.py::test_offloaded_equals_resident_and_lives_on_the_host",
              names=r"storage on the device between uses, expected the host \(torch\.\w+\)")


class OffloadsNothing(Mutant):
    def offload(self, result, plan):
        return super().offload(result, replace(plan, param_filter=("no-such-module",)))


loader = OffloadsNothing(__name__)
