# The retained `state` document (docs/PROTOCOL.md): coarse fields free of personal data, built
# here for both the CPython agent (edge_agent/state_doc.py) and the MicroPython board
# (firmware/micropython/edge_board/statereport.py); each paces and sends it its own way.
from edge_agent.core import protocol


def _clamp(value, lo, hi):
    return None if value is None else min(max(value, lo), hi)


def fields(reading, decision, throttled):
    """The document's fields from a reading (battery_percent, charging, battery_temp_dc,
    hottest_zone_mc), the governor's decision and whether the device is throttled now."""
    return {
        "battery_pct": _clamp(reading.battery_percent, 0, 100),
        "charging": reading.charging,
        "battery_dc": _clamp(reading.battery_temp_dc, 0, 2000),
        "hottest_mc": _clamp(reading.hottest_zone_mc, 0, 200000),
        "throttled": throttled,
        "decision": decision.action,
        "code": decision.reason[:32],
        "why": decision.text[:120],
        "duty_pm": int(decision.duty * 1000 + 0.5),
    }


def signature(f):
    """What makes a document worth sending again: whole degrees, 5 % duty steps."""
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


def online(f, seq, now):
    """The encoded document of these fields."""
    return protocol.encode(protocol.message("state", online=True, seq=seq, at=now, **f))


def offline():
    """The encoded `online: false` document: the last will, and the goodbye on a clean stop."""
    return protocol.encode(protocol.message("state", online=False))
