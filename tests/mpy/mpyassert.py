# Assertion helpers for tests that run under MicroPython (no pytest there).


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception of exc_type it raised; fail if it raised none."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError("%s not raised by %r" % (exc_type.__name__, fn))


def load_json(path):
    import json

    with open(path) as f:
        return json.load(f)


def unhex(s):
    import binascii

    return binascii.unhexlify(s)
