"""The edge agent. ``edge_agent.core`` is its portable core and also runs on MicroPython."""
