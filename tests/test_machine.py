from edgedistill.machine import estimate_peak_tflops, machine_info, measure_bandwidth
from edgedistill.profiles import load_profile


def test_machine_info_reads_the_os():
    info = machine_info()
    assert info.logical_cpus >= 1 and info.physical_cores >= 1
    assert info.ram_total_gb > 0.5
    assert info.ram_available_gb <= info.ram_total_gb


def test_bandwidth_benchmark_returns_a_plausible_figure():
    bw = measure_bandwidth(threads=2, mib_per_thread=16, repeats=2)
    assert 0.5 < bw < 2000  # GB/s: any real machine lands in this range


def test_peak_estimate_orders_dtypes():
    peaks = estimate_peak_tflops(machine_info(), threads=2)
    assert peaks["int8"] >= peaks["fp32"] > 0


def test_local_profile_is_measured_and_valid():
    p = load_profile("local")
    assert p.name == "local" and p.measured and p.kind == "cpu"
    assert p.memory.bandwidth_gbps > 0.5 and p.memory.budget_gb > 0
    assert p.host["physical_cores"] >= 1 and "flags" in p.host
    assert p.source.startswith("measured")
