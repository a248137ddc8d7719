"""`python tests/held_save.py NAME:N:MARKER ARGS...` runs `lsa-fast ARGS...` with the
N-th save of a file called NAME stopped with its temporary file complete but not yet
renamed: it creates MARKER and waits to be killed, so kill tests choose their moment.
The hold wraps os.replace, the rename of every atomic write (lsa_fast.checkpoint)."""
import os
import sys
import time
from pathlib import Path


def hold_save(spec: str) -> None:
    name, count, marker = spec.split(":", 2)
    seen = []
    rename = os.replace

    def held_replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            seen.append(dst)
            if len(seen) == int(count):
                Path(marker).write_text(str(os.getpid()))
                while True:
                    time.sleep(60)
        return rename(src, dst, *args, **kwargs)

    os.replace = held_replace


if __name__ == "__main__":
    hold_save(sys.argv[1])
    from lsa_fast import cli

    sys.exit(cli.main(sys.argv[2:]))
