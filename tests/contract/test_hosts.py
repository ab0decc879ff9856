import pytest

from flan_t5_detox.contract.hosts import host_name, host_names


def test_hosts_are_named_as_sagemaker_names_them():
    assert host_name(0) == "algo-1" and host_name(9) == "algo-10"
    assert host_names(3) == ["algo-1", "algo-2", "algo-3"]
    assert host_names(0) == []


def test_a_host_index_counts_from_zero():
    with pytest.raises(ValueError, match="counts from 0"):
        host_name(-1)
