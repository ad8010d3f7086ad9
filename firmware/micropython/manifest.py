# ruff: noqa: F821 - include/module/package are the manifest language's own functions
# Freezes the edge agent into a MicroPython firmware build: the portable core, the board agent,
# its HAL and the vendored MQTT client. Frozen bytecode runs from flash, so the heap keeps only
# the agent's data. Build (from a MicroPython checkout, e.g. for a Pico W):
#   make -C ports/rp2 BOARD=RPI_PICO_W \
#       FROZEN_MANIFEST=/path/to/repo/firmware/micropython/manifest.py
# main.py is not frozen: it is copied to the board's filesystem (firmware/README.md).
include("$(PORT_DIR)/boards/manifest.py")  # the port's own frozen modules (asyncio, ...)

# The portable core (edge_agent/core, which runs on MicroPython), from the repository root.
# opt=3: no line-number tables (tracebacks name the function only); the core and the board code
# have no asserts for -O3 to drop. A port that runs frozen code from flash saves flash with it;
# one that loads it into RAM (the unix port's .mpy files) saves ~2 KB of heap.
module("edge_agent/__init__.py", base_path="../..", opt=3)
package("edge_agent/core", base_path="../..", opt=3)

# The board agent and its HAL.
package("edge_board", opt=3)
module("hal_board.py", opt=3)

# umqtt.simple 1.3.4 (micropython-lib, MIT), vendored.
package("umqtt", base_path="lib")
