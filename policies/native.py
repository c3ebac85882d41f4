"""Small C kernels, compiled on first use with the system C compiler and loaded with ctypes.

A kernel is one C source file next to this module (it may include the ``.h`` files there),
built once per (source and headers, compiler flags, CPU, float type) into a cache folder and
reused by every later process. Without a working compiler (or with ``LIQUID_DRONES_NATIVE=0``)
:func:`load_kernel` returns ``None`` after one warning, and the caller keeps its pure-PyTorch
path: the kernels are an optimisation, never a requirement.

Environment: ``CC`` (compiler, default ``cc``), ``LIQUID_DRONES_NATIVE`` (``0`` disables the
kernels), ``LIQUID_DRONES_CACHE`` (cache folder, default ``~/.cache/liquid-drones``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch

# -ffast-math lets gcc call glibc's vectorised exp (libmvec). It is given to the compile step only:
# linked with it, gcc 12 adds a start file that switches the whole process to flush-to-zero floats.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared",)
C_TYPES = {torch.float32: "float", torch.float64: "double"}
COMPILE_TIMEOUT_S = 120


def enabled() -> bool:
    """False when the user turned the kernels off with ``LIQUID_DRONES_NATIVE=0``."""
    return os.environ.get("LIQUID_DRONES_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    root = os.environ.get("LIQUID_DRONES_CACHE") or Path.home() / ".cache" / "liquid-drones"
    return Path(root) / "native"


@cache
def load_kernel(source_name: str, dtype: torch.dtype) -> ctypes.CDLL | None:
    """The compiled kernel ``policies/<source_name>`` for ``dtype`` (float32 or float64), or None.

    Builds into the cache on first use (about a second); concurrent processes each write to a
    temporary file and rename it into place, so none ever loads a half-written library.
    """
    if not enabled() or dtype not in C_TYPES:
        return None
    source = Path(__file__).with_name(source_name)
    compiler = os.environ.get("CC", "cc")
    flags = (*COMPILE_FLAGS, f"-DREAL={C_TYPES[dtype]}")
    headers = [header.read_text() for header in sorted(source.parent.glob("*.h"))]  # what the source may include
    key = hashlib.sha256("\0".join([source.read_text(), *headers, compiler, *flags, _cpu_signature()]).encode()).hexdigest()
    library = _cache_dir() / f"{source.stem}-{C_TYPES[dtype]}-{key[:16]}.so"
    if not library.exists():
        try:
            _compile(compiler, flags, source, library)
        except (OSError, subprocess.SubprocessError) as error:
            warnings.warn(f"could not compile {source.name} ({error}); using the slower PyTorch path",
                          RuntimeWarning, stacklevel=2)
            return None
    return ctypes.CDLL(str(library))


def _compile(compiler: str, flags: tuple[str, ...], source: Path, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(handle)
    objects = partial[:-3] + ".o"
    try:
        for command in ([compiler, *flags, "-c", "-o", objects, str(source)],
                        [compiler, *LINK_FLAGS, "-o", partial, objects, "-lm"]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            if result.returncode != 0:
                raise subprocess.SubprocessError(
                    f"{' '.join(command)} exited with {result.returncode}: {result.stderr.strip()[:500]}")
        os.replace(partial, library)
    finally:
        for leftover in (partial, objects):
            if os.path.exists(leftover):
                os.unlink(leftover)


def pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    """Address of a contiguous tensor's first element, for a kernel argument.

    The address does not keep the tensor alive: hold the tensor in a variable until the call
    returns (``pointer(x.contiguous())`` on a temporary copy hands the kernel freed memory).
    """
    if not tensor.is_contiguous():
        raise ValueError(f"kernel arguments must be contiguous, got strides {tensor.stride()} for shape {tuple(tensor.shape)}")
    return ctypes.c_void_p(tensor.data_ptr())
