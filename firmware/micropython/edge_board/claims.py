# Claims and settlement proofs on the board (docs/REWARDS.md), as the CPython agent's
# edge_agent/claims.py does them:
#   * acks not yet in a claim are cut into runs of consecutive seqs (rewards.claim_batches) of at
#     most claim_batch; each run is claimed with one signature over the Merkle root of its
#     receipt ids. Full runs go at once; the rest once the board is idle (no task, no result
#     waiting for its ack) and no ack came for claim_quiet_s;
#   * a claim is stored before it is published, and re-sent unchanged after every reconnect
#     and every claim_resend_s until its signed receipt is stored (the gateway answers a repeat
#     with the receipt it stored: nothing is counted twice);
#   * receipts and settlement proofs are checked against the gateway's key before they are kept.
# core.rewards (and core.merkle) are imported on the first claim or proof, not at start.
from edge_agent.core import ed25519, protocol
from edge_board import device
from edge_board.inbox import retry_on_memory

INBOX_LIMIT = protocol.MAX_PAYLOAD["inbox"]


def _rewards():
    from edge_agent.core import rewards

    return rewards


class Claims:
    def __init__(self, link, store, stats, cfg, *, device_id, gateway_pub, sign, clock, wake):
        self.link = link
        self.store = store
        self.stats = stats
        self.cfg = cfg
        self.device_id = device_id
        self.gateway_pub = gateway_pub
        self.sign = sign
        self.clock = clock
        self.wake = wake  # fn(): something the work loop waits for has happened
        self.waiting = len(store.unclaimed_acks())  # acks in no claim
        # (first, last) -> clock seconds of the last publish; None: send at the next chance
        self.pending = {}
        for first, last, ending in store.claim_files():
            if ending == ".pend":
                self.pending[(first, last)] = None
        self._last_ack = None
        self._new_ack = True  # an ack came since the last look for full runs
        self.handlers = {"claim_receipt": self.on_receipt, "settlement": self.on_settlement}

    def done(self):
        """True when every ack is in a claim and every claim has its receipt."""
        return not self.waiting and not self.pending

    def note_ack(self):
        self.waiting += 1
        self._new_ack = True
        self._last_ack = self.clock()

    def resend_all(self):
        """After a reconnect: a claim published before may not have reached the broker."""
        for key in self.pending:
            self.pending[key] = None

    # -- sending ---------------------------------------------------------------------------------

    def tick(self, idle):
        """Claim what is due and re-send what waits too long; `idle`: no task, no unacked.
        A failure (no heap for the signature, flash full) is counted and retried next time."""
        if not self.link.connected:
            return
        try:
            self._tick(idle, self.clock())
        except Exception as e:  # MemoryError, OSError: the agent goes on
            self.stats.bump("claim_failed")
            print("edge: claiming failed, will retry: %r" % e)

    def _tick(self, idle, now):
        for key, sent in self.pending.items():
            if sent is None or now - sent >= self.cfg.claim_resend_s:
                self._publish(key, self.store.pending_claim(key[0], key[1]), now)
        quiet = self._last_ack is None or now - self._last_ack >= self.cfg.claim_quiet_s
        if self.waiting and idle and quiet:
            retry_on_memory(self._claim, True, now)
        elif self.waiting >= self.cfg.claim_batch and self._new_ack:
            self._new_ack = False  # gaps may leave no full run: look again after a new ack
            retry_on_memory(self._claim, False, now)

    def _claim(self, all_of_them, now):
        rewards = _rewards()
        acked = self.store.unclaimed_acks()
        self.waiting = len(acked)
        for run in rewards.claim_batches(acked, self.cfg.claim_batch):
            if len(run) < self.cfg.claim_batch and not all_of_them:
                continue
            body = rewards.build_claim(self.device_id, run, device.unix_time())
            sealed = protocol.seal(body, self.sign)
            del body
            key = (run[0][0], run[-1][0])
            self.store.add_claim(key[0], key[1], sealed)  # before any publish
            self.waiting -= len(run)
            self.pending[key] = None
            self.stats.bump("claims_made")
            self._publish(key, sealed, now)

    def _publish(self, key, sealed, now):
        if sealed is not None and self.link.publish("claim", sealed):
            self.pending[key] = now
            self.stats.bump("claims_sent")
            print("edge: claim of acks %d..%d sent" % key)

    # -- the inbox -------------------------------------------------------------------------------

    def on_receipt(self, payload):
        receipt = protocol.open_sealed(payload, INBOX_LIMIT, ed25519.verify, self.gateway_pub,
                                       ("claim_receipt",))[0]
        if receipt["dev"] != self.device_id:
            raise protocol.ProtocolError("bad_schema", "receipt for device %s" % receipt["dev"])
        key, status = (receipt["first"], receipt["last"]), receipt["status"]
        if not self.store.answer_claim(key[0], key[1], receipt["root"], status, payload):
            self.stats.bump("claim_receipt_unknown")
            return
        self.pending.pop(key, None)
        self.stats.bump("claim_" + status)
        print("edge: claim of acks %d..%d %s (%s), credit %d"
              % (key[0], key[1], status, receipt["code"], receipt["credit"]))
        self.wake()

    def on_settlement(self, payload):
        rewards = _rewards()
        try:
            settled = rewards.verify_settlement(payload, self.gateway_pub, ed25519.verify,
                                                self.device_id)
        except (rewards.RewardsError, protocol.ProtocolError) as e:
            self.stats.bump("settlement_rejected:" + e.code)
            print("edge: settlement rejected: %s" % e)
            return
        if self.store.store_settlement(settled["epoch"], settled["closed_at"], payload):
            self.stats.bump("settlements")
            print("edge: settlement of epoch %d verified, credit %d"
                  % (settled["epoch"], settled["credit"]))
        else:
            self.stats.bump("settlement_repeat")
        self.wake()
