"""Wire protocol v1: schemas, limits, topics and the signed envelope, against pynacl."""

from __future__ import annotations

import hashlib
from typing import Any

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core import cbor, ed25519, signing
from edge_agent.core import protocol as p

SEED = bytes(range(32))
KEY = nacl.signing.SigningKey(SEED)
PUB = bytes(KEY.verify_key)
DEV = p.device_id(PUB)


def nacl_sign(msg: bytes) -> bytes:
    return KEY.sign(msg).signature


def result_body(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "lease": b"L" * 16,
        "task": b"T" * 16,
        "dev": DEV,
        "kernel": "montecarlo_pi",
        "rhash": p.result_hash({"inside": 3, "points": 4}),
        "units": 4,
        "started": 1_700_000_000,
        "finished": 1_700_000_001,
    }
    fields.update(over)
    return p.message("result", **fields)


CPYTHON_SEALED_SHA256 = "ff2096af825365f8057bcb2773dc4f21475790982ce6fededd007785adb63566"


def test_device_id_is_sha256_prefix_hex() -> None:
    assert hashlib.sha256(PUB).hexdigest()[:32] == DEV
    assert p.is_device_id(DEV)


def test_topics_round_trip_and_reject_wrong_shapes() -> None:
    assert p.parse_topic(p.device_topic(DEV, "pull")) == ("pull", DEV)
    tok = "tok-" + "ab" * 8
    assert p.parse_topic(p.enrol_topic(tok)) == ("enrol", tok)
    for bad in [
        p.device_topic(tok, "pull"),  # token account under dev/: the ACL allows it, we don't
        p.enrol_topic(DEV),  # device under enrol/
        p.device_topic(DEV.upper(), "pull"),
        p.device_topic(DEV, "inbox"),
        f"edge/v2/dev/{DEV}/pull",
        f"edge/v1/dev/{DEV}/pull/x",
        p.inbox_topic(DEV),
    ]:
        with pytest.raises(p.ProtocolError) as e:
            p.parse_topic(bad)
        assert e.value.code == "bad_topic"


def test_sealed_result_verifies_with_pynacl_and_core_signatures_identically() -> None:
    body = result_body()
    sealed_nacl = p.seal(body, nacl_sign, attachment={"inside": 3, "points": 4})
    sealed_core = p.seal(
        body, lambda m: ed25519.sign(SEED, m), attachment={"inside": 3, "points": 4}
    )
    assert sealed_nacl == sealed_core  # Ed25519 is deterministic, CBOR canonical
    got, b, att = p.open_sealed(
        sealed_nacl, p.MAX_PAYLOAD["result"], ed25519.verify, PUB, ("result",)
    )
    assert got == body and att == {"inside": 3, "points": 4}
    assert p.receipt_id(b) == hashlib.sha256(cbor.dumps(body)).digest()
    # The MicroPython test checks its own sealing against this digest.
    assert hashlib.sha256(sealed_nacl).hexdigest() == CPYTHON_SEALED_SHA256


def test_every_flipped_bit_of_a_sealed_message_is_rejected() -> None:
    sealed = p.seal(result_body(), nacl_sign)
    for i in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(p.ProtocolError):
            p.open_sealed(bytes(bad), 4096, signing.verify, PUB, ("result",))


def test_signature_by_another_key_or_for_another_type_is_rejected() -> None:
    other = nacl.signing.SigningKey(b"\x01" * 32)
    sealed = p.seal(result_body(), lambda m: other.sign(m).signature)
    with pytest.raises(p.ProtocolError) as e:
        p.open_sealed(sealed, 4096, signing.verify, PUB, ("result",))
    assert e.value.code == "bad_signature"
    with pytest.raises(p.ProtocolError) as e:
        p.open_sealed(p.seal(result_body(), nacl_sign), 4096, signing.verify, PUB, ("ack",))
    assert e.value.code == "bad_schema"


def test_envelope_type_must_match_signed_body() -> None:
    b = cbor.dumps(result_body())
    env = cbor.dumps({"v": 1, "t": "ack", "b": b, "s": nacl_sign(p.CONTEXT + b)})
    with pytest.raises(p.ProtocolError, match="unexpected message type 'result'"):
        p.open_sealed(env, 4096, signing.verify, PUB, ("ack",))


def test_signature_without_context_prefix_is_rejected() -> None:
    b = cbor.dumps(result_body())
    env = cbor.dumps({"v": 1, "t": "result", "b": b, "s": nacl_sign(b)})
    with pytest.raises(p.ProtocolError) as e:
        p.open_sealed(env, 4096, signing.verify, PUB, ("result",))
    assert e.value.code == "bad_signature"


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"units": -1}, "result.units"),
        ({"units": True}, "result.units"),
        ({"lease": b"short"}, "result.lease"),
        ({"dev": "X" * 32}, "result.dev"),
        ({"kernel": "Bad-Name"}, "result.kernel"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_schema_rejections_name_the_field(over: dict[str, Any], needle: str) -> None:
    body = dict(result_body())
    body.update(over)
    with pytest.raises(p.ProtocolError, match=needle) as e:
        p.validate(body)
    assert e.value.code == "bad_schema"


def test_missing_field_version_and_type() -> None:
    body = dict(result_body())
    del body["rhash"]
    with pytest.raises(p.ProtocolError, match="missing field 'rhash'"):
        p.validate(body)
    with pytest.raises(p.ProtocolError, match="version"):
        p.validate({**result_body(), "v": 2})
    with pytest.raises(p.ProtocolError, match="unknown message type"):
        p.validate({"v": 1, "t": "nope"})


def test_size_limit_checked_before_decoding() -> None:
    with pytest.raises(p.ProtocolError) as e:
        p.decode(b"\xa0" * 600, p.MAX_PAYLOAD["pull"])
    assert e.value.code == "too_large"


def test_state_message_is_small_and_optional_fields_may_be_null() -> None:
    will = p.encode(p.message("state", online=False))
    assert len(will) < 32
    doc = p.message(
        "state",
        online=True,
        seq=7,
        at=1_700_000_000,
        battery_pct=81,
        charging=True,
        battery_dc=312,
        hottest_mc=45600,
        throttled=False,
        decision="run",
        code="ok",
        why="running at full speed",
        duty_pm=1000,
    )
    assert p.decode(p.encode(doc), p.MAX_PAYLOAD["state"]) == doc
    assert p.validate({**doc, "battery_pct": None})["battery_pct"] is None


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_protocol_error(data: bytes) -> None:
    for kind in ("pull", "state", "blob"):
        try:
            p.decode(data, p.MAX_PAYLOAD[kind], expect=("pull", "state", "blob_get"))
        except p.ProtocolError as e:
            assert e.code in p.ERRORS
    try:
        p.open_sealed(data, 4096, signing.verify, PUB, ("result",))
    except p.ProtocolError as e:
        assert e.code in p.ERRORS
