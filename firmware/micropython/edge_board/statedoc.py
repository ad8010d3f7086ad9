# The retained `state` document (docs/PROTOCOL.md): the same coarse, personal-data-free fields
# as the CPython agent's edge_agent/state_doc.py, sent when that coarse content changes and at
# most once per state_every_s (and at once on every connection).
from edge_agent.core import protocol


def _clamp(value, lo, hi):
    return None if value is None else min(max(value, lo), hi)


def fields(reading, decision):
    return {
        "battery_pct": _clamp(reading.battery_percent, 0, 100),
        "charging": reading.charging,
        "battery_dc": _clamp(reading.battery_temp_dc, 0, 2000),
        "hottest_mc": _clamp(reading.hottest_zone_mc, 0, 200000),
        "throttled": reading.throttled,
        "decision": decision.action,
        "code": decision.reason[:32],
        "why": decision.text[:120],
        "duty_pm": int(decision.duty * 1000 + 0.5),
    }


def signature(f):
    """What makes a document worth sending: whole degrees, 5 % duty steps."""
    return (
        f["battery_pct"],
        f["charging"],
        None if f["battery_dc"] is None else f["battery_dc"] // 10,
        None if f["hottest_mc"] is None else f["hottest_mc"] // 1000,
        f["throttled"],
        f["decision"],
        f["code"],
        f["duty_pm"] // 50,
    )


def offline():
    """The last will, and the goodbye on a clean stop."""
    return protocol.encode(protocol.message("state", online=False))


class StateReport:
    def __init__(self):
        self.fields = None
        self.due = False  # a document with new coarse content, or a forced one, waits
        self.sent_at = None  # monotonic seconds of the last document sent
        self._sent = None

    def note(self, reading, decision):
        self.fields = fields(reading, decision)
        if signature(self.fields) != self._sent:
            self.due = True

    def force(self):
        self.due = True
        self.sent_at = None

    def document(self, seq, now):
        f = dict(self.fields)
        return protocol.encode(protocol.message("state", online=True, seq=seq, at=now, **f))

    def mark_sent(self, at):
        self.sent_at = at
        self.due = False
        self._sent = signature(self.fields)
