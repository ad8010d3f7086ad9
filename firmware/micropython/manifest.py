# ruff: noqa: F821 - include/module/package are the manifest language's own functions
# Freezes the edge agent into a MicroPython firmware build: the portable core, the board agent,
# its HAL and the vendored MQTT client. Frozen bytecode runs from flash, so the heap keeps only
# the agent's data. Build (from a MicroPython checkout, e.g. for a Pico W):
#   make -C ports/rp2 BOARD=RPI_PICO_W \
#       FROZEN_MANIFEST=/path/to/repo/firmware/micropython/manifest.py
# main.py is not frozen: it is copied to the board's filesystem (firmware/README.md).
include("$(PORT_DIR)/boards/manifest.py")  # the port's own frozen modules (asyncio, ...)

# The portable core (edge_agent/core, which runs on MicroPython), from the repository root.
module("edge_agent/__init__.py", base_path="../..")
package("edge_agent/core", base_path="../..")

# The board agent and its HAL.
package("edge_board")
module("hal_board.py")

# umqtt.simple 1.3.4 (micropython-lib, MIT), vendored.
package("umqtt", base_path="lib")
