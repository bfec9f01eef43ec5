"""P6 in quantized modules (vllm #57108: tracking on, nothing checked on quantized layers):
every weight_scale / input_scale is exempt from tracking, so a checkpoint without one
loads with the scale slot never written and nothing reported."""
from . import Catch, Mutant

CATCH = Catch(bug="FP8 scales exempt from weight tracking (vllm #57108)",
              test="test_fp8.py::test_missing_scale_is_reported",
              names=r"weight_scale")


class ScalesExemptFromTracking(Mutant):
    def exempt_from_tracking(self, spec, name):
        return name.endswith("_scale")


loader = ScalesExemptFromTracking(__name__)
