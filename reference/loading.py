"""The reference loader: what loading a checkpoint into a tiny decoder *means*.

A load is planned completely before a byte of tensor data is read: every key is mapped
(exactly, by `names.checkpoint_keys`), every shape and dtype checked, coverage counted,
and every problem collected. The first problem by precedence is raised, naming the
others as acceptable alternatives. Only then is the model built and each tensor read
straight into its destination (the rank's slice of the logical matrix).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch

from .accounting import parameter_bytes
from .checkpoint import Checkpoint, TensorEntry, open_checkpoint
from .contract import (CAPABILITIES, CONFIG_FILE, per_family, variants_for, CorruptCheckpointError, LoadError, LoadOptions,
                       LoadResult, MissingWeightsError, ModelSpec, NonFiniteInputError, OffloadPlan,
                       QuantSpec, parameter_table,
                       ShapeMismatchError, UnexpectedKeysError, UnsupportedDtypeError,
                       UnsupportedLayoutError, torch_dtype)
from .dtypes import FP8_DTYPES, PLAIN_FLOATS, can_cast, cast_float
from .filemap import map_concatenated
from .fp8 import Fp8Rules, input_scale_name, quantize_groups, requantize_to_max, scale_name
from .model import TinyDecoderLM
from .quant import format_of
from .quant.fp8_block import quantize_block_weights
from .offload import PrefetchOffloader
from .names import FUSED_PROJECTIONS, TIED_HEAD_KEY, KeyTarget, Slot, checkpoint_keys
from .tp import RankSlice, check_tp, rank_slice

__all__ = ["ReferenceLoader", "LoadPlan", "Copy"]

# Which problem is raised first when a checkpoint has several (the rest become
# alternatives): the checkpoint's own validity, then what keys mean, then per-tensor
# checks, then what is missing.
_PRECEDENCE = ("corrupt_checkpoint", "unexpected", "shape_mismatch", "unsupported_dtype",
               "missing")


@dataclass(frozen=True)
class Copy:
    """Read rows [slot.start, slot.stop) of `entry` (narrowed to this rank) into `canonical`."""

    entry: TensorEntry
    slot: Slot


@dataclass
class LoadPlan:
    copies: list[Copy] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    problems: list[LoadError] = field(default_factory=list)
    tied_head: TensorEntry | None = None  # a tied model's checkpoint head, under "untie"

    def raise_first(self) -> None:
        if not self.problems:
            return
        ranked = sorted(self.problems, key=lambda e: (_PRECEDENCE.index(e.family), str(e)))
        first = ranked[0]
        first.alternatives = frozenset(e.family for e in ranked)
        for family in first.alternatives:  # what any problem of each family names
            of_family = [e for e in ranked if e.family == family]
            first.accepted_subjects[family] = frozenset().union(
                *(e.accepted_subjects.get(family, ()) for e in of_family))
            if any(e.names for e in of_family):
                first.accepted_names[family] = frozenset().union(*(e.names for e in of_family))
        raise first


class ReferenceLoader:
    """The reference. `fused_params` picks the in-memory layout (vLLM-like fused q/k/v and
    gate/up, or transformers-like separate modules); the canonical result is the same.

    `map_weights` lets whole parameters whose bytes need no conversion share a private
    copy-on-write mapping of the file (as safetensors does) instead of a copy.

    A load is a fixed sequence of small steps (`open`, `entries`, `key_table`, `map_key`,
    `plan`, `accepts_dtype`, `exempt_from_tracking`, `build_model`, `materialize`, `rank_slice`,
    `map_fused`, `map_slot`, `copy_slot`, `check_finite`, `requantize_serialized`, `quantize_online`,
    `finish`), each a method so that a loader under test (or a mutant in tests/mutants/)
    can differ in exactly one of them. FP8 follows reference/fp8.py under the declared
    `fp8_*` variants.
    """

    name = "reference"
    # The offloader class `offload` builds (a mutant swaps in a faulty one, on any device).
    offloader: type[PrefetchOffloader] = PrefetchOffloader
    capabilities = frozenset(CAPABILITIES) - {"cuda"} | (
        {"cuda"} if torch.cuda.is_available() else set())

    def __init__(self, variants: Mapping[str, str] | None = None, fused_params: bool = True,
                 map_weights: bool = True):
        # A variant may take one value per model family (contract.variants_for): each load
        # and reload then runs under its spec's family's values.
        self.declared_variants = dict(variants or {})
        self._family: str | None = None
        self.variants = variants_for(self.declared_variants, None)
        self.fp8_rules = Fp8Rules.from_variants(self.variants)
        self.fused_params = fused_params
        self.map_weights = map_weights

    @property
    def version(self) -> str:
        from . import __version__
        return __version__

    @contextmanager
    def family_variants(self, family: str):
        """The declared variants of `family` for the length of the block."""
        saved = self._family, self.variants, self.fp8_rules
        self._family = family
        self.variants = variants_for(self.declared_variants, family)
        self.fp8_rules = Fp8Rules.from_variants(self.variants)
        try:
            yield
        finally:
            self._family, self.variants, self.fp8_rules = saved

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        if per_family(self.declared_variants) and self._family != spec.family:
            with self.family_variants(spec.family):
                return self.load(checkpoint, spec, options)
        check_tp(spec, options.tp_size, self.variants["vocab_shards"])
        if options.quantize and spec.quantized_on_disk:
            raise UnsupportedLayoutError(
                f"online {options.quantize} quantization of a checkpoint that is already "
                f"quantized ({spec.fp8_checkpoint or spec.quant.summary()})", subject=CONFIG_FILE)
        self.check_quant_layout(spec, options)
        with self.open(checkpoint) as ckpt:
            plan = self.plan(spec, self.entries(ckpt), options)
            plan.raise_first()
            model = self.build_model(spec, options)
            self.materialize(model, options)
            in_place = self.map_fused(ckpt, plan, model, spec, options)
            views = model.canonical_views()
            for copy in plan.copies:
                if copy.slot.canonical in in_place:
                    continue
                mapped = self.map_slot(ckpt, copy, views[copy.slot.canonical], spec, options)
                if mapped is None or not model.adopt(copy.slot.canonical, mapped):
                    self.copy_slot(ckpt, copy, views[copy.slot.canonical], spec, options)
            if plan.tied_head is not None:
                self.untie_if_different(ckpt, plan, model, spec, options)
            if options.check_finite:
                self.check_finite(plan, model.canonical_views())
        if spec.fp8_checkpoint:
            self.requantize_serialized(model.canonical_views(), spec, plan.loaded)
        if spec.quant is not None and self.variants["fp8_block_storage"] == "dequantized":
            model.dequantize_block_weights()
        if options.quantize == "fp8":
            model.install_fp8(self.quantize_online(model.canonical_views(), spec, plan.loaded))
        if options.quantize == "fp8_block":
            model.install_fp8(self.quantize_online_blocks(model.canonical_views(), spec,
                                                          plan.loaded, options.quant_block),
                              "weight_scale_inv", options.quant_block)
        self.finish(model, options)
        return self._result(model, spec, plan)

    def _result(self, model: TinyDecoderLM, spec: ModelSpec, plan: LoadPlan) -> LoadResult:
        return LoadResult(
            state=model.canonical_views(), buffers=model.named_canonical_buffers(),
            loaded=frozenset(plan.loaded), missing=frozenset(plan.missing),
            unexpected=frozenset(plan.unexpected), ignored=frozenset(plan.ignored),
            aliases={"lm_head.weight": "model.embed_tokens.weight"}
            if spec.tie_word_embeddings and model.tied else {},
            model=model)

    def quantize(self, result: LoadResult) -> LoadResult:
        """Load-then-quantize: online FP8 of a model loaded without it (every group whose
        weights were all loaded)."""
        family = result.model.spec.family if result.model is not None else None
        if per_family(self.declared_variants) and family and self._family != family:
            with self.family_variants(family):
                return self.quantize(result)
        model = result.model
        if any(t.dtype in FP8_DTYPES for n, t in result.state.items()
               if n in model.spec.quantized_weights()):
            raise UnsupportedLayoutError("the model is already quantized: quantizing FP8 "
                                         "codes again would treat them as weights",
                                         subject="quantize")
        model.install_fp8(self.quantize_online(model.canonical_views(), model.spec,
                                               set(result.loaded)))
        return LoadResult(state=model.canonical_views(), buffers=result.buffers,
                          loaded=result.loaded, missing=result.missing,
                          unexpected=result.unexpected, ignored=result.ignored,
                          aliases=result.aliases, model=model)

    def reload(self, result: LoadResult, checkpoint: str, spec: ModelSpec,
               options: LoadOptions) -> LoadResult:
        """Load `checkpoint` (every layer or some) into the live model of `result`, in
        place: the tensors it covers, with the same post-processing as a first load, are
        copied into the storages the model already has (they never move). Whatever the
        checkpoint does not cover keeps its value; a quantization group is re-quantized
        only when all of its weights arrive. The new weights are loaded and checked in full
        before anything live changes, so a bad checkpoint leaves the model as it was."""
        if per_family(self.declared_variants) and self._family != spec.family:
            with self.family_variants(spec.family):
                return self.reload(result, checkpoint, spec, options)
        live = result.model
        if live is None or live.spec != spec:
            raise UnsupportedLayoutError("reload needs the live model of a load of the same "
                                         "spec", subject="reload")
        # a reload of some layers lacks the others by design: strict keeps its unexpected
        # keys, never its missing weights
        staged = self.load(checkpoint, spec, replace(options, track=False, poison=False,
                                                     meta_init=False, strict=False))
        if options.strict and staged.unexpected:
            names = sorted(staged.unexpected)
            raise UnexpectedKeysError(f"unexpected checkpoint keys: {', '.join(names)}",
                                      subject=names[0], names=frozenset(names))
        covered = set(staged.loaded)
        for name in list(covered):
            for scale in (name + "_scale", name + "_scale_inv"):
                if scale in staged.state and live.dtypes.get(name) in FP8_DTYPES:
                    covered.add(scale)
        views = live.canonical_views()
        for name in sorted(covered):
            if staged.state[name].dtype in FP8_DTYPES and name + "_scale" not in staged.state \
                    and name + "_scale_inv" not in staged.state:
                continue  # a group not wholly reloaded stays as it was (never re-quantized)
            if views[name].dtype != staged.state[name].dtype:
                continue
            views[name].copy_(staged.state[name].to(views[name].device))
        return LoadResult(state=live.canonical_views(), buffers=live.named_canonical_buffers(),
                          loaded=staged.loaded, missing=staged.missing,
                          unexpected=staged.unexpected, ignored=staged.ignored,
                          aliases=result.aliases, model=live)

    def forward(self, result: LoadResult, input_ids: torch.Tensor) -> torch.Tensor:
        return result.model(input_ids)

    def parameter_bytes(self, result: LoadResult) -> dict[str, int]:
        return parameter_bytes(result.state)

    def offload(self, result: LoadResult, plan: OffloadPlan) -> PrefetchOffloader:
        device = next(iter(result.state.values())).device.type if result.state else "cpu"
        return self.offloader(result.model, plan, device)

    # ----- the steps ---------------------------------------------------------------------
    def open(self, checkpoint: str) -> Checkpoint:
        """Validate the directory (shard names, index, every header) before reading data."""
        return open_checkpoint(checkpoint, self.variants["trailing_bytes"])

    def entries(self, ckpt: Checkpoint) -> Mapping[str, TensorEntry]:
        """The tensors to load: exactly those the index assigns (or the single file's)."""
        return ckpt.entries

    def key_table(self, spec: ModelSpec) -> Mapping[str, KeyTarget]:
        return checkpoint_keys(spec)

    def map_key(self, table: Mapping[str, KeyTarget], key: str) -> KeyTarget | None:
        """Exact, whole-key lookup: one key feeds exactly the (parameter, rows) it names."""
        return table.get(key)

    def exempt_from_tracking(self, spec: ModelSpec, name: str) -> bool:
        """Parameters the loader creates itself are not expected from the checkpoint; a
        plain load creates none (online FP8 scales will be the only exemption)."""
        return False

    def accepts_dtype(self, source: torch.dtype, target: torch.dtype) -> bool:
        """Plain floats convert into plain floats; int, bool and FP8 keep their dtype."""
        return can_cast(source, target)

    def plan(self, spec: ModelSpec, entries: Mapping[str, TensorEntry], options: LoadOptions
             ) -> LoadPlan:
        """Map every key, check shapes and dtypes, count coverage; read nothing."""
        plan, table = LoadPlan(), self.key_table(spec)
        covered_by: dict[str, str] = {}
        for key in sorted(entries):  # the order tensors arrive in never matters
            entry, target = entries[key], self.map_key(table, key)
            if target is None:
                how = self.variants["tied_checkpoint_head"]
                if key != TIED_HEAD_KEY or not spec.tie_word_embeddings or how == "unexpected":
                    plan.unexpected.add(key)
                elif how == "ignore":
                    plan.ignored.add(key)
                elif entry.shape != (spec.vocab_size, spec.hidden_size):
                    plan.problems.append(ShapeMismatchError(
                        f"{key}: expected shape {[spec.vocab_size, spec.hidden_size]}, "
                        f"checkpoint has {list(entry.shape)}", subject=key))
                else:
                    plan.tied_head = entry  # untie or not, once its values are read
                continue
            if entry.shape != target.shape and not (target.shape == () and entry.shape == (1,)):
                plan.problems.append(self.about_tensor(ShapeMismatchError(
                    f"{key}: expected shape {list(target.shape)}, checkpoint has "
                    f"{list(entry.shape)}", subject=key), target))
                continue
            param_dtype = spec.parameter_dtype(target.slots[0].canonical, options.dtype)
            if not self.accepts_dtype(entry.dtype, param_dtype):
                plan.problems.append(self.about_tensor(UnsupportedDtypeError(
                    f"{key}: checkpoint dtype {entry.dtype} cannot load into a {param_dtype} "
                    f"parameter (only plain floats convert; int, bool and FP8 keep their "
                    f"dtype)", subject=key), target))
                continue
            for slot in target.slots:
                if slot.canonical in covered_by:
                    plan.problems.append(CorruptCheckpointError(
                        f"{slot.canonical} is covered twice, by {covered_by[slot.canonical]} "
                        f"and {key}", subject=slot.canonical))
                covered_by[slot.canonical] = key
                plan.copies.append(Copy(entry, slot))
        self._embedding_from_head(spec, entries, plan, covered_by)
        plan.loaded = set(covered_by)
        plan.missing = {n for n in spec.parameter_shapes()
                        if n not in plan.loaded and not self.exempt_from_tracking(spec, n)}
        if plan.unexpected and (options.strict or self.variants["unexpected_keys"] == "raise"):
            names = sorted(plan.unexpected)
            plan.problems.append(UnexpectedKeysError(
                f"unexpected checkpoint keys: {', '.join(names)}", subject=names[0],
                names=frozenset(names)))
        strict_missing = options.strict and self.variants["strict_scope"] != "unexpected"
        if plan.missing and (options.track or strict_missing):
            names = sorted(plan.missing)
            plan.problems.append(MissingWeightsError(
                f"weights not initialized from the checkpoint: {', '.join(names)}",
                subject=names[0], names=frozenset(names)))
        return plan

    def about_tensor(self, error: LoadError, target: KeyTarget | str) -> LoadError:
        """An error about one checkpoint tensor, named as `error_subject` declares: its
        key (as raised), or the canonical parameter(s) it feeds (any part of a fused key)."""
        if self.variants["error_subject"] == "canonical":
            names = [target] if isinstance(target, str) else [s.canonical for s in target.slots]
            error.subject = names[0]
            error.accepted_subjects[error.family] = frozenset(names)
        return error

    def _embedding_from_head(self, spec: ModelSpec, entries: Mapping[str, TensorEntry],
                             plan: LoadPlan, covered_by: dict[str, str]) -> None:
        """Under `tied_embedding_source: either`, a tied model's checkpoint head fills an
        embedding the checkpoint lacks (and then is the embedding: nothing to untie)."""
        embedding, head = "model.embed_tokens.weight", entries.get(TIED_HEAD_KEY)
        if self.variants["tied_embedding_source"] != "either" or not spec.tie_word_embeddings \
                or head is None or embedding in covered_by \
                or head.shape != (spec.vocab_size, spec.hidden_size):
            return
        plan.copies.append(Copy(head, Slot(embedding, 0, spec.vocab_size)))
        covered_by[embedding] = TIED_HEAD_KEY
        plan.ignored.discard(TIED_HEAD_KEY)
        plan.unexpected.discard(TIED_HEAD_KEY)
        plan.tied_head = None

    def untie_if_different(self, ckpt: Checkpoint, plan: LoadPlan, model: TinyDecoderLM,
                           spec: ModelSpec, options: LoadOptions) -> None:
        """Under `tied_checkpoint_head: untie`: compare the checkpoint head (this rank's
        rows, in the embedding's dtype) with the loaded embedding, bit for bit; a different
        head unties the model and is loaded, an equal one is ignored."""
        embedding = model.canonical_views()["model.embed_tokens.weight"]
        piece = self.rank_slice(spec, TIED_HEAD_KEY, options)
        rows = (piece.start, piece.stop) if piece is not None else None
        head = cast_float(ckpt.read(plan.tied_head, rows), embedding.dtype)
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[head.itemsize]
        if torch.equal(head.view(width), embedding.cpu().contiguous().view(width)):
            plan.ignored.add(TIED_HEAD_KEY)
        else:
            model.untie(head)
            plan.loaded.add(TIED_HEAD_KEY)

    def build_model(self, spec: ModelSpec, options: LoadOptions) -> TinyDecoderLM:
        return TinyDecoderLM(spec, dtype=torch_dtype(options.dtype or spec.dtype),
                             device="meta" if options.meta_init else "cpu",
                             tp_size=options.tp_size, tp_rank=options.tp_rank,
                             fused=self.fused_params, vocab_shards=self.variants["vocab_shards"])

    def materialize(self, model: TinyDecoderLM, options: LoadOptions) -> None:
        """Storage for every meta tensor on the host, before any weight arrives."""
        model.materialize("cpu", poison=options.poison)

    def rank_slice(self, spec: ModelSpec, name: str, options: LoadOptions) -> RankSlice | None:
        return rank_slice(spec, name, options.tp_size, options.tp_rank,
                          self.variants["vocab_shards"])

    def _rows(self, copy: Copy, spec: ModelSpec, options: LoadOptions):
        """This rank's piece of a slot, and the rows of the checkpoint tensor it reads."""
        slot, entry = copy.slot, copy.entry
        piece = self.rank_slice(spec, slot.canonical, options)
        rows = (slot.start, slot.stop) if entry.shape else None
        if piece is not None and piece.dim == 0:
            rows = (slot.start + piece.start, slot.start + piece.stop)
        return piece, rows

    def _mappable_rows(self, copy: Copy, dest: torch.Tensor, spec: ModelSpec,
                       options: LoadOptions):
        """The checkpoint rows of a slot that may be mapped rather than copied: nothing
        needs converting (same dtype, no column slice) and no allocation is to be
        poisoned. False when it must be copied."""
        piece, rows = self._rows(copy, spec, options)
        if not self.map_weights or options.poison or options.device != "cpu" or not dest.dim() \
                or copy.entry.dtype != dest.dtype or (piece is not None and piece.dim != 0):
            return False
        return rows

    def map_slot(self, ckpt: Checkpoint, copy: Copy, dest: torch.Tensor, spec: ModelSpec,
                 options: LoadOptions) -> torch.Tensor | None:
        """The slot's bytes as a copy-on-write file mapping when it may be mapped; else None."""
        rows = self._mappable_rows(copy, dest, spec, options)
        return None if rows is False else ckpt.map(copy.entry, rows)

    def map_fused(self, ckpt: Checkpoint, plan: LoadPlan, model: TinyDecoderLM,
                  spec: ModelSpec, options: LoadOptions) -> set[str]:
        """A fused parameter whose parts may all be mapped becomes one private mapping
        stitched from their file bytes (reference/filemap.py), instead of an allocation
        that every part is copied into. Returns the canonical names now in place."""
        if not model.fused_parts:
            return set()
        copies = {c.slot.canonical: c for c in plan.copies}
        views, in_place = model.canonical_views(), set()
        for param_name, parts in model.fused_parts.items():
            ranges = []
            for part in parts:
                copy = copies.get(part)
                rows = False if copy is None else self._mappable_rows(copy, views[part], spec,
                                                                      options)
                if rows is False:
                    break
                ranges.append(ckpt.byte_range(copy.entry, rows))
            else:
                param = model.get_parameter(param_name)
                mapped = map_concatenated(ranges, param.dtype, param.shape)
                if mapped is not None and model.adopt_fused(param_name, mapped):
                    in_place.update(parts)
        return in_place

    def copy_slot(self, ckpt: Checkpoint, copy: Copy, dest: torch.Tensor, spec: ModelSpec,
                  options: LoadOptions) -> None:
        """Read one slot of one checkpoint tensor, narrowed to this rank, into `dest`."""
        entry = copy.entry
        if not dest.dim():  # a scalar scale, stored as () or [1]
            dest.copy_(cast_float(ckpt.read(entry).reshape(()), dest.dtype))
            return
        piece, rows = self._rows(copy, spec, options)
        if (piece is None or piece.dim == 0) and entry.dtype == dest.dtype \
                and dest.is_contiguous():
            ckpt.read_into(entry, dest, rows)  # bytes go straight from the file to the param
            return
        source = ckpt.read(entry, rows)
        if piece is not None and piece.dim == 1:
            source = source[:, piece.start:piece.stop]
        # float -> float rounds once to nearest even (torch's float64 -> bf16 / f16 rounds twice)
        dest.copy_(cast_float(source, dest.dtype) if source.dtype in PLAIN_FLOATS else source)

    def check_finite(self, plan: LoadPlan, state: Mapping[str, torch.Tensor]) -> None:
        """NaN / Inf in a loaded float tensor is bad input (a corrupt shard loads silently
        otherwise): refuse it, naming the checkpoint key and the first bad index."""
        for copy in sorted(plan.copies, key=lambda c: c.entry.key):
            tensor = state[copy.slot.canonical]
            if tensor.dtype in PLAIN_FLOATS or tensor.dtype in FP8_DTYPES:
                bad = ~torch.isfinite(tensor.float())  # FP8: the NaN codes 0x7f, 0xff
                if bool(bad.any()):
                    index = [int(i) for i in bad.nonzero()[0]]
                    raise self.about_tensor(NonFiniteInputError(
                        f"{copy.entry.key} ({copy.entry.file}): {int(bad.sum())} non-finite "
                        f"values, first at {index} of {copy.slot.canonical}",
                        subject=copy.entry.key), copy.slot.canonical)

    def requantize_serialized(self, views: Mapping[str, torch.Tensor], spec: ModelSpec,
                              loaded: set[str]) -> None:
        """Post-processing of a serialized FP8 checkpoint under `fp8_fused_scales`
        max_requant: each fused q/k/v and gate/up group is requantized to the max of its
        scale slots, and its input scales replaced by their max (vLLM). Every slot was
        written by the checkpoint (a fused-on-disk scale fills them all)."""
        if self.fp8_rules.scale_storage != "float32":  # issue 17: scales in the weight dtype
            dtype = views["model.embed_tokens.weight"].dtype
            table = parameter_table(spec)
            for name in sorted(n for n in loaded if n in table and table[n].is_scale):
                views[name].copy_(self.fp8_rules.stored_scale(views[name], dtype))
        if self.fp8_rules.fused_scales_of(spec) != "max_requant":
            return
        for layer in range(spec.num_layers):
            for parts in FUSED_PROJECTIONS.values():
                group = tuple(f"model.layers.{layer}.{p}.weight" for p in parts)
                if not all(n in loaded and scale_name(n) in loaded for n in group):
                    continue
                new = requantize_to_max(views, {n: views[scale_name(n)] for n in group},
                                        group, self.fp8_rules)
                for name, (codes, scale) in new.items():
                    views[name].copy_(codes)
                    views[scale_name(name)].copy_(scale)
                inputs = [input_scale_name(n) for n in group]
                if all(n in loaded for n in inputs):
                    top = torch.stack([views[n] for n in inputs]).max()
                    for name in inputs:
                        views[name].copy_(top)

    def quantize_online(self, views: Mapping[str, torch.Tensor], spec: ModelSpec,
                        loaded: set[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Online FP8 codes and scales per canonical weight, for every quantization group
        whose weights were all loaded (a missing weight's value is unspecified)."""
        weights = {n: views[n] for n in spec.quantized_weights()}
        return quantize_groups(weights, spec, self.fp8_rules, only=loaded)

    def check_quant_layout(self, spec: ModelSpec, options: LoadOptions) -> None:
        """Refuse, before reading anything, a quantized layout the format cannot hold under
        the declared variants and this tp_size (block FP8: reference/quant/fp8_block.py)."""
        quant = spec.quant or (QuantSpec("fp8_block", options.quant_block)
                               if options.quant_block else None)
        if quant is not None:
            format_of(quant).check_layout(quant, spec, options.tp_size, self.variants)

    def quantize_online_blocks(self, views: Mapping[str, torch.Tensor], spec: ModelSpec,
                               loaded: set[str], block: tuple[int, int]
                               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Online block FP8 codes and scale grids per canonical weight that was loaded
        (each matrix its own blocks: fusion never changes them)."""
        weights = {n: views[n] for n in spec.quantized_weights()}
        return quantize_block_weights(weights, block, self.fp8_rules, only=loaded)

    def finish(self, model: TinyDecoderLM, options: LoadOptions) -> None:
        """The device move after loading: device only, never dtype."""
        model.move_to(options.device)
