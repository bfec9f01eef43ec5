"""The fastsafetensors adapter: the reference's loading plan, with fastsafetensors reading
every header and every byte.

fastsafetensors is a reader, not a loader: vLLM's and SGLang's
`load_format="fastsafetensors"` hand it the shard files they chose and copy the tensors
it yields into their parameters. So the adapter is the reference loader with its file
access replaced, and nothing else:

- each safetensors header is parsed by fastsafetensors (`SafeTensorsFileLoader.add_filenames`,
  which runs `SafeTensorsMetadata.from_file`: its own JSON parse and offset validation);
  the reference's directory and index rules (shard names, symlinks, index against headers)
  run on the entries fastsafetensors reports;
- every tensor's bytes come from `copy_files_to_device()` (the `nogds` copier: pread into
  a host buffer) and `FilesBufferOnDevice.get_tensor`, then go into the reference model.

So what the suite can see is fastsafetensors' judgement of the files (what it refuses,
what it accepts, and the bytes it returns); key mapping, tensor parallel slicing, tracking
and FP8 post-processing are the reference's, and are not claimed beyond what exercises
the reader (docs/findings/fastsafetensors.md).

Errors: fastsafetensors raises bare `Exception`s whose message names the check
(`HeaderTooSmall`, `InvalidHeaderLength`, `InvalidOffset`, `TensorInvalidInfo`,
`MetadataIncompleteBuffer`), a ValueError for an unknown dtype or a bad shape, and the
JSON / UTF-8 decoders' errors; those map onto CorruptCheckpointError /
UnsupportedDtypeError naming the file. Anything else propagates: the suite reports it
as a crash of fastsafetensors.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from unittest import mock

import torch

import fastsafetensors
from fastsafetensors import SafeTensorsFileLoader, SingleGroup

import reference.checkpoint as reference_checkpoint
from reference.checkpoint import Checkpoint, TensorEntry, open_checkpoint
from reference.contract import CorruptCheckpointError, UnsupportedDtypeError
from reference.loading import ReferenceLoader

__all__ = ["FastsafetensorsLoader", "loader", "make_loader"]

# fastsafetensors' own dtype codes (st_types.DType) and the torch dtypes its torch
# framework gives them (frameworks/_torch.py dtype_convert).
_TORCH_DTYPE = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
                "I32": torch.int32, "I64": torch.int64, "F16": torch.float16,
                "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn}
# the names of fastsafetensors' header checks, as its messages spell them (common.py)
_HEADER_CHECKS = re.compile(r"HeaderTooSmall|HeaderTooLarge|InvalidHeaderLength|"
                            r"InvalidOffset|TensorInvalidInfo|MetadataIncompleteBuffer|"
                            r"UnexpectedEOF|shape must contain")
# open_checkpoint reads headers through a module global; the swap below is per call
_SWAP = threading.Lock()


def _map_header_error(exc: Exception, path: Path) -> Exception | None:
    """fastsafetensors' refusal of a header -> the error family, naming the file."""
    text = f"{path.name}: fastsafetensors: {type(exc).__name__}: {exc}"
    if isinstance(exc, ValueError) and "is not a valid DType" in str(exc):
        return UnsupportedDtypeError(text, subject=path.name)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) or \
            _HEADER_CHECKS.search(str(exc)):
        return CorruptCheckpointError(text, subject=path.name)
    return None


