"""Per-tensor FP8, under its old import path: the implementation lives in
reference/quant/fp8_tensor.py (the `fp8` QuantFormat); everything importable from here
before issue 16 still is."""

from .quant.fp8_tensor import *  # noqa: F401,F403
from .quant.fp8_tensor import __all__  # noqa: F401
