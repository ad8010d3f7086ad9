# The one Ed25519 verify the protocol code takes (protocol.open_sealed, rewards.*): pynacl's C
# verify where it is importable (CPython), the pure-Python core verify where it is not
# (MicroPython). Both return False for any bad key or signature and never raise.
from edge_agent.core import ed25519

try:
    from nacl.exceptions import CryptoError
    from nacl.signing import VerifyKey
except ImportError:  # MicroPython: no pynacl
    VerifyKey = None


def nacl_verify(pub, msg, sig):
    """pynacl's verify (CPython only)."""
    try:
        VerifyKey(pub).verify(msg, sig)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def core_verify(pub, msg, sig):
    """edge_agent.core.ed25519's verify; non-bytes arguments give False, as with pynacl."""
    try:
        return bool(ed25519.verify(pub, msg, sig))
    except ValueError:
        return False


verify = core_verify if VerifyKey is None else nacl_verify
