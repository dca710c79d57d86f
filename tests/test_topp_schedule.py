"""Which schedule the top-p threshold search runs where a call names none (``RTPURBO_SEARCH_SCHEDULE``)."""
from __future__ import annotations

import pytest
import torch

topp = pytest.importorskip("rtpurbo.ops.triton.topp", reason="the Triton kernels need triton (the test extra has it)")


def test_default_schedule_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(topp.SCHEDULE_ENV, raising=False)
    assert topp.default_schedule() == "phased"
    monkeypatch.setenv(topp.SCHEDULE_ENV, "relay")
    assert topp.default_schedule() == "relay"
    assert topp.launch_settings()["search_schedule"] == "relay"
    monkeypatch.setenv(topp.SCHEDULE_ENV, "sorted")
    with pytest.raises(ValueError, match=f"{topp.SCHEDULE_ENV} must be one of"):
        topp.default_schedule()


def test_select_runs_the_default_schedule_unless_the_call_names_one(monkeypatch):
    """``select`` hands the search the environment's schedule when given none, and the caller's when given one."""
    seen = []

    def scores(q_idx, k_idx, q_pos, k_pos, **_):
        batch, n_kv, n_keys = q_idx.shape[0], q_idx.shape[1], k_idx.shape[2]
        rows = batch * n_kv
        stat = torch.zeros(rows, 1)
        return topp.kernels.IndexScores(torch.zeros(batch, n_kv, n_keys), stat, stat, stat.int(),
                                        torch.full((rows, 1), -1, dtype=torch.int32), stat)

    def search(flat_scores, *_, schedule, **__):
        seen.append(schedule)
        rows, n_keys = flat_scores.shape
        return torch.zeros(rows, n_keys, dtype=torch.int64), torch.zeros(rows, dtype=torch.int64)

    monkeypatch.setattr(topp.kernels, "index_scores", scores)
    monkeypatch.setattr(topp.threshold, "topp_threshold", search)
    args = (torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 8, 16), torch.full((1, 1), 7), torch.arange(8)[None])
    monkeypatch.delenv(topp.SCHEDULE_ENV, raising=False)
    topp.select(*args, top_p=0.9)
    monkeypatch.setenv(topp.SCHEDULE_ENV, "relay")
    topp.select(*args, top_p=0.9)
    topp.select(*args, top_p=0.9, schedule="fused")
    assert seen == ["phased", "relay", "fused"]


def test_dependent_launch_is_on_unless_switched_off(monkeypatch):
    """``RTPURBO_PDL``: on by default (it still needs a GPU of compute capability 9.0 or later), ``0`` switches it off,
    anything else is refused with the variable's name."""
    from rtpurbo.ops.triton import dependent_launch

    monkeypatch.delenv(dependent_launch.ENV, raising=False)
    assert dependent_launch._from_environment() is True
    monkeypatch.setenv(dependent_launch.ENV, "0")
    assert dependent_launch._from_environment() is False
    monkeypatch.setenv(dependent_launch.ENV, "off")
    with pytest.raises(ValueError, match="RTPURBO_PDL must be 0"):
        dependent_launch._from_environment()
    assert dependent_launch.enabled(torch.device("cpu")) is False


