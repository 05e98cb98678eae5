"""What this machine can run: memory, cores, accelerators, battery -- read, never guessed.

* memory and cores: :mod:`psutil`;
* execution providers: ``onnxruntime.get_available_providers()``;
* accelerators: ONNX Runtime's hardware device list (``get_ep_devices``) for
  GPUs / NPUs, and for NVIDIA GPUs the CUDA driver itself (``libcuda`` via
  ctypes) for the number of streaming multiprocessors and the device memory;
* battery: ``psutil.sensors_battery()`` where the platform has one.

``accelerator_cores`` is the sum of the accelerators' compute units (SMs on
NVIDIA); an accelerator whose units cannot be read counts as one. Tests pass a
hand-made :class:`Capabilities` instead of detecting.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass, field

import psutil

from tierflow.runtime.providers import ACCELERATORS, available_providers, short_name

GB = 1024**3


@dataclass(frozen=True)
class Accelerator:
    provider: str  # the ONNX Runtime execution provider that drives it
    device_type: str  # "GPU" or "NPU"
    name: str
    compute_units: int | None = None  # SMs / cores, when the driver tells
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Capabilities:
    memory_total_bytes: int
    memory_available_bytes: int | None = None  # None: same as total
    cpu_cores: int = 1  # physical cores
    cpu_threads: int | None = None  # logical cores; None: same as cpu_cores
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    accelerators: tuple[Accelerator, ...] = ()
    battery_percent: float | None = None  # None: no battery
    on_battery: bool | None = None  # True: unplugged
    notes: tuple[str, ...] = field(default=(), compare=False)  # what detection could not read

    @property
    def memory_total_gb(self) -> float:
        return self.memory_total_bytes / GB

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_total_bytes if self.memory_available_bytes is None else self.memory_available_bytes

    @property
    def accelerator_providers(self) -> tuple[str, ...]:
        return tuple(p for p in self.providers if p in ACCELERATORS)

    @property
    def has_accelerator(self) -> bool:
        return bool(self.accelerator_providers)

    @property
    def accelerator_cores(self) -> int:
        if self.accelerators:
            return sum(a.compute_units or 1 for a in self.accelerators)
        return len(self.accelerator_providers)  # a provider with no device detail counts as one

    def has_provider(self, name: str) -> bool:
        """``name`` may be the full provider name or its short form (``CUDA``)."""
        return any(p == name or short_name(p).lower() == name.lower() for p in self.providers)

    def describe(self) -> str:
        parts = [
            f"memory={self.memory_total_gb:.1f}GB",
            f"cores={self.cpu_cores}",
            f"providers={','.join(short_name(p) for p in self.providers)}",
        ]
        if self.accelerators or self.has_accelerator:
            parts.append(f"accelerator_cores={self.accelerator_cores}")
        if self.battery_percent is not None:
            parts.append(f"battery={self.battery_percent:.0f}%{' unplugged' if self.on_battery else ''}")
        return " ".join(parts)


def detect() -> Capabilities:
    """Read this machine's capabilities."""
    vm = psutil.virtual_memory()
    threads = psutil.cpu_count(logical=True) or 1
    cores = psutil.cpu_count(logical=False) or threads
    providers = tuple(available_providers())
    notes: list[str] = []
    accelerators = _accelerators(providers, notes)
    battery_percent: float | None = None
    on_battery: bool | None = None
    with contextlib.suppress(Exception):  # platforms without sensors raise or return None
        battery = psutil.sensors_battery()
        if battery is not None:
            battery_percent = float(battery.percent)
            on_battery = battery.power_plugged is False
    return Capabilities(
        memory_total_bytes=int(vm.total),
        memory_available_bytes=int(vm.available),
        cpu_cores=int(cores),
        cpu_threads=int(threads),
        providers=providers,
        accelerators=tuple(accelerators),
        battery_percent=battery_percent,
        on_battery=on_battery,
        notes=tuple(notes),
    )


def _accelerators(providers: tuple[str, ...], notes: list[str]) -> list[Accelerator]:
    found: list[Accelerator] = []
    cuda_eps = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    if cuda_eps:
        gpus = cuda_devices()
        if gpus is None:
            notes.append("CUDA provider present but the CUDA driver could not be queried")
        for name, units, memory in gpus or []:
            found.append(Accelerator(cuda_eps[0], "GPU", name, units, memory))
    covered = {a.provider for a in found} | set(cuda_eps)
    try:
        import onnxruntime as ort

        for dev in ort.get_ep_devices():
            if dev.ep_name in covered or dev.ep_name not in ACCELERATORS:
                continue
            kind = str(dev.device.type).rsplit(".", 1)[-1]
            if kind in ("GPU", "NPU"):
                found.append(Accelerator(dev.ep_name, kind, str(dev.device.vendor)))
    except Exception:  # older ONNX Runtime without the device API
        notes.append("ONNX Runtime has no device list; accelerators counted by provider")
    return found


def cuda_devices() -> list[tuple[str, int, int]] | None:
    """``(name, multiprocessors, memory bytes)`` per NVIDIA GPU from the CUDA driver; None if unavailable."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        try:
            lib = ctypes.CDLL("nvcuda.dll")
        except OSError:
            return None
    if lib.cuInit(0) != 0:
        return None
    count = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    devices = []
    for ordinal in range(count.value):
        dev = ctypes.c_int()
        if lib.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
            continue
        name = ctypes.create_string_buffer(128)
        lib.cuDeviceGetName(name, 128, dev)
        sms = ctypes.c_int()
        lib.cuDeviceGetAttribute(ctypes.byref(sms), 16, dev)  # CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        mem = ctypes.c_size_t()
        lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        devices.append((name.value.decode(errors="replace"), int(sms.value), int(mem.value)))
    return devices
