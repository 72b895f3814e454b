# Allocate and free: 1 MiB buffers (each its own mmap), a forked child that works on its
# copy-on-write copy and exits, then everything dropped.
import os
blocks = [bytearray(1 << 20) for _ in range(8)]
del blocks[::2]
pid = os.fork()
if pid == 0:
    junk = [bytearray(1 << 20) for _ in range(2)]
    os._exit(0)
os.waitpid(pid, 0)
data = [list(range(10000)) for _ in range(20)]
del data
blocks.clear()