def _fake_kernels(monkeypatch, events):
    """topp's kernels replaced by ones that log their launches to ``events`` (the search logs its level 0 launch and
    calls ``after_level0`` there, as topp_threshold does)."""

    def scores(q_idx, k_idx, q_pos, k_pos, **_):
        events.append("scores")
        batch, n_kv, n_keys = q_idx.shape[0], q_idx.shape[1], k_idx.shape[2]
        rows = batch * n_kv
        stat = torch.zeros(rows, 1)
        return topp.kernels.IndexScores(torch.zeros(batch, n_kv, n_keys), stat, stat, stat.int(),
                                        torch.zeros(rows, 1, dtype=torch.int32), stat)

    def search(flat_scores, *_, after_level0=None, until_cut=False, **__):
        events.append("level 0")
        if after_level0 is not None:
            after_level0()
        events.append("search")
        rows, n_keys = flat_scores.shape
        if until_cut:
            return topp.threshold.Threshold(torch.zeros(rows, dtype=torch.int64), torch.zeros(rows, 5, 13))
        return torch.zeros(rows, n_keys, dtype=torch.int64), torch.zeros(rows, dtype=torch.int64)

    def count(values, *_, **__):
        events.append("search")
        return torch.zeros(values.shape[0], dtype=torch.int64)

    def attention(q, k, *_, **__):
        events.append("attention")
        return torch.zeros_like(q), torch.zeros(k.shape[0], k.shape[1], dtype=torch.int64)

    monkeypatch.setattr(topp.kernels, "index_scores", scores)
    monkeypatch.setattr(topp.kernels, "topp_count", count)
    monkeypatch.setattr(topp.kernels, "decode_attention", attention)
    monkeypatch.setattr(topp.cut_attend, "cut_attend", attention)
    monkeypatch.setattr(topp.threshold, "topp_threshold", search)
    monkeypatch.setattr(topp, "_check", lambda *_: None)


_ARGS = (torch.zeros(1, 2, 1, 8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.full((1, 1), 7),
         torch.arange(8)[None], torch.zeros(1, 1, 1, 16), torch.zeros(1, 1, 8, 16))  # q, k, v, positions, indexer


def test_after_scores_runs_once_right_after_the_index_scores(monkeypatch):
    """``after_scores`` (where a layer forks its local heads) runs once, after the index-score launch and before the
    search, for both selection methods; over every key (``top_p = 1``) once, before the attention."""
    events = []
    _fake_kernels(monkeypatch, events)
    hook = lambda: events.append("fork")  # noqa: E731
    args = _ARGS
    for method, search in (("threshold", ["level 0", "search"]), ("sort", ["search"])):
        events.clear()
        topp.select(*args[5:], args[3], args[4], top_p=0.9, method=method, after_scores=hook)
        assert events == ["scores", "fork", *search], (method, events)
    events.clear()
    topp.topp_attention(*args, top_p=0.9, after_scores=hook)
    assert events == ["scores", "fork", "level 0", "search", "attention"], events
    events.clear()
    topp.topp_attention(*args, top_p=1.0, after_scores=hook)
    assert events == ["fork", "attention"], events


def test_attention_selects_by_the_cut_below_its_key_count(monkeypatch):
    """The phased schedule's top-p attention ends its search at tau and the cut, and attends through ``cut_attend``,
    below ``CUT_ATTEND_MAX_KEYS`` cached keys; from there on, and under the other schedules, the search writes the
    list of slots and the list attention reads it."""
    events = []
    _fake_kernels(monkeypatch, events)
    calls = []
    monkeypatch.setattr(topp.cut_attend, "cut_attend", lambda q, *_, **__: calls.append("cut") or (
        torch.zeros_like(q), torch.zeros(1, 1, dtype=torch.int64)))
    monkeypatch.setattr(topp.kernels, "decode_attention", lambda q, *_, index=None, **__: calls.append(
        "list" if index is not None else "every key") or (torch.zeros_like(q), torch.zeros(1, 1, dtype=torch.int64)))
    for limit, schedule, expected in ((9, "phased", "cut"), (8, "phased", "list"), (9, "relay", "list"),
                                      (9, "fused", "list")):
        monkeypatch.setattr(topp, "CUT_ATTEND_MAX_KEYS", limit)  # _ARGS cache 8 keys
        calls.clear()
        topp.topp_attention(*_ARGS, top_p=0.9, schedule=schedule)
        assert calls == [expected], (limit, schedule, calls)


def test_after_scores_runs_after_level0_from_the_long_context_threshold(monkeypatch):
    """From ``FORK_AFTER_LEVEL0_KEYS`` cached keys the threshold method calls ``after_scores`` once level 0 of the
    search is launched; the sort method (no levels) still right after the index scores."""
    events = []
    _fake_kernels(monkeypatch, events)
    monkeypatch.setattr(topp, "FORK_AFTER_LEVEL0_KEYS", 8)  # the 8 cached keys of _ARGS
    hook = lambda: events.append("fork")  # noqa: E731
    args = _ARGS
    topp.topp_attention(*args, top_p=0.9, after_scores=hook)
    assert events == ["scores", "level 0", "fork", "search", "attention"], events
    events.clear()
    topp.select(*args[5:], args[3], args[4], top_p=0.9, method="sort", after_scores=hook)
    assert events == ["scores", "fork", "search"], events
    monkeypatch.setattr(topp, "FORK_AFTER_LEVEL0_KEYS", 9)
    events.clear()
    topp.topp_attention(*args, top_p=0.9, after_scores=hook)
    assert events == ["scores", "fork", "level 0", "search", "attention"], events


def test_topp_threshold_calls_after_level0_between_level0_and_level1(monkeypatch):
    """``topp_threshold(after_level0=...)`` runs the hook once, after the launch of phase 0 and before phase 1's, in
    the phased and relay schedules, and after the fused schedule's one launch."""
    from rtpurbo.ops.triton import threshold

    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, FIRST, LAST, **kw: launches.append(f"phases {FIRST}-{LAST}")

    monkeypatch.setattr(threshold, "_search_kernel", Kernel())
    rows, n_keys = 2, 64
    stats = torch.zeros(rows, 1)
    for schedule, expected in (("phased", ["phases 0-0", "fork", "phases 1-1"]),
                               ("relay", ["phases 0-0", "fork", "phases 1-1"]), ("fused", ["phases 0-5", "fork"])):
        launches.clear()
        threshold.topp_threshold(torch.zeros(rows, n_keys), stats, stats, stats.int(), stats, top_p=0.9, min_tokens=0,
                                 max_tokens=None, schedule=schedule, after_level0=lambda: launches.append("fork"))
        assert launches[: len(expected)] == expected, (schedule, launches)
        assert launches.count("fork") == 1, (schedule, launches)


def test_api_runs_after_scores_first_on_the_reference_backend():
    from rtpurbo.ops import api

    calls = []
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 1, 8, 8)
    api.topp_attention(q, k, k, torch.full((1, 1), 7), torch.arange(8)[None], torch.randn(1, 1, 1, 16),
                       torch.randn(1, 1, 8, 16), top_p=0.9, impl="reference", after_scores=lambda: calls.append(1))
    assert calls == [1]


