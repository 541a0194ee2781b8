"""nscompile: Neurosurgeon rebuilt as an ONNX graph compiler.

The package root imports nothing heavy so that ``nscompile.runtime`` loads on a device
with only numpy, onnxruntime and an HTTP client. The compiler API is imported lazily.
"""

__version__ = "0.1.0"

from nscompile.errors import NscompileError

__all__ = ["NscompileError", "__version__", "build"]


def __getattr__(name):
    # Lazy: pulling in onnx here would break the device-side runtime import.
    if name == "build":
        from nscompile.compiler import build

        return build
    raise AttributeError(f"module 'nscompile' has no attribute {name!r}")
