# The MicroPython board agent (firmware/README.md, "MicroPython boards").