def test_level0_takes_512_key_steps_only_in_one_wave(monkeypatch):
    """Level 0's sub-step (``SUB``) is 512 keys where the phased or relay launch has at most one program per SM, else
    256; never more than ``block``; the fused schedule keeps 256."""
    from rtpurbo.ops.triton import threshold

    subs = []

    class Kernel:
        def __getitem__(self, grid):
            def launch(*args, FIRST, SUB, **kw):
                if FIRST == 0:
                    subs.append((grid[0] * grid[1], SUB))
            return launch

    monkeypatch.setattr(threshold, "_search_kernel", Kernel())
    sms = threshold._num_sms(torch.device("cpu"))
    for rows, block, schedule, programs, expected in (
            (1, 2048, "phased", 2, 512),  # 2 programs of 2,048 keys: one wave
            (1, 2048, "relay", 2, 512),
            (1, 256, "phased", 16, 256),  # never past block
            (sms, 2048, "phased", 2 * sms, 256),  # 2 programs per row: more programs than SMs
            (1, 2048, "fused", 1, 256)):
        subs.clear()
        stats = torch.zeros(rows, 1)
        threshold.topp_threshold(torch.zeros(rows, 4096), stats, stats, stats.int(), stats, top_p=0.9, min_tokens=0,
                                 max_tokens=None, block=block, schedule=schedule)
        assert subs == [(programs, expected)], (rows, block, schedule, subs)
