"""GPU benchmarks: record the card's name in the benchmark JSON (machine_info.gpu) for the report."""

import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    if torch.cuda.is_available():
        machine_info["gpu"] = (
            f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
