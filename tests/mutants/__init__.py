"""Loaders that each carry exactly one known bug (a seed PR's or one from properties.md).

Each module exposes `loader` and a `CATCH` record: the property test expected to catch it
and a pattern that the divergence must name (the tensor, key or buffer at fault).
`tests/test_mutants.py` runs the whole suite against every mutant and proves each is
caught within the `pr` budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.loading import ReferenceLoader

MUTANTS = (
    "seed000_meta_move_before_load", "seed000_move_casts_dtype", "seed000_buffers_not_recomputed",
    "seed004_tracking_exempts_linears", "seed002_bytes_via_finfo", "p7_dtype_size_by_name",
    "p7_subbyte_by_bit_width", "p1_fused_v_reads_k_rows", "p1_tp_rank_ignored",
    "p1_kv_replication_modulo", "p1_padded_vocab_refused", "p2_gate_up_second_half_unwritten", "p2_bf16_by_truncation",
    "p2_float_into_int_cast", "p2_float64_rounds_twice", "p2_bf16_ties_round_up",
    "p2_shape_error_names_stale_key", "p6_missing_error_names_first_only",
    "p6_strict_ignores_missing", "p2_shape_narrowed_to_fit", "p10_tied_head_overwrites_embedding", "p10_meta_init_unties_head",
    "p10_untie_without_comparing", "p10_tied_skips_every_lm_head_key",
    "p11_index_assignment_not_enforced", "p11_span_at_least_shape",
    "p11_globs_every_shard", "p11_last_key_wins", "p11_shard_names_unvalidated", "p11_trusts_header_offsets",
    "p11_unpickles_bin_files",
    "p14_suffix_name_match", "p9_offload_does_nothing", "p9_norms_never_onloaded",
    "p9_host_copies_share_storage", "p9_post_process_reallocates", "p9_placement_bookkeeping_only", "survival_hangs_on_meta_submodule", "survival_aborts_on_bool_extra",
    "seed003_fused_scale_slot0_only", "seed001_reload_keeps_stale_scale",
    "seed001_reload_quantizes_codes", "p4_one_scale_across_fused_shards",
    "p4_scale_in_weight_dtype", "p5_reload_skips_post_processing",
    "p3_max_scale_without_requantizing", "p12_scale_floor_missing",
    "p4_quantize_after_load_per_tensor", "p4_float16_scale_underflows",
    "p12_nan_codes_not_checked", "p12_row_floor_from_tensor_amax", "p6_scales_exempt_from_tracking",
) + (  # block FP8 (issue 16)
    "p3b_tp_scale_rows_not_sliced", "p3b_scale_grid_transposed", "p3b_scale_inv_as_divisor",
    "p4b_partial_edge_block_dropped", "p3b_fused_boundary_misaligned_silently",
) + (  # MXFP4 (issue 16)
    "p3m_nibbles_swapped", "p3m_scale_bias_off_by_one", "p3m_tp_scale_columns_not_sliced",
    "p3m_forward_high_nibble_first",
)


@dataclass(frozen=True)
class Catch:
    """What catching the bug looks like: a failing property and what its message names."""

    bug: str          # one line: the bug, and where it was seen in the wild
    test: str         # a property test that must fail, e.g. "test_meta.py::test_x"
    names: str        # a regex the divergence must match: the tensor, key or buffer at fault
    options: tuple[str, ...] = ()  # extra pytest options the run needs (--isolate, timeouts)
    # Examples within which it must be caught: the project's target is 20 for every known
    # bug; a mutant over it says so here, with why, until the generators are retuned.
    budget: int = 20


class Mutant(ReferenceLoader):
    """Base: a reference loader renamed after its module, so reports say which mutant."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name.rsplit(".", 1)[-1]
