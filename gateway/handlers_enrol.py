"""Enrolment: a token account's signed ``enrol`` -> a device with MQTT credentials.

Proof of possession (the request verifies with the key it carries), the token spent in the
transaction that creates the device, the device account added to the broker (batched: one
password-file rewrite and one reload for every enrolment in a short window), then the reply
``enrolled`` signed by the gateway with the credentials sealed to the device's key. The spent
token's account is removed shortly after the reply has gone out.
"""

from __future__ import annotations

import asyncio
import logging

import nacl.public
import nacl.signing

from edge_agent.core import cbor, protocol, signing
from gateway.accounts import Accounts
from gateway.handlers_device import Context
from gateway.ledger import ENROL_OK
from gateway.wire import Rejection, Reply

log = logging.getLogger(__name__)

_LIMIT = protocol.MAX_PAYLOAD["enrol"]


class AccountBatcher:
    """Collects account changes for ``window_s`` and applies them in one rewrite + reload."""

    def __init__(self, accounts: Accounts, window_s: float, retire_after_s: float) -> None:
        self._accounts = accounts
        self._window_s = window_s
        self._retire_after_s = retire_after_s
        self._adds: list[tuple[str, str]] = []
        self._removes: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._retiring: dict[str, asyncio.TimerHandle] = {}
        self.reloads = 0

    async def add(self, username: str, password: str) -> None:
        """Returns once the account can log in (raises if the broker update failed)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._adds.append((username, password))
        self._waiters.append(waiter)
        self._schedule()
        await waiter

    def retire(self, username: str) -> None:
        """Remove the account a little later (its last reply must reach it first)."""
        if username not in self._retiring:
            self._retiring[username] = asyncio.get_running_loop().call_later(
                self._retire_after_s, self._retire_now, username)

    def _retire_now(self, username: str) -> None:
        self._retiring.pop(username, None)
        self._removes.append(username)
        self._schedule()

    def _schedule(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(self._window_s)  # a batching window, not synchronisation
        while self._adds or self._removes:
            adds, removes, waiters = self._adds, self._removes, self._waiters
            self._adds, self._removes, self._waiters = [], [], []
            try:
                await asyncio.to_thread(self._accounts.apply, adds, removes)
                self.reloads += 1
            except Exception as exc:  # the broker failed: every waiter hears of it
                log.exception("broker account update failed")
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        """Apply pending removals now (spent tokens must not outlive the service)."""
        for username, handle in list(self._retiring.items()):
            handle.cancel()
            self._retire_now(username)
        if self._flushing is not None:
            await self._flushing
        if self._adds or self._removes:
            await asyncio.to_thread(self._accounts.apply, self._adds, self._removes)


def _sealed_credentials(pub: bytes, username: str, password: str) -> bytes:
    """libsodium sealed box to the device's Ed25519 key converted to X25519."""
    box = nacl.public.SealedBox(nacl.signing.VerifyKey(pub).to_curve25519_public_key())
    return bytes(box.encrypt(cbor.dumps({"username": username, "password": password})))


async def handle_enrol(ctx: Context, batcher: AccountBatcher, token_user: str,
                       payload: bytes) -> list[Reply]:
    claimed = protocol.peek_sealed(payload, _LIMIT, ("enrol",))
    body, _, _ = protocol.open_sealed(payload, _LIMIT, signing.verify, claimed["pub"],
                                      ("enrol",))
    enrolment = ctx.ledger.enrol(token_user, body["token"], body["pub"], ctx.clock())
    if enrolment.code != ENROL_OK or enrolment.device_id is None:
        ctx.count("enrol_refused")
        raise Rejection("bad_token", "the token is unknown, spent or expired")
    dev = enrolment.device_id
    if ctx.scheduler.verifier is not None:
        # Its enrol token (recorded on the device row too): replicas never go to two devices
        # enrolled with one token.
        ctx.scheduler.verifier.enrolled(dev, token_user)
    password = ctx.key.device_password(dev)
    await batcher.add(dev, password)
    reply = protocol.message("enrolled", dev=dev, gw_pub=ctx.key.pub,
                             sealed=_sealed_credentials(body["pub"], dev, password))
    batcher.retire(token_user)
    ctx.count("enrolled")
    log.info("enrolled device %s (%s) with token %s", dev, body["platform"], token_user)
    sealed = bytes(protocol.seal(reply, ctx.key.sign))
    return [Reply(protocol.enrol_reply_topic(token_user), sealed)]
