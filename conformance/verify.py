"""What a candidate reports about its own storage, checked against the storage itself.

A loader's `placement()` (offload) and `aliases` (tying) are bookkeeping. Bookkeeping that
says "offloaded" while nothing moved, or a head that shares the embedding's memory without
saying so, passes any comparison of reports. These checks read the tensors: their device,
and which storage (and which bytes of it) they occupy.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .compare import Divergence

__all__ = ["Storage", "storages", "placement_of_storage", "unreported_sharing"]

Storage = tuple[str, int]  # (device type, address of the storage's first byte)


def storages(state: Mapping[str, torch.Tensor]) -> dict[str, Storage]:
    """Canonical name -> the storage its bytes live in (meta tensors have none)."""
    return {name: (t.device.type, t.untyped_storage().data_ptr())
            for name, t in state.items() if t.device.type != "meta"}


def placement_of_storage(report: Mapping[str, str], now: Mapping[str, Storage],
                         home_report: Mapping[str, str], home: Mapping[str, Storage],
                         device: str, when: str) -> list[Divergence]:
    """The candidate's placement report ("host" / "device") against its storages now.
    "host" must be a CPU storage and "device" one of the run's device type. A tensor the
    candidate kept on the host between uses (`home_report`, `home`: its storages then)
    must, when reported on the device, be in another storage than that host copy (on a
    CPU-only run the device buffers are separate host storages, as in the reference's
    offloader), and, when reported on the host again, be in that same copy. `home` holds
    only the tensors whose storage a second look found unchanged: a `state()` that
    returns copies has no identity to check."""
    out = []
    device_type = torch.device(device).type
    for name, said in sorted(report.items()):
        if name not in now:
            continue
        kind, address = now[name]
        offloaded = home_report.get(name) == "host" and name in home
        problem = None
        if said == "host" and kind != "cpu":
            problem = f"reported on the host {when}, but its storage is on {kind}"
        elif said == "device" and kind != device_type:
            problem = f"reported on the device {when}, but its storage is on {kind}"
        elif said == "device" and offloaded and (kind, address) == home[name]:
            problem = (f"reported on the device {when}, but its storage is still the host "
                       f"copy it had between uses (0x{address:x}): nothing was copied")
        elif said == "host" and offloaded and (kind, address) != home[name]:
            problem = (f"reported on the host {when}, but its storage (0x{address:x}) is not "
                       f"the host copy it had between uses (0x{home[name][1]:x})")
        if problem:
            out.append(Divergence("placement", name, f"{name}: {problem}",
                                  {"expected": said, "found": f"{kind} storage 0x{address:x}",
                                   "verified": "storage"}))
    return out


def unreported_sharing(state: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
                       ) -> list[Divergence]:
    """Canonical tensors whose bytes overlap in memory although `aliases` does not say
    they share storage (a reported alias must be the same bytes; the reference's tied head
    is reported, not returned). Fused views are disjoint rows of one storage: no overlap.
    FP8 scales may share one storage (a fused parameter's one requantized scale)."""
    spans = sorted((t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(),
                    t.untyped_storage().data_ptr() + (t.storage_offset() + _extent(t))
                    * t.element_size(), name)
                   for name, t in state.items()
                   if t.device.type != "meta" and t.numel() and not name.endswith("_scale"))
    out, reported = [], {frozenset(p) for p in aliases.items()}
    reach, owner = 0, ""  # the furthest byte any earlier span reaches, and whose it is
    for start, stop, name in spans:
        if start < reach and frozenset((name, owner)) not in reported:
            out.append(Divergence("alias", name, f"{name}: its memory overlaps {owner}'s, "
                                  f"but aliases reports no sharing between them (a write to "
                                  f"one changes the other)",
                                  {"expected": dict(aliases), "found": [owner, name],
                                   "verified": "storage"}))
        if stop > reach:
            reach, owner = stop, name
    return out


def _extent(t: torch.Tensor) -> int:
    """Elements from the tensor's first to one past its last, following its strides."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
