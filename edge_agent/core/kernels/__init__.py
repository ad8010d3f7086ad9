# The fixed kernel registry. Devices run only what is named here, with bounded parameters.
from edge_agent.core.kernels import gemm_i8, montecarlo_pi, sha256_search
from edge_agent.core.kernels.base import KernelError, run

REGISTRY = {
    gemm_i8.NAME: gemm_i8,
    montecarlo_pi.NAME: montecarlo_pi,
    sha256_search.NAME: sha256_search,
}


def get(name):
    k = REGISTRY.get(name)
    if k is None:
        raise KernelError("unknown kernel %r" % (name,))
    return k


__all__ = ["REGISTRY", "KernelError", "get", "run"]
