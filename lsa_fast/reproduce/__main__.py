"""python -m lsa_fast.reproduce [moons|mnist|cifar10]: a reproduction with the default
settings into runs/reproduce-<dataset> (`lsa-fast reproduce` has the options)."""
import sys

from .running import run_reproduce

name = sys.argv[1] if len(sys.argv) > 1 else "moons"
run_reproduce(name, f"runs/reproduce-{name}")
