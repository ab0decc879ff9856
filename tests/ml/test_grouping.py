"""Length groups (`grouping.length_groups`): bounded rows and padding."""

from flan_t5_detox.ml.grouping import length_groups


def test_length_groups_bound_rows_and_padding():
    lengths = [(10, 100), (12, 104), (10, 106), (10, 300), (10, 300), (10, 300), (10, 300), (10, 300)]
    groups = length_groups(lengths, max_rows=4)
    assert groups == [[0, 1, 2], [3, 4, 5, 6], [7]]
    for group in groups:
        padded = len(group) * (max(lengths[i][0] for i in group) + max(lengths[i][1] for i in group))
        assert padded <= 1.1 * sum(sum(lengths[i]) for i in group)
    assert length_groups(lengths, max_rows=1) == [[i] for i in range(8)]
    # the padding a short query would take on next to a long one counts too
    assert length_groups([(10, 100), (60, 100)], max_rows=4) == [[0], [1]]
