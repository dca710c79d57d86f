"""The running sums of the decode-time selection (:class:`rtpurbo.selection_stats.SelectionStats`)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rtpurbo.selection_stats import SelectionStats


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_summary_weights_each_layer_by_its_heads():
    """Two layers with 2 and 1 retrieval heads over three steps: the mean counts every (row, head, step) once, and a
    layer's visible keys count once per head."""
    stats = SelectionStats()
    for step in range(3):
        visible = torch.tensor(100 + step)  # summed over the rows
        stats.record(0, torch.tensor([[[10], [20]]]), visible)
        stats.record(1, torch.tensor([[[30]]]), visible)
    summary = stats.summary()
    assert summary["samples"] == 9
    assert summary["mean_selected"] == pytest.approx((3 * (10 + 20) + 3 * 30) / 9)
    assert summary["mean_fraction"] == pytest.approx(180 / ((2 + 1) * (100 + 101 + 102)))


def test_a_step_records_a_layer_in_one_op():
    """After a layer's first step, recording it is one op (one kernel launch on a GPU), not a sum and two adds."""
    stats = SelectionStats()
    counts, visible = torch.tensor([[[4], [6]]]), torch.tensor(50)
    stats.record(3, counts, visible)
    with _Ops() as ops:
        stats.record(3, counts, visible)
    assert ops.names == ["_foreach_add_.List"], ops.names
    assert int(stats.selected[3].sum()) == 20 and int(stats.visible[3]) == 100


def test_another_batch_keeps_the_total_and_other_heads_are_refused():
    stats = SelectionStats()
    stats.record(0, torch.tensor([[[4]], [[6]]]), torch.tensor(20))  # two rows
    stats.record(0, torch.tensor([[[5]]]), torch.tensor(8))  # one row
    assert stats.summary()["mean_selected"] == pytest.approx(15 / 3)
    with pytest.raises(ValueError, match="retrieval heads"):
        stats.record(0, torch.tensor([[[1], [2]]]), torch.tensor(8))
