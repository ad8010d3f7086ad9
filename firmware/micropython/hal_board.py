# The board's own hardware: battery voltage through an ADC pin, USB/VBUS sense through a pin,
# the MCU's temperature sensor where the port has one (rp2: ADC channel 4; esp32:
# esp32.mcu_temperature()), and Wi-Fi. Anything missing or failing is "not known" (None), never
# a crash. edge.json "hal" {"kind": "board", ...} selects it (edge_board/device.py).
import sys
import time

from edge_board.device import Reading

# A one-cell LiPo at rest: (millivolts, percent). Under load it reads a few percent low, which
# errs on the side of stopping early.
LIPO_CURVE = ((3300, 0), (3500, 5), (3600, 10), (3700, 35), (3800, 60), (3900, 75),
              (4000, 85), (4100, 95), (4200, 100))


def percent_from_mv(mv, curve=LIPO_CURVE):
    """Battery percent from its voltage, piecewise linear on `curve`, clamped to 0..100."""
    if mv <= curve[0][0]:
        return curve[0][1]
    for i in range(1, len(curve)):
        hi_mv, hi_pct = curve[i]
        if mv <= hi_mv:
            lo_mv, lo_pct = curve[i - 1]
            return lo_pct + (mv - lo_mv) * (hi_pct - lo_pct) // (hi_mv - lo_mv)
    return curve[-1][1]


def rp2_temp_mc(mv):
    """RP2040 datasheet 4.9.5: T = 27 - (V - 0.706) / 0.001721, in millidegrees."""
    return 27000 - (mv - 706) * 1000000 // 1721


class BoardHal:
    """Sensors through `machine` (and `esp32`); edge.json "hal" keys: battery_adc (pin),
    battery_divider_pm (voltage divider ratio x1000, e.g. 3000 on a Pico's VSYS/GP29),
    adc_vref_mv (3300), vbus_pin (e.g. 24 on a Pico), charging (fixed true/false when no
    pin says), mcu_temp ("auto", "rp2", "esp32" or "none")."""

    def __init__(self, cfg, machine=None):
        if machine is None:
            import machine
        self.machine = machine
        self.cfg = cfg
        self.vref_mv = cfg.get("adc_vref_mv", 3300)
        self.battery = self._adc(cfg.get("battery_adc"))
        self.vbus = None if cfg.get("vbus_pin") is None else machine.Pin(cfg["vbus_pin"],
                                                                          machine.Pin.IN)
        kind = cfg.get("mcu_temp", "auto")
        if kind == "auto":
            kind = sys.platform if sys.platform in ("rp2", "esp32") else "none"
        self.temp_kind = kind
        self.temp_adc = self._adc(4, channel=True) if kind == "rp2" else None

    def _adc(self, pin, channel=False):
        if pin is None:
            return None
        m = self.machine
        return m.ADC(pin) if channel else m.ADC(m.Pin(pin))

    def _mv(self, adc):
        if hasattr(adc, "read_uv"):  # esp32: calibrated
            return adc.read_uv() // 1000
        return adc.read_u16() * self.vref_mv // 65535

    def read(self):
        problems = []
        pct = charging = mcu_mc = None
        try:
            if self.battery is not None:
                mv = self._mv(self.battery) * self.cfg.get("battery_divider_pm", 1000) // 1000
                pct = percent_from_mv(mv)
        except Exception as e:  # a failing sensor is "not known", never a crash
            problems.append("battery: %s" % e)
        try:
            charging = self.cfg.get("charging")
            if self.vbus is not None:
                charging = self.vbus.value() == 1
        except Exception as e:
            problems.append("vbus: %s" % e)
        try:
            if self.temp_kind == "rp2":
                mcu_mc = rp2_temp_mc(self._mv(self.temp_adc))
            elif self.temp_kind == "esp32":
                import esp32

                mcu_mc = esp32.mcu_temperature() * 1000
        except Exception as e:
            problems.append("mcu_temp: %s" % e)
        return Reading(pct, charging, mcu_mc, None, problems)


# -- network -------------------------------------------------------------------------------------


def connect_network(cfg, timeout_s=20):
    """Bring up Wi-Fi from edge.json "wifi" {"ssid", "password"} on ports with network.WLAN,
    then set the clock by NTP ("ntp": true). True when the network is (or needs no) bringing up."""
    wifi = cfg.get("wifi")
    if not wifi:
        return True
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi["password"])
        deadline = time.ticks_add(time.ticks_ms(), timeout_s * 1000)
        while not wlan.isconnected() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            time.sleep_ms(200)  # the radio has no event to wait on here
    if wlan.isconnected() and cfg.get("ntp"):
        try:
            import ntptime

            ntptime.settime()
        except Exception as e:  # keep going on the old clock; lease checks may then refuse
            print("edge: ntp failed: %s" % e)
    return wlan.isconnected()
