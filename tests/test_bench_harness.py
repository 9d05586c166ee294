"""The benchmark harness's own parsing (bench/harness.py): what gpu.sh's tables are made of."""

from __future__ import annotations

from bench.harness import GpuBusy, busy_share


def test_gpu_busy_share_is_the_mean_of_nvidia_smis_samples():
    assert busy_share("87\n93\n\n90\n") == 90.0
    assert busy_share("[N/A]\n50\n") == 50.0  # a sample the driver could not give is skipped
    assert busy_share("") is None


def test_gpu_busy_without_nvidia_smi_says_nothing(monkeypatch):
    monkeypatch.setattr("bench.harness.shutil.which", lambda name: None)
    with GpuBusy() as busy:
        pass
    assert busy.share is None
