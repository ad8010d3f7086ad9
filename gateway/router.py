"""Routes one MQTT message to its handler and turns every refusal into the protocol's `error`.

Nothing a device sends can crash the gateway or change accepted state: a topic of the wrong
shape, an oversized or malformed payload, a bad signature and any unexpected exception all end
here as a counter (``rejected:<kind>:<code>``), a log line and, when the sender has an inbox (a
known device, or a token account's reply topic), an ``error`` reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent.core import protocol
from gateway.handlers_claim import handle_claim
from gateway.handlers_device import Context, handle_blob, handle_pull, handle_state
from gateway.handlers_enrol import AccountBatcher, handle_enrol
from gateway.handlers_result import handle_result
from gateway.wire import Rejection, Reply, error_payload

log = logging.getLogger(__name__)

Handler = Callable[[Context, str, bytes], list[Reply]]
DEVICE_HANDLERS: dict[str, Handler] = {
    "state": handle_state,
    "pull": handle_pull,
    "blob": handle_blob,
    "result": handle_result,
    "claim": handle_claim,
}


class Router:
    def __init__(self, ctx: Context, batcher: AccountBatcher) -> None:
        self.ctx = ctx
        self.batcher = batcher

    async def handle(self, topic: str, payload: bytes) -> list[Reply]:
        """The replies to one message; never raises (except cancellation)."""
        try:
            kind, who = protocol.parse_topic(topic)
        except protocol.ProtocolError as exc:
            return self._refuse("topic", self._device_in(topic), exc.code, exc.msg, None)
        try:
            if len(payload) > protocol.MAX_PAYLOAD[kind]:
                raise protocol.ProtocolError("too_large", f"{len(payload)} bytes > "
                                             f"{protocol.MAX_PAYLOAD[kind]} for {kind}")
            if kind == "enrol":
                return await handle_enrol(self.ctx, self.batcher, who, payload)
            handler = DEVICE_HANDLERS.get(kind)
            if handler is None:
                raise Rejection("bad_topic", f"{kind} messages are not served by this gateway")
            replies = handler(self.ctx, who, payload)
            self.ctx.count(f"handled:{kind}")
            return replies
        except Rejection as exc:
            return self._refuse(kind, who, exc.code, exc.msg, exc.ref)
        except protocol.ProtocolError as exc:
            return self._refuse(kind, who, exc.code, exc.msg, None)
        except Exception:
            log.exception("%s from %s broke its handler", kind, who)
            return self._refuse(kind, who, "internal", "the gateway failed on this message", None)

    def _device_in(self, topic: str) -> str | None:
        """The device id in a device topic of the wrong kind, so the device hears of it."""
        parts = topic.split("/")
        is_dev = len(parts) >= 4 and "/".join(parts[:3]) == protocol.ROOT + "/dev"
        return parts[3] if is_dev and protocol.is_device_id(parts[3]) else None

    def busy(self, topic: str) -> list[Reply]:
        """The answer to an enrolment beyond the in-flight limit."""
        kind, who = protocol.parse_topic(topic)
        return self._refuse(kind, who, "busy", "too many enrolments in progress, retry", None)

    def _refuse(self, kind: str, who: str | None, code: str, msg: str,
                ref: bytes | None) -> list[Reply]:
        self.ctx.count(f"rejected:{kind}:{code}")
        log.warning("refused %s from %s: %s: %s", kind, who or "?", code, msg)
        if who is None:
            return []
        if kind == "enrol":
            topic = protocol.enrol_reply_topic(who)
        elif protocol.is_device_id(who) and self.ctx.ledger.device(who) is not None:
            topic = protocol.inbox_topic(who)
        else:
            return []
        return [Reply(topic, error_payload(code, msg, ref))]
