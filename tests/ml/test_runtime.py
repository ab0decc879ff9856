import torch

from flan_t5_detox.ml.runtime import AVX512_CORE, mkl_cpu_type, pick_dtype, setup, versions


def test_dtype_follows_the_request_and_cpu_capability():
    assert pick_dtype("float32") is torch.float32
    assert pick_dtype("bfloat16") is torch.bfloat16
    assert pick_dtype("auto", flags={"avx512f", "avx2"}) is torch.float32  # Skylake/Cascade Lake (ml.m5)
    assert pick_dtype("auto", flags={"avx512f", "avx512_bf16"}) is torch.bfloat16


def test_mkl_gets_its_fast_kernels_on_amd_only():
    zen4 = AVX512_CORE | {"avx2", "fma", "avx512_bf16"}
    assert mkl_cpu_type("AuthenticAMD", zen4) == "7"
    assert mkl_cpu_type("AuthenticAMD", {"avx", "avx2", "fma"}) == "5"  # Zen 2/3
    assert mkl_cpu_type("AuthenticAMD", {"avx", "sse4_2"}) is None
    assert mkl_cpu_type("GenuineIntel", zen4) is None  # MKL picks well on Intel


def test_setup_sets_the_threads_and_reports_what_it_chose():
    previous = torch.get_num_threads()
    try:
        machine = setup("float32", 1)
        assert torch.get_num_threads() == 1 and machine.threads == 1
        assert machine.describe()["dtype"] == "float32" and machine.cpu
    finally:
        torch.set_num_threads(previous)


def test_versions_name_the_pinned_stack():
    found = versions()
    assert found["torch"].startswith("1.13") and found["transformers"] == "4.27.2" and found["python"]
