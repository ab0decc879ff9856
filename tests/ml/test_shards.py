"""Sharding the sample across hosts: blocks of whole generation batches."""

from flan_t5_detox.ml.shards import block


def test_blocks_are_whole_batches_that_cover_the_sample_once():
    for n, count, unit in [(12, 2, 6), (9, 2, 4), (320, 3, 16), (5, 4, 16), (7, 3, 1)]:
        blocks = [block(n, i, count, unit) for i in range(count)]
        assert [p for b in blocks for p in b] == list(range(n))
        assert all(b[0] % unit == 0 for b in blocks if b)  # every block starts a batch
        sizes = [-(-len(b) // unit) for b in blocks]  # batches per host
        assert max(sizes) - min(sizes) <= 1
    assert [block(5, i, 4, 16) for i in range(4)] == [[], [], [], [0, 1, 2, 3, 4]]  # one batch, one host
