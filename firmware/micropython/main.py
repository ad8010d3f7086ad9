# The edge agent on a MicroPython board: runs at boot (copied to the board's filesystem as
# main.py; the modules are in a ROMFS image at /rom or frozen into the firmware, both made from
# manifest.py, or .mpy files beside it: firmware/README.md).
# On the unix port: micropython main.py [path/to/edge.json]; prints one JSON summary line at exit.
import gc
import json
import sys

# The leaves first, the agent last: a module's code objects (and, loaded from files, its bytecode)
# are allocated before its own imports run, so importing the agent first leaves them in the middle
# of the heap and every later module around them (a small heap then fragments). Ed25519 goes
# first: its table's garbage is collected before anything long-lived lands between its points.
for _name in ("edge_agent.core.ed25519", "edge_agent.core.governor", "edge_agent.core.protocol",
              "edge_board.store", "edge_board.inbox", "edge_board.link",
              "edge_board.claims"):
    __import__(_name)
    gc.collect()

from edge_board import config, device  # noqa: E402 - after the imports above, on purpose
from edge_board.agent import Agent  # noqa: E402
from edge_board.store import Store  # noqa: E402


def main(path):
    gc.collect()
    heap_start = gc.mem_alloc()  # what the code holds: function objects, qstrs, tables
    cfg = config.load(path)
    if cfg.network["wifi"]:
        import hal_board

        if not hal_board.connect_network(cfg.network):
            print("edge: no network yet; the link keeps retrying")
    agent = Agent(cfg, device.make_hal(cfg.hal), Store(cfg.state_dir, cfg.blob_cache_bytes))
    try:
        stats = agent.run()
    except KeyboardInterrupt:
        stats = agent.stats
    summary = {"tasks": agent.tasks_done, "task_ms": agent.task_ms, "heap_max": stats.heap_max,
               "heap_start": heap_start,
               "heap_total": gc.mem_alloc() + gc.mem_free(), "counts": stats.counts}
    print("edge: summary " + json.dumps(summary))


main(sys.argv[1] if len(sys.argv) > 1 else "edge.json")
