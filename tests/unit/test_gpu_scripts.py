"""The pure parts of ``make wheels`` (scripts/gpu_wheels.py) and the skip of ``make test-gpu``."""
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "scripts" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_wheels)


def test_a_manylinux_platform_accepts_every_older_glibc_tag_and_the_legacy_aliases():
    tags = gpu_wheels.expand_platforms(["manylinux_2_28_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-4] == "manylinux_2_5_x86_64"
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "manylinux_2_17_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    legacy = gpu_wheels.expand_platforms(["manylinux2014_aarch64"])
    assert legacy[0] == "manylinux_2_17_aarch64" and "manylinux_2_24_aarch64" not in legacy
    assert gpu_wheels.expand_platforms(["macosx_11_0_arm64"]) == ["macosx_11_0_arm64"]


def test_requirement_names_are_normalised_and_the_image_keeps_torch_and_cuda():
    assert gpu_wheels.requirement_name("megatron_core>=0.13,<0.17") == "megatron-core"
    assert gpu_wheels.requirement_name("Py.CPUInfo ; python_version > '3'") == "py-cpuinfo"
    assert all(gpu_wheels.IMAGE_KEEPS.match(n) for n in ("torch", "triton", "nvidia-cublas-cu12"))
    assert not gpu_wheels.IMAGE_KEEPS.match("torchmetrics")
    names = {gpu_wheels.requirement_name(r) for r in gpu_wheels.project_requirements()}
    assert {"torch", "deepspeed", "megatron-core", "pytest"} <= names


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: make test-gpu would run")
def test_test_gpu_without_a_gpu_says_skipped_and_exits_77_having_installed_nothing(tmp_path):
    env = {**os.environ, "GPU_PYTHON": str(Path(os.sys.executable)), "GPU_VENV": str(tmp_path / "venv")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "test_gpu.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "SKIPPED (exit 77), nothing was tested" in proc.stdout and "sees no CUDA device" in proc.stdout
    assert not (tmp_path / "venv").exists()
    assert "SKIPPED" in (tmp_path / "runs" / "test-gpu" / "REPORT.md").read_text()
