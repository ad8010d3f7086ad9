# The fixed kernel registry. Devices run only what is named here, with bounded parameters.
# A kernel's module is imported when it is first asked for: a board then holds only the twins
# it runs (on MicroPython's unix port every imported module's bytecode sits in the heap).
from edge_agent.core.kernels.base import KernelError, run

NAMES = ("gemm_i8", "montecarlo_pi", "sha256_search")


def get(name):
    if name not in NAMES:
        raise KernelError("unknown kernel %r" % (name,))
    package = __import__("edge_agent.core.kernels." + name)
    return getattr(package.core.kernels, name)


def __getattr__(attr):
    # A kernel's name imports it (MicroPython's `from ... import gemm_i8` asks here first);
    # REGISTRY ({name: module}) imports every kernel: for callers that want them all.
    if attr in NAMES:
        return get(attr)
    if attr == "REGISTRY":
        return dict((name, get(name)) for name in NAMES)
    raise AttributeError(attr)


__all__ = ["NAMES", "REGISTRY", "KernelError", "get", "run"]
