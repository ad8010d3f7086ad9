# The contract every kernel follows, shared by the Python twins and the C backend.
#
# A kernel is a module with:
#   NAME                         registry name
#   validate(params) -> dict     checked, normalised params (defaults filled); raises KernelError
#   work_units(params) -> int    deterministic work of the task, from validated params only
#   start(params) -> dict        initial resumable state; always holds "units" (work done so far)
#   step(params, state, max_units) -> int
#                                advance `state` in place by at most max_units (but at least one
#                                indivisible piece, e.g. one row), return the units done
#   result(params, state) -> dict   final result, once state["units"] == work_units(params)
# States and results are CBOR-able dicts of ints, bytes and lists, identical between backends, so a
# checkpoint written by the C kernel resumes in the Python twin and the other way round.


class KernelError(ValueError):
    """A task's parameters or state are invalid. Raised before any kernel code runs."""


def check_int(params, key, lo, hi, default=None):
    v = params.get(key, default)
    if v is None:
        raise KernelError("missing param %r" % key)
    if type(v) is not int:
        raise KernelError("param %r must be an int" % key)
    if v < lo or v > hi:
        raise KernelError("param %r=%d out of range [%d, %d]" % (key, v, lo, hi))
    return v


def check_bytes(params, key, min_len, max_len, default=None):
    v = params.get(key, default)
    if v is None:
        raise KernelError("missing param %r" % key)
    if type(v) is not bytes:
        raise KernelError("param %r must be bytes" % key)
    if len(v) < min_len or len(v) > max_len:
        raise KernelError("param %r has %d bytes, want %d..%d" % (key, len(v), min_len, max_len))
    return v


def check_bool(params, key, default=None):
    v = params.get(key, default)
    if type(v) is not bool:
        raise KernelError("param %r must be a bool" % key)
    return v


def check_keys(params, allowed):
    if type(params) is not dict:
        raise KernelError("params must be a map")
    for k in params:
        if k not in allowed:
            raise KernelError("unknown param %r" % (k,))


def run(kernel, params, chunk_units=0, step=None):
    """Validate and run a kernel to completion, in chunks of chunk_units (0: one chunk).

    `step` replaces the kernel's own step (the C backend passes its own)."""
    p = kernel.validate(params)
    total = kernel.work_units(p)
    state = kernel.start(p)
    step = step or kernel.step
    budget = chunk_units if chunk_units > 0 else total
    while state["units"] < total:
        step(p, state, budget)
    return kernel.result(p, state)
