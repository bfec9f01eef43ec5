"""Hostile checkpoints: a fixed, named corpus and byte-level corruptions of valid ones.

Each named case starts from a small valid checkpoint and breaks one thing: a shard name
that leaves the directory, an index that disagrees with its files, a safetensors header
that lies about offsets, lengths, shapes or dtypes, a pickle posing as a checkpoint, NaN
where finite values are required. Files that a naive loader would follow out of the
directory really exist (with other values), so following them is observable, not just
an error.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from hypothesis import strategies as st

from reference.checkpoint import write_safetensors
from reference.contract import INDEX_FILE, SINGLE_FILE, LoadOptions, ModelSpec
from .checkpoints import CheckpointPlan
from .unpickling import UnpicklingMarker, marker_path

__all__ = ["HostileCase", "HOSTILE_CASES", "Corruption", "corruptions", "OUTSIDE_FILE"]

BASE_SPEC = ModelSpec(family="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4)
OUTSIDE_FILE = "outside.safetensors"  # written beside (not inside) the checkpoint directory


@dataclass(frozen=True)
class HostileCase:
    name: str
    family: str                         # what the reference raises
    why: str                            # one line: what is wrong with it
    write: Callable[[Path], None]       # writes the checkpoint into the directory
    needs: frozenset[str] = frozenset({"load"})
    options: LoadOptions = field(default_factory=LoadOptions)
    spec: ModelSpec = BASE_SPEC

    def summary(self) -> str:
        return f"hostile checkpoint {self.name!r}: {self.why}"


# ----- building blocks ------------------------------------------------------------------
def _valid(directory: Path, shards: int = 1) -> None:
    CheckpointPlan(BASE_SPEC, shards=shards, data_seed=7).write(directory)


def _index(directory: Path) -> dict:
    return json.loads((directory / INDEX_FILE).read_text())


def _write_index(directory: Path, index: dict) -> None:
    (directory / INDEX_FILE).write_text(json.dumps(index))


def _retarget_first_key(directory: Path, target: str, outside: Path | None) -> None:
    """Point the index's first key at `target`; write a real file at `outside` holding that
    key with other values, so a loader that follows the name loads observable garbage."""
    index = _index(directory)
    key = sorted(index["weight_map"])[0]
    original = directory / index["weight_map"][key]
    index["weight_map"][key] = target
    _write_index(directory, index)
    if outside is not None:
        outside.parent.mkdir(parents=True, exist_ok=True)
        shape = _header(original)[key]["shape"]
        write_safetensors(outside, [(key, torch.full(shape, 42.0))])
    # the file the key left keeps it: a naive loader would also see it there
    return None


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length])


def _rewrite_header(path: Path, edit: Callable[[dict], object] | None = None,
                    raw_header: bytes | None = None, length: int | None = None) -> None:
    """Replace the header of a safetensors file (edited JSON, or raw bytes), keeping data."""
    raw = path.read_bytes()
    (old_length,) = struct.unpack("<Q", raw[:8])
    data = raw[8 + old_length:]
    if raw_header is None:
        header = json.loads(raw[8:8 + old_length])
        result = edit(header)
        raw_header = json.dumps(header if result is None else result).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    path.write_bytes(struct.pack("<Q", len(raw_header) if length is None else length)
                     + raw_header + data)


def _first_entry(header: dict) -> tuple[str, dict]:
    key = sorted(k for k in header if k != "__metadata__")[0]
    return key, header[key]


def _single(edit=None, **kwargs) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        _valid(directory)
        _rewrite_header(directory / SINGLE_FILE, edit, **kwargs)
    return write


def _overlap(header: dict) -> None:
    entries = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    first, second = header[entries[0][1]], header[entries[1][1]]
    size = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + size]


def _set(field_name: str, value_of: Callable[[dict], object]) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        _, entry = _first_entry(header)
        entry[field_name] = value_of(entry)
    return edit


def _duplicate_key_header(directory: Path) -> None:
    _valid(directory)
    path = directory / SINGLE_FILE
    header = _header(path)
    key, entry = _first_entry(header)
    text = json.dumps(header)
    duplicate = f'"{key}": {json.dumps(entry)}, '
    _rewrite_header(path, raw_header=text.replace("{", "{" + duplicate, 1).encode())


def _truncated_body(directory: Path) -> None:
    _valid(directory)
    path = directory / SINGLE_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 24])


def _posing_pickle(directory: Path) -> None:
    _valid(directory)
    marker = UnpicklingMarker(marker_path(directory))
    (directory / SINGLE_FILE).write_bytes(pickle.dumps({"model.norm.weight": marker}))


def _bin_only(directory: Path) -> None:
    """A real `torch.save` file of the checkpoint's tensors, plus the unpickling marker."""
    _valid(directory)
    path = directory / SINGLE_FILE
    state = dict(safetensors.torch.load_file(path))
    state["loadcheck.unpickling_marker"] = UnpicklingMarker(marker_path(directory))
    torch.save(state, directory / "pytorch_model.bin")
    path.unlink()


