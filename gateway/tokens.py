"""One-time enrolment tokens: ``tok-<16 hex>.<32 hex secret>.<16 hex gateway key fingerprint>``.

The first part is a broker account whose password is the secret's hex; it may only publish its
enrolment request and read its reply (docs/BROKER.md). The ledger keeps a hash of the secret and
the expiry, and spends the token in the transaction that creates the device (docs/PROTOCOL.md).
A spent token's account is removed after its enrolment (gateway/handlers_enrol.py); one that
expired unused is pruned by ``serve`` (account and ledger row, ``prune_expired_tokens``).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from dataclasses import dataclass

from edge_agent.core import protocol
from gateway.accounts import Accounts, ServeInfo, signal_reload
from gateway.broker import BrokerEndpoint
from gateway.config import StatePaths
from gateway.keys import GatewayKey
from gateway.ledger import Ledger

DEFAULT_TTL_S = 24 * 3600.0
SECRET_LEN = 16  # bytes: the enrol message's `token` field; 32 hex characters in the token
MAX_TOKENS_PER_CALL = 10_000
PRUNE_BATCH = 10_000  # expired tokens pruned in one pass (one rewrite, one reload); more next


@dataclass(frozen=True)
class Token:
    user: str  # tok-<16 hex>
    secret: bytes
    fingerprint: bytes

    def __str__(self) -> str:
        return f"{self.user}.{self.secret.hex()}.{self.fingerprint.hex()}"


def new_token(key: GatewayKey) -> Token:
    user = protocol.TOKEN_USER_PREFIX + secrets.token_hex(protocol.TOKEN_USER_HEX_LEN // 2)
    return Token(user, secrets.token_bytes(SECRET_LEN), key.fingerprint)


def create_tokens(
    ledger: Ledger, key: GatewayKey, paths: StatePaths, *, count: int, ttl_s: float, now: float
) -> tuple[list[Token], bool]:
    """Record ``count`` tokens and add their broker accounts in one rewrite, then make the
    Mosquitto of a running ``serve`` reload. Returns the tokens and whether a running broker
    took them (else they take effect when ``serve`` starts its broker)."""
    if not 1 <= count <= MAX_TOKENS_PER_CALL:
        raise ValueError(f"count must be 1..{MAX_TOKENS_PER_CALL}, got {count}")
    if ttl_s <= 0:
        raise ValueError(f"the lifetime must be positive, got {ttl_s:g} s")
    tokens = [new_token(key) for _ in range(count)]
    for token in tokens:
        ledger.create_token(token.user, token.secret, now, ttl_s)
    info = ServeInfo.load(paths.serve_info)
    reload = None
    if info is not None and info.mosquitto_pid is not None:
        probe = BrokerEndpoint(info.host, info.port, tokens[0].user, tokens[0].secret.hex())
        reload = functools.partial(signal_reload, info, probe)
    Accounts(paths, reload).apply(add=[(t.user, t.secret.hex()) for t in tokens])
    return tokens, reload is not None


# -- expired tokens ---------------------------------------------------------------------------


def expired_unused(ledger: Ledger, before: float, limit: int = PRUNE_BATCH) -> list[str]:
    """Tokens that expired at ``before`` or earlier and that no device enrolled with (neither
    spent nor named by a device), oldest first."""
    with ledger.transaction() as tx:
        rows = tx.conn.execute(
            "SELECT id FROM enrol_tokens WHERE used_by IS NULL AND expires_at <= ? "
            "AND id NOT IN (SELECT token_id FROM devices WHERE token_id IS NOT NULL) "
            "ORDER BY expires_at LIMIT ?", (before, limit)).fetchall()
    return [str(token_id) for (token_id,) in rows]


def forget_tokens(ledger: Ledger, token_ids: list[str], before: float) -> int:
    """Delete these tokens' ledger rows if they are still unused and expired at ``before``;
    how many were deleted."""
    with ledger.transaction() as tx:
        return sum(tx.conn.execute(
            "DELETE FROM enrol_tokens WHERE id = ? AND used_by IS NULL AND expires_at <= ?",
            (token_id, before)).rowcount for token_id in token_ids)


async def prune_expired_tokens(ledger: Ledger, accounts: Accounts, before: float) -> int:
    """Remove the tokens that expired unused at ``before`` or earlier: their broker accounts in
    one rewrite and reload (in a thread: the reload waits for Mosquitto), then their ledger
    rows; how many were pruned. Accounts first: a removal that fails leaves the rows, and the
    next pass finds the tokens again (removing an account already gone only rewrites the
    file and reloads)."""
    token_ids = expired_unused(ledger, before)
    if not token_ids:
        return 0
    await asyncio.to_thread(accounts.apply, (), token_ids)
    return forget_tokens(ledger, token_ids, before)
