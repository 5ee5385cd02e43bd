"""Runs a command and prints `<wall seconds> <peak RSS KiB> <user+sys CPU seconds>` of it (and its children)."""
import resource
import subprocess
import sys
import time

start = time.monotonic()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.monotonic() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime:.3f}")
sys.exit(code)
