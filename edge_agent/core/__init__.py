# Portable core: imports and runs on CPython and MicroPython. Nothing here may import the rest of
# the project, typing, dataclasses, or anything MicroPython's unix port lacks.
