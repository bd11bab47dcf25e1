"""The worker's garbage-collector tuning (stream.worker.lifecycle.tune_gc), in a fresh
interpreter each time: it changes process-wide state the test process must keep."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, sys
from stream.worker.lifecycle import tune_gc
held = [[i] for i in range(1000)]  # alive at start: frozen with the rest
tune_gc(int(sys.argv[1]))
young, middle, old = gc.get_threshold()
# a cycle made after tuning is still collected
class Node: pass
a, b = Node(), Node(); a.other, b.other = b, a
import weakref; gone = weakref.ref(a); del a, b
gc.collect()
print(young, middle, old, gc.get_freeze_count(), gone() is None)
"""


def probe(young_objects: int) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(young_objects)], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tuning_freezes_the_start_and_widens_the_youngest_generation():
    young, middle, old, frozen, collected = probe(50_000)
    assert (young, middle, old) == ("50000", "10", "10")  # CPython's 700/10/10 with the young one widened
    assert int(frozen) > 1000  # the modules, and the 1,000 lists alive at start
    assert collected == "True"


def test_zero_keeps_cpythons_collector():
    young, middle, old, frozen, collected = probe(0)
    assert (young, middle, old, frozen, collected) == ("700", "10", "10", "0", "True")
