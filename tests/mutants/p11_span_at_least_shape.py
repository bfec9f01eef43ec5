"""P11: a header parser that checks only that a tensor's byte span holds its shape (span >=
shape x itemsize) and reads the first bytes: a span larger than the shape needs loads
(safetensors refuses it: the bytes belong to no tensor, or to a different shape)."""
import json
import math
import struct
from pathlib import Path

from reference.checkpoint import Checkpoint, TensorEntry
from reference.contract import INDEX_FILE, SINGLE_FILE, CorruptCheckpointError
from reference.dtypes import DTYPE_OF_CODE

from . import Catch, Mutant

CATCH = Catch(bug="header span only checked to be large enough, not equal to the shape's bytes",
              test="test_loading.py::test_shape_mismatch_is_an_error",
              names=r"data_offsets span")


def lax_header(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header.pop("__metadata__", None)
    entries = {}
    for key, info in header.items():
        dtype, (begin, end) = DTYPE_OF_CODE[info["dtype"]], info["data_offsets"]
        nbytes = math.prod(info["shape"]) * dtype.itemsize
        if end - begin < nbytes:
            raise CorruptCheckpointError(f"{path.name}: {key} is short", subject=key)
        entries[key] = TensorEntry(key, path.name, dtype, tuple(info["shape"]),
                                   8 + length + begin, nbytes)
    return entries


class SpanAtLeastShape(Mutant):
    def open(self, checkpoint):
        directory = Path(checkpoint)
        if (directory / INDEX_FILE).exists():
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
            entries = {}
            for name in sorted(set(weight_map.values())):
                entries.update({k: e for k, e in lax_header(directory / name).items()
                                if weight_map.get(k) == name})
        else:
            entries = lax_header(directory / SINGLE_FILE)
        return Checkpoint(directory, entries)


loader = SpanAtLeastShape(__name__)
