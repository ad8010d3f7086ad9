# Test runner for the real MicroPython interpreter (no pytest there).
# Usage, from the repository root: micropython tests/mpy/run.py test_cbor [test_merkle ...]
# Runs every top-level function named test_* in each module; prints one line per failure and a
# closing "N passed, M failed" line; exits 1 on any failure.
import sys

sys.path.insert(0, "tests/mpy")
sys.path.insert(0, ".")


def main(names):
    passed = failed = 0
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            try:
                fn()
                passed += 1
            except Exception as e:  # report and go on: one failure must not hide the others
                failed += 1
                print("FAIL %s.%s: %s: %s" % (name, attr, type(e).__name__, e))
                sys.print_exception(e)
    print("%d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
