"""conformance/verify.py: what a candidate reports about its storage, against the storage."""

from __future__ import annotations

import torch

from conformance.verify import placement_of_storage, storages, unreported_sharing


def test_overlapping_tensors_must_be_a_reported_alias():
    embedding = torch.zeros(4, 2)
    fused = torch.zeros(6, 2)
    state = {"model.embed_tokens.weight": embedding, "lm_head.weight": embedding[1:],
             "q": fused[:2], "k": fused[2:4], "v": fused[4:], "s_scale": fused[0, 0],
             "q_scale": fused[0, 0]}
    found = unreported_sharing(state, {})
    assert [d.subject for d in found] == ["lm_head.weight"], [d.message for d in found]
    assert "overlaps model.embed_tokens.weight" in found[0].message
    assert not unreported_sharing(state, {"lm_head.weight": "model.embed_tokens.weight"})


def test_placement_report_is_checked_against_storage_identity():
    host, buffer = torch.zeros(3), torch.zeros(3)
    home = storages({"w": host})
    moved = placement_of_storage({"w": "device"}, storages({"w": buffer}), {"w": "host"}, home,
                                 "cpu", "while layer 0 is onloaded")
    assert not moved
    stayed = placement_of_storage({"w": "device"}, home, {"w": "host"}, home, "cpu",
                                  "while layer 0 is onloaded")
    assert len(stayed) == 1 and "nothing was copied" in stayed[0].message
    swapped = placement_of_storage({"w": "host"}, storages({"w": buffer}), {"w": "host"}, home,
                                   "cpu", "after release")
    assert len(swapped) == 1 and "not the host copy" in swapped[0].message
    # a tensor whose state() returns copies has no home to compare: only devices are checked
    assert not placement_of_storage({"w": "host"}, storages({"w": buffer}), {"w": "host"}, {},
                                    "cpu", "after release")
