# edge_agent.core.statedoc on both interpreters: the state document's fields are clamped to the
# schema's ranges, its signature ignores what is finer than a degree or a 5 % duty step, and the
# encoded document is the same bytes on CPython and MicroPython (a vector fixed here).
from mpyassert import unhex

from edge_agent.core import protocol, statedoc
from edge_agent.core.governor import Decision

# fields(Reading(87, True, 312, 48250), Decision("run", 0.5, 1, "ok", "cool"), False) as
# online(..., seq=7, now=1700000000): canonical CBOR (cbor2's canonical encoding gives the same).
ONLINE_HEX = (
    "ae61746573746174656176016261741a6553f10063736571076377687964636f6f6c64636f6465626f6b666f"
    "6e6c696e65f567647574795f706d1901f4686368617267696e67f5686465636973696f6e6372756e69746872"
    "6f74746c6564f46a626174746572795f64631901386a686f74746573745f6d6319bc7a6b626174746572795f"
    "7063741857"
)


class Reading:
    def __init__(self, battery_percent, charging, battery_temp_dc, hottest_zone_mc):
        self.battery_percent = battery_percent
        self.charging = charging
        self.battery_temp_dc = battery_temp_dc
        self.hottest_zone_mc = hottest_zone_mc


RUN = Decision("run", 0.5, 1, "ok", "cool")


def test_fields_are_clamped_to_the_schema_and_cut_to_its_lengths():
    long = Decision("pause", 0.0, 0, "x" * 40, "y" * 200)
    f = statedoc.fields(Reading(130, None, -5, 250000), long, None)
    assert f["battery_pct"] == 100 and f["battery_dc"] == 0 and f["hottest_mc"] == 200000
    assert len(f["code"]) == 32 and len(f["why"]) == 120 and f["duty_pm"] == 0
    assert statedoc.fields(Reading(None, None, None, None), RUN, None)["battery_pct"] is None
    protocol.decode(statedoc.online(f, 1, 1), 4096, ("state",))  # valid against the schema


def test_the_signature_changes_with_whole_degrees_and_duty_steps_only():
    base = statedoc.signature(statedoc.fields(Reading(87, True, 312, 48250), RUN, False))
    finer = statedoc.signature(statedoc.fields(Reading(87, True, 318, 48999), RUN, False))
    hotter = statedoc.signature(statedoc.fields(Reading(87, True, 312, 49000), RUN, False))
    step = Decision("run", 0.56, 1, "ok", "cool")
    duty = statedoc.signature(statedoc.fields(Reading(87, True, 312, 48250), step, False))
    assert base == finer
    assert base not in (hotter, duty)


def test_the_documents_are_the_same_bytes_on_both_interpreters():
    f = statedoc.fields(Reading(87, True, 312, 48250), RUN, False)
    assert bytes(statedoc.online(f, 7, 1700000000)) == unhex(ONLINE_HEX)
    offline = protocol.decode(statedoc.offline(), 64, ("state",))
    assert offline["online"] is False and "seq" not in offline
