"""Offloading with prefetch, modelled on vLLM's prefetch offloader.

Layer i is offloaded iff `i % group_size >= group_size - offload_per_group`. Of an
offloaded layer, the parameters whose canonical parts the filter selects (whole dotted
segments: "mlp" selects `...mlp.gate_proj.weight`, never `...mlp_x...`) live in host copies (pinned when CUDA is
present). Before layer i runs, it and the next `prefetch_step` offloaded layers are copied
into a ring of device buffers (on CUDA on a side stream, ordered by events); after layer
i, its parameters point back at their host copies. Placement is tracked by the offloader
itself ("host" or "device"), so it means the same on a CPU-only machine, where the device
buffers are separate host storages.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from .contract import OffloadPlan
from .dtypes import copy_bytes_
from .model import TinyDecoderLM

__all__ = ["PrefetchOffloader"]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class PrefetchOffloader:
    """Offloads `model`'s selected parameters to the host and streams them back per layer."""

    def __init__(self, model: TinyDecoderLM, plan: OffloadPlan, device: str = "cpu"):
        self.model, self.plan, self.device = model, plan, torch.device(device)
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.layers: dict[int, list[tuple[str, torch.nn.Parameter]]] = {}
        self.host: dict[str, torch.Tensor] = {}
        for name, param in model.named_parameters():
            match = _LAYER.match(name)
            parts = model.fused_parts.get(name, (name,))  # the filter speaks canonical names
            if match and plan.offloads_layer(int(match.group(1))) and any(
                    plan.selects(part) for part in parts):
                host = torch.empty(param.shape, dtype=param.dtype, device="cpu", pin_memory=cuda)
                copy_bytes_(host, param.data)
                self.host[name] = host
                param.data = host
                self.layers.setdefault(int(match.group(1)), []).append((name, param))
        # one buffer set per ring slot: a layer and the next prefetch_step share no buffers
        self.ring = max(1, plan.prefetch_step + 1)
        self.buffers: dict[tuple[int, str], torch.Tensor] = {}
        self.ready: dict[int, torch.cuda.Event] = {}      # copies done (side stream)
        self.released: dict[int, torch.cuda.Event] = {}   # slot free (compute stream done)
        self.onloaded: set[int] = set()

    # ----- per layer ---------------------------------------------------------------------
    def _slot(self, layer: int) -> int:
        return sorted(self.layers).index(layer) % self.ring

    def onload(self, layer: int) -> None:
        """Copy an offloaded layer's parameters into its device buffers (idempotent)."""
        if layer not in self.layers or layer in self.onloaded:
            return
        slot = self._slot(layer)
        context = torch.cuda.stream(self.stream) if self.stream is not None else _nothing()
        with context:
            if slot in self.released:  # the layer that last used these buffers has run
                self.stream.wait_event(self.released.pop(slot))
            for name, param in self.layers[layer]:
                key = (slot, name.split(".", 3)[-1])  # same role in another layer: same buffer
                buffer = self.buffers.get(key)
                if buffer is None or buffer.shape != param.shape or buffer.dtype != param.dtype:
                    buffer = torch.empty(param.shape, dtype=param.dtype, device=self.device)
                    self.buffers[key] = buffer
                copy_bytes_(buffer, self.host[name], non_blocking=self.stream is not None)
                param.data = buffer
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record(self.stream)
            self.ready[layer] = event
        self.onloaded.add(layer)

    def wait(self, layer: int) -> None:
        event = self.ready.pop(layer, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def release(self, layer: int) -> None:
        """Point a layer's parameters back at their host copies. On CUDA, the next copy into
        this layer's buffers waits for the compute already queued on them."""
        if layer not in self.layers:
            return
        self.wait(layer)
        for name, param in self.layers[layer]:
            param.data = self.host[name]
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.released[self._slot(layer)] = event
        self.onloaded.discard(layer)

    # ----- reports and use -----------------------------------------------------------------
    def placement(self) -> dict[str, str]:
        """Canonical name -> 'host' or 'device', right now (a fused parameter's logical
        parts share its placement)."""
        out = {}
        for name, param in self.model.named_parameters():
            where = "device"
            if name in self.host and param.data.data_ptr() == self.host[name].data_ptr():
                where = "host"
            for canonical in self.model.fused_parts.get(name, (name,)):
                out[canonical] = where
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """The canonical tensors as the model sees them now (host copies or buffers),
        once every pending copy has landed."""
        for layer in list(self.ready):
            self.wait(layer)
        return self.model.canonical_views()

    def forward(self, input_ids: torch.Tensor,
                check: Callable[[int], None] | None = None) -> torch.Tensor:
        """The model's forward with each offloaded layer onloaded ahead of its use and
        released after; `check(layer)` runs while layer is on the device (tests use it)."""
        order = sorted(self.layers)

        def before(layer: int) -> None:
            ahead = [l for l in order if l >= layer][:self.plan.prefetch_step + 1]
            for upcoming in ahead:
                self.onload(upcoming)
            self.wait(layer)
            if check is not None:
                check(layer)

        return self.model(input_ids, before_layer=before, after_layer=self.release)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
