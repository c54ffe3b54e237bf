"""Take a FileLock and hold it until killed.

usage: python tests/scripts/hold_lock.py PATH PURPOSE   (prints "held" once it holds the lock)
"""

import sys
import time

from cramming_simple.runtime import FileLock

FileLock(sys.argv[1], "test", sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(600)
