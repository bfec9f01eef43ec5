"""P11 (safetensors #401 / #586): a header parser that trusts data_offsets and shapes: no
range, overlap, aliasing or shape-by-size check, so lying headers load overlapping or
foreign bytes."""
import json
import struct
from pathlib import Path

import torch

from reference.checkpoint import Checkpoint, TensorEntry
from reference.dtypes import DTYPE_OF_CODE

from . import Catch, Mutant

CATCH = Catch(bug="trusts header offsets and shapes (safetensors #401, #586)",
              test="test_hostile.py::test_named_hostile_checkpoint_is_refused",
              names=r"\[critical\].*(overlap|data_offsets)")


def _lax_header(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header.pop("__metadata__", None)
    entries = {}
    for key, info in header.items():
        dtype = DTYPE_OF_CODE[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        nbytes = max(0, min(end - begin, len(raw) - 8 - length - begin))
        numel = nbytes // dtype.itemsize
        if shape and numel != torch.Size(shape).numel():
            shape = (numel,) + (() if len(shape) == 1 else ())
        entries[key] = TensorEntry(key, path.name, dtype, shape, 8 + length + begin, nbytes)
    return entries


class TrustsOffsets(Mutant):
    def open(self, checkpoint):
        directory = Path(checkpoint)
        single = directory / "model.safetensors"
        if (directory / "model.safetensors.index.json").exists() or not single.exists():
            return super().open(checkpoint)
        return Checkpoint(directory, _lax_header(single))


loader = TrustsOffsets(__name__)
