"""Environment fingerprint recorded with every measurement: hardware, versions, git commit."""

import platform
import subprocess
from pathlib import Path

import torch
import torchvision

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _run(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=PROJECT_ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit():
    """Return the HEAD commit, with `-dirty` when tracked files have uncommitted changes, or `unknown` outside git."""
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"])
    if not commit:
        return "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return commit + ("-dirty" if dirty else "")


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(device="auto"):
    """`auto` picks CUDA when available, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is invalid; use cpu, cuda, cuda:N or auto") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        # Either torch is a CPU-only build or it finds no GPU and driver.
        raise RuntimeError(f"device {device} requested but torch finds no usable CUDA GPU "
                           f"(CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto")
    return device


def environment_fingerprint(device):
    """Describe the device and software that produced a measurement."""
    device = torch.device(device)
    info = {
        "device": device.type,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available() else "",
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["driver_version"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).split("\n")[0]
    else:
        threads = torch.get_num_threads()
        info["device_name"] = f"{cpu_name()} ({threads} thread{'s' if threads != 1 else ''})"
        info["driver_version"] = ""
    return info