def _symlink_out(directory: Path) -> None:
    _valid(directory, shards=2)
    index = _index(directory)
    name = sorted(set(index["weight_map"].values()))[0]
    outside = directory.parent / OUTSIDE_FILE
    os.replace(directory / name, outside)
    os.symlink(outside, directory / name)


def _sharded(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        _valid(directory, shards=2)
        mutate(directory)
    return write


def _key_in_unassigned_shard(directory: Path) -> None:
    index = _index(directory)
    names = sorted(set(index["weight_map"].values()))
    key = sorted(k for k, f in index["weight_map"].items() if f == names[0])[0]
    other = directory / names[1]
    header = _header(other)
    raw = other.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    items = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        begin, end = v["data_offsets"]
        data = torch.frombuffer(bytearray(raw[8 + length + begin:8 + length + end]) or
                                bytearray(1), dtype=torch.uint8)[:end - begin]
        items.append((k, data.view(torch.float32).reshape(v["shape"]).clone()))
    items.append((key, torch.full(_header(directory / names[0])[key]["shape"], 42.0)))
    other.unlink()
    write_safetensors(other, items)


def _key_absent_from_shard(directory: Path) -> None:
    index = _index(directory)
    index["weight_map"]["model.layers.0.mlp.phantom.weight"] = sorted(
        set(index["weight_map"].values()))[0]
    _write_index(directory, index)


def _index_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        index = _index(directory)
        edit(index)
        _write_index(directory, index)
    return _sharded(mutate)


def _index_text(text: str) -> Callable[[Path], None]:
    return _sharded(lambda d: (d / INDEX_FILE).write_text(text))


def _non_finite(value: float) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        plan = CheckpointPlan(BASE_SPEC, data_seed=7)
        items = plan.items()
        key, tensor = next((k, t) for k, t in items if k.endswith("q_proj.weight"))
        tensor = tensor.clone()
        tensor.view(-1)[3] = value
        items = [(k, tensor if k == key else t) for k, t in items]
        from reference.checkpoint import write_checkpoint
        write_checkpoint(directory, BASE_SPEC.to_hf_config(), [items])
    return write


_SHARDED = frozenset({"load", "sharded"})
_FINITE = frozenset({"load", "finite_check"})

HOSTILE_CASES: dict[str, HostileCase] = {c.name: c for c in [
    HostileCase("index-parent-traversal", "unsafe_checkpoint",
                "weight_map names ../outside.safetensors, a real file outside the directory",
                _sharded(lambda d: _retarget_first_key(d, f"../{OUTSIDE_FILE}",
                                                       d.parent / OUTSIDE_FILE)), _SHARDED),
    HostileCase("index-subdirectory", "unsafe_checkpoint",
                "weight_map names sub/outside.safetensors (a separator in a shard name)",
                _sharded(lambda d: _retarget_first_key(d, f"sub/{OUTSIDE_FILE}",
                                                       d / "sub" / OUTSIDE_FILE)), _SHARDED),
    HostileCase("index-absolute-path", "unsafe_checkpoint",
                "weight_map names an absolute path to a real file",
                _sharded(lambda d: _retarget_first_key(d, str(d.parent / OUTSIDE_FILE),
                                                       d.parent / OUTSIDE_FILE)), _SHARDED),
    HostileCase("index-backslash", "unsafe_checkpoint",
                "weight_map names ..\\outside.safetensors",
                _sharded(lambda d: _retarget_first_key(d, f"..\\{OUTSIDE_FILE}", None)),
                _SHARDED),
    HostileCase("index-empty-name", "unsafe_checkpoint", "weight_map names an empty file name",
                _sharded(lambda d: _retarget_first_key(d, "", None)), _SHARDED),
    HostileCase("index-dot-name", "unsafe_checkpoint", "weight_map names '.', the directory",
                _sharded(lambda d: _retarget_first_key(d, ".", None)), _SHARDED),
    HostileCase("shard-symlink-outside", "unsafe_checkpoint",
                "a shard is a symlink to a file outside the directory", _symlink_out, _SHARDED),
    HostileCase("index-names-missing-file", "corrupt_checkpoint",
                "weight_map names a shard that does not exist",
                _sharded(lambda d: _retarget_first_key(d, "model-missing.safetensors", None)),
                _SHARDED),
    HostileCase("index-not-json", "corrupt_checkpoint", "the index is not JSON",
                _index_text("{ weight_map: nope"), _SHARDED),
    HostileCase("index-duplicate-json-keys", "corrupt_checkpoint",
                "the index holds weight_map twice (JSON accepts it silently)",
                _index_text('{"weight_map": {}, "weight_map": {}}'), _SHARDED),
    HostileCase("index-without-weight-map", "corrupt_checkpoint", "the index has no weight_map",
                _index_edit(lambda i: i.pop("weight_map")), _SHARDED),
    HostileCase("tensor-in-unassigned-shard", "corrupt_checkpoint",
                "a tensor also sits in a shard the index does not assign it to",
                _sharded(_key_in_unassigned_shard), _SHARDED),
    HostileCase("index-key-absent-from-shard", "corrupt_checkpoint",
                "the index assigns a tensor to a shard that does not hold it",
                _sharded(_key_absent_from_shard), _SHARDED),
    HostileCase("header-length-past-eof", "corrupt_checkpoint",
                "the header length runs past the end of the file",
                _single(lambda h: None, length=10**6)),
    HostileCase("header-length-absurd", "corrupt_checkpoint",
                "the header length claims 2^62 bytes (never allocate what a header claims)",
                _single(lambda h: None, length=2**62)),
    HostileCase("file-shorter-than-prefix", "corrupt_checkpoint",
                "model.safetensors is 5 bytes long",
                lambda d: (_valid(d), (d / SINGLE_FILE).write_bytes(b"\x01\x02\x03\x04\x05"))),
    HostileCase("header-not-utf8", "corrupt_checkpoint", "the header is not UTF-8",
                _single(raw_header=b'{"\xff\xfe": 1}')),
    HostileCase("header-not-json", "corrupt_checkpoint", "the header is not JSON",
                _single(raw_header=b"{not json")),
    HostileCase("header-not-object", "corrupt_checkpoint", "the header is a JSON list",
                _single(raw_header=b"[1, 2, 3]")),
    HostileCase("header-duplicate-keys", "corrupt_checkpoint",
                "the header lists one tensor twice (the safetensors library accepts this)",
                _duplicate_key_header),
    HostileCase("offsets-overlap", "corrupt_checkpoint", "two tensors' data ranges overlap",
                _single(_overlap)),
    HostileCase("offsets-past-data", "corrupt_checkpoint",
                "a tensor's data_offsets end past the data section",
                _single(_set("data_offsets", lambda e: [e["data_offsets"][0],
                                                         e["data_offsets"][1] + 10**9]))),
    HostileCase("offsets-reversed", "corrupt_checkpoint", "a tensor's data_offsets are reversed",
                _single(_set("data_offsets", lambda e: e["data_offsets"][::-1]
                             if e["data_offsets"][0] != e["data_offsets"][1] else [8, 0]))),
    HostileCase("shape-bytes-mismatch", "corrupt_checkpoint",
                "shape x itemsize does not match the data range",
                _single(_set("shape", lambda e: [e["shape"][0] * 2] + e["shape"][1:]))),
    HostileCase("shape-negative", "corrupt_checkpoint", "a dimension is negative",
                _single(_set("shape", lambda e: [-e["shape"][0]] + e["shape"][1:]))),
    HostileCase("dtype-unknown", "unsupported_dtype", "a tensor's dtype is F128",
                _single(_set("dtype", lambda e: "F128"))),
    HostileCase("entry-extra-field", "corrupt_checkpoint", "a header entry has an unknown field",
                _single(_set("quantized", lambda e: True))),
    HostileCase("metadata-not-strings", "corrupt_checkpoint", "__metadata__ maps to a number",
                _single(lambda h: h.__setitem__("__metadata__", {"format": 1}))),
    HostileCase("body-truncated", "corrupt_checkpoint", "the file ends inside the data section",
                _truncated_body),
    HostileCase("pickle-posing-as-safetensors", "corrupt_checkpoint",
                "model.safetensors holds a pickle (unpickling it calls a harmless marker)",
                _posing_pickle),
    HostileCase("pytorch-bin-only", "corrupt_checkpoint",
                "only pytorch_model.bin is present (a real torch.save pickle; unpickling it calls a "
                "harmless marker)", _bin_only),
    HostileCase("nan-in-weight", "non_finite", "a q_proj weight holds NaN (check_finite on)",
                _non_finite(float("nan")), _FINITE, LoadOptions(check_finite=True)),
    HostileCase("inf-in-weight", "non_finite", "a q_proj weight holds -Inf (check_finite on)",
                _non_finite(float("-inf")), _FINITE, LoadOptions(check_finite=True)),
]}


# ----- generated corruption --------------------------------------------------------------
@dataclass(frozen=True)
class Corruption:
    """Bytes of a valid single-file checkpoint, changed: the file cut at `truncate`, or
    `patch` written at `position` (both as fractions of the file, so they shrink)."""

    plan: CheckpointPlan
    truncate: float | None = None
    position: float = 0.0
    patch: bytes = b""

    def write(self, directory: Path) -> Path:
        self.plan.write(directory)
        path = directory / SINGLE_FILE
        raw = bytearray(path.read_bytes())
        if self.truncate is not None:
            raw = raw[:int(len(raw) * self.truncate)]
        else:
            at = int((len(raw) - 1) * self.position)
            raw[at:at + len(self.patch)] = self.patch
        path.write_bytes(bytes(raw))
        return directory

    def summary(self) -> str:
        what = (f"file cut at {self.truncate:.0%}" if self.truncate is not None
                else f"{len(self.patch)} bytes {self.patch.hex()} written at {self.position:.0%}")
        return f"{self.plan.summary()}; {what}"


@st.composite
def corruptions(draw, spec: ModelSpec) -> Corruption:
    plan = CheckpointPlan(spec, fused=spec.fused_on_disk_natively,  # every loader reads it
                          data_seed=draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        return Corruption(plan, truncate=draw(st.floats(0.0, 0.999)))
    # Most of what a header can get wrong sits in its first few hundred bytes.
    position = draw(st.one_of(st.floats(0.0, 0.05), st.floats(0.0, 1.0)))
    return Corruption(plan, position=position, patch=draw(st.binary(min_size=1, max_size=8)))



# ----- symlinks: the hub-cache layout (valid) and links that leave (issue 18) ------------
# The policy (reference/checkpoint.py `_check_link`): a file may be a symlink to a file in
# the directory, or, in a hub-cache snapshot, to a file in its repo's blobs/.
HUB_REPO = "models--loadcheck--tiny"


def hub_cache_layout(checkpoint: Path, cache: Path, repo: str = HUB_REPO) -> Path:
    """Copy a checkpoint directory into the Hugging Face hub-cache layout under `cache`
    (hard links where the file system allows): each file's bytes in `<repo>/blobs/<sha256>`,
    `<repo>/snapshots/<rev>/<name>` a relative symlink `../../blobs/<sha256>`, and
    `refs/main` naming `<rev>`. Returns the snapshot directory (what a loader is given)."""
    import hashlib
    import shutil
    root = cache / repo
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in checkpoint.iterdir() if p.is_file())
    digests = {}
    for name in names:
        digest = hashlib.sha256()
        with open(checkpoint / name, "rb") as f:
            for chunk in iter(lambda: f.read(2**24), b""):
                digest.update(chunk)
        digests[name] = digest.hexdigest()
    revision = hashlib.sha1("".join(digests[n] for n in names).encode()).hexdigest()
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in names:
        blob = root / "blobs" / digests[name]
        if not blob.exists():
            try:
                os.link(checkpoint / name, blob)
            except OSError:
                shutil.copyfile(checkpoint / name, blob)
        os.symlink(f"../../blobs/{digests[name]}", snapshot / name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def _hub_cache(shards: int) -> Callable[[Path], Path]:
    def write(parent: Path) -> Path:
        plain = parent / "plain"
        _valid(plain, shards=shards)
        return hub_cache_layout(plain, parent / "hub")
    return write


# Valid layouts every loader must load exactly as the reference does: write(parent) builds
# the checkpoint somewhere under `parent` and returns the directory to load.
VALID_LAYOUTS: dict[str, Callable[[Path], Path]] = {
    "hub-cache-single": _hub_cache(1),
    "hub-cache-sharded": _hub_cache(2),
}


def _single_symlink_out(directory: Path) -> None:
    _valid(directory)
    outside = directory.parent / OUTSIDE_FILE
    os.replace(directory / SINGLE_FILE, outside)
    os.symlink(outside, directory / SINGLE_FILE)


def _index_symlink_out(directory: Path) -> None:
    _valid(directory, shards=2)
    outside = directory.parent / "outside.index.json"
    os.replace(directory / INDEX_FILE, outside)
    os.symlink(outside, directory / INDEX_FILE)


HOSTILE_CASES.update({c.name: c for c in [
    HostileCase("single-file-symlink-outside", "unsafe_checkpoint",
                "model.safetensors is a symlink to a file outside the directory",
                _single_symlink_out),
    HostileCase("index-symlink-outside", "unsafe_checkpoint",
                "the index is a symlink to a file outside the directory", _index_symlink_out,
                _SHARDED),
]})