class FastsafetensorsCheckpoint(Checkpoint):
    """A checkpoint directory whose headers and bytes come from one fastsafetensors loader
    (`SafeTensorsFileLoader(SingleGroup(), device="cpu", nogds=True)`)."""

    def __init__(self, directory: Path, entries: dict[str, TensorEntry],
                 reader: SafeTensorsFileLoader):
        super().__init__(directory, entries)
        self._reader = reader
        self._buffer = None
        self._tensors: dict[str, torch.Tensor] = {}

    def _tensor(self, entry: TensorEntry) -> torch.Tensor:
        if self._buffer is None:  # every registered file into host memory, once
            self._buffer = self._reader.copy_files_to_device()
        # each key instantiated once: fastsafetensors frees a file's buffer when all of its
        # tensors have been instantiated (the tensors keep their own reference)
        if entry.key not in self._tensors:
            self._tensors[entry.key] = self._buffer.get_tensor(entry.key)
        return self._tensors[entry.key]

    def read(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
        tensor = self._tensor(entry)
        return tensor[rows[0]:rows[1]] if rows is not None else tensor

    def read_into(self, entry: TensorEntry, out: torch.Tensor,
                  rows: tuple[int, int] | None = None) -> torch.Tensor:
        source = self.read(entry, rows)
        if source.dtype != out.dtype or source.numel() != out.numel():
            raise ValueError(f"read_into({entry.key}): destination {tuple(out.shape)} "
                             f"{out.dtype} cannot hold {tuple(source.shape)} {source.dtype}")
        return out.copy_(source.reshape(out.shape))

    def map(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> None:
        return None  # no file mapping: every tensor is copied from fastsafetensors' buffer

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        self._reader.close()
        self._tensors.clear()
        super().close()


def _open(directory: str) -> FastsafetensorsCheckpoint:
    """The reference's directory and index rules, every header parsed by fastsafetensors."""
    reader = SafeTensorsFileLoader(SingleGroup(), device="cpu", nogds=True)

    def header_by_fastsafetensors(path: Path, trailing_bytes: str = "allow"
                                  ) -> dict[str, TensorEntry]:
        # fastsafetensors judges trailing bytes itself (it allows them: the declaration)
        name = str(path)
        try:
            reader.add_filenames({0: [name]})
        except Exception as exc:
            mapped = _map_header_error(exc, path)
            if mapped is None:
                raise
            raise mapped from exc
        metadata = reader.meta[name][0]
        entries = {}
        for key, frame in metadata.tensors.items():
            begin, end = frame.data_offsets
            dtype = _TORCH_DTYPE.get(frame.dtype.value)
            if dtype is None:
                raise UnsupportedDtypeError(f"{path.name}: tensor {key!r} has dtype "
                                            f"{frame.dtype.value}, which loadcheck does not "
                                            f"model", subject=key)
            entries[key] = TensorEntry(key, path.name, dtype, tuple(frame.shape),
                                       metadata.header_length + begin, end - begin)
        return entries

    try:
        with _SWAP, mock.patch.object(reference_checkpoint, "read_header",
                                      header_by_fastsafetensors):
            ckpt = open_checkpoint(directory)
    except BaseException:
        reader.close()
        raise
    return FastsafetensorsCheckpoint(ckpt.directory, ckpt.entries, reader)


class FastsafetensorsLoader(ReferenceLoader):
    """ReferenceLoader whose `open` step is fastsafetensors (see the module docstring)."""

    name = "fastsafetensors"
    # What goes through the reader: plain, sharded and fused-on-disk checkpoints, rank
    # slices of every tensor, extras of every dtype (int, bool, FP8 codes) and serialized
    # FP8 weights and scales. Not claimed: what only the reference's own code decides
    # (tracking, strict, poison, meta, forward, offload, reload, online FP8, bytes).
    capabilities = frozenset({"load", "sharded", "fused_on_disk", "tp", "extras",
                              "fp8_serialized"})

    def __init__(self) -> None:
        # SafeTensorsMetadata (common.py) accepts bytes after the last tensor as "alignment
        # padding" of sub-byte dtypes, on purpose, with a debug log (findings F6)
        super().__init__(variants={"trailing_bytes": "allow"}, map_weights=False)

    @property
    def version(self) -> str:
        return f"fastsafetensors {fastsafetensors.__version__} (nogds, cpu), torch {torch.__version__}"

    def open(self, checkpoint: str) -> FastsafetensorsCheckpoint:
        return _open(checkpoint)


loader = FastsafetensorsLoader()


def make_loader() -> FastsafetensorsLoader:
    return FastsafetensorsLoader()
