import pytest

from flan_t5_detox.ml.minibatches import StepPlan


def _global_minibatches(batch, mini, world, seed, step, epoch):
    """Each global mini-batch as the set of global rows its ranks' shares hold."""
    plans = [StepPlan(batch, mini, world, rank) for rank in range(world)]
    merged = None
    for plan in plans:
        rows = plan.rows()
        parts = [{rows[i] for i in local} for local in plan.epoch(seed, step, epoch)]
        merged = parts if merged is None else [a | b for a, b in zip(merged, parts)]
    return merged


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_split_the_global_batch_without_overlap(world):
    plans = [StepPlan(16, 4, world, rank) for rank in range(world)]
    rows = [row for plan in plans for row in plan.rows()]
    assert sorted(rows) == list(range(16))
    assert all(len(plan.rows()) == 16 // world for plan in plans)
    for plan in plans:
        assert all(len(mb) == 4 // world for mb in plan.epoch(7, 3, 1))


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_the_global_minibatches_do_not_depend_on_the_world_size(epoch):
    one = _global_minibatches(16, 4, 1, seed=7, step=3, epoch=epoch)
    assert _global_minibatches(16, 4, 2, 7, 3, epoch) == one
    assert _global_minibatches(16, 4, 4, 7, 3, epoch) == one
    assert sorted(row for mb in one for row in mb) == list(range(16))


def test_later_epochs_mix_the_minibatches_anew_and_reproducibly():
    first = _global_minibatches(16, 4, 1, 7, 3, 0)
    second = _global_minibatches(16, 4, 1, 7, 3, 1)
    assert first == [set(range(k * 4, k * 4 + 4)) for k in range(4)]  # epoch 0: the grid as laid out
    assert second != first
    assert second == _global_minibatches(16, 4, 1, 7, 3, 1)
    assert second != _global_minibatches(16, 4, 1, 7, 4, 1)  # another step, another shuffle


def test_a_split_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="multiple of mini_batch_size 4, and that of the 3 processes"):
        StepPlan(16, 4, 3)
    with pytest.raises(ValueError):
        StepPlan(10, 4)
