"""Which CPU a latency was measured on, so nobody mistakes an x86 figure for a phone's."""

import platform

# SIMD features that change how fast LiteRT's int8 and float kernels run.
_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni",
               "amx_int8", "neon", "asimd", "asimddp", "i8mm", "sve")


def cpu_description():
    """Returns the CPU model name and its SIMD features from /proc/cpuinfo.

    Returns:
        A dict `{"name": str, "simd": [str, ...], "machine": str}`; on systems
        without /proc/cpuinfo the name falls back to `platform.processor()`.

    Example:

    >>> cpu_description()["simd"]
    ['sse4_2', 'avx', 'avx2', 'fma', 'f16c']
    """
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not name:
                    name = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {
        "name": name or platform.processor() or "unknown CPU",
        "simd": [f for f in _SIMD_FLAGS if f in flags],
        "machine": platform.machine(),
    }
