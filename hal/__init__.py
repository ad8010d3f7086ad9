"""Hardware abstraction: one read of a device's power, thermal, throttling and network state."""
