"""Instruction counts of HVX kernel calls, from QEMU's own execution log: a first cost model.

    cost = measure(exe, call.request)       # Cost(hvx=..., packets=..., insns=...)

The request runs alone in `qemu-hexagon -d in_asm,exec,nochain -D LOG`: QEMU writes the
disassembly of every block it translates (once per block) and, with block chaining off, one
line per block executed. The count of an instruction class is the sum over executed blocks of
(executions x instructions of that class in the block). Classes:

* `hvx`: HVX instructions: those whose disassembly names a vector or vector-predicate register
  (V0-V31, Q0-Q3) or a vector memory operand (vmem, vtmp: loads, stores, gathers);
* `packets`, `insns`: all packets / instructions executed outside the request I/O of main.c
  (blocks of main, tsd_read, tsd_write, respond, _start and memcpy are left out; memcpy is almost
  only the copy of the request into the arena).

This counts what the program executes on QEMU, not cycles: a device issues up to 4 instructions
per packet, and HVX instructions differ in latency and in the resources they use. As a ratio
between ops and between kernel variants it is the first cost model of the kernels.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from .runner import HvxError, Request

HVX_RE = re.compile(r"\b[VQ]\d{1,2}\b|vmem|vtmp")
IO_FUNCTIONS = frozenset({"main", "tsd_read", "tsd_write", "respond", "_start", "memcpy", ""})


@dataclass
class Cost:
    hvx: int = 0
    packets: int = 0
    insns: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.hvx + other.hvx, self.packets + other.packets, self.insns + other.insns)


def parse_log(lines) -> Cost:
    """Counts from the lines of a `-d in_asm,exec,nochain` log (see the module docstring)."""
    blocks: dict[int, tuple[str, int, int, int]] = {}  # pc -> (function, hvx, packets, insns)
    executed: dict[int, int] = {}
    cur = None  # [function, pc, hvx, packets, insns] of the block being read
    for line in lines:
        if line.startswith("IN:"):
            cur = [line[3:].strip(), None, 0, 0, 0]
        elif cur is not None and line.startswith("0x"):
            addr, _, rest = line.partition(":")
            text = rest.split("\t", 1)[1] if "\t" in rest else rest
            if cur[1] is None:
                cur[1] = int(addr, 16)
            cur[2] += bool(HVX_RE.search(text))
            cur[3] += "{" in text
            cur[4] += 1
        else:
            if cur is not None and cur[1] is not None:
                blocks[cur[1]] = (cur[0], cur[2], cur[3], cur[4])
            cur = None
            if line.startswith("Trace "):
                pc = int(line.split("[", 1)[1].split("/")[1], 16)
                executed[pc] = executed.get(pc, 0) + 1
    cost = Cost()
    for pc, n in executed.items():
        fn, hvx, packets, insns = blocks.get(pc, ("", 0, 0, 0))
        cost.hvx += n * hvx
        if fn not in IO_FUNCTIONS:
            cost.packets += n * packets
            cost.insns += n * insns
    return cost


def measure(exe, request: Request) -> Cost:
    """Run one request in its own traced qemu-hexagon and count what it executed."""
    with tempfile.TemporaryDirectory(prefix="tinysd-hvx-cost.") as d:
        log = os.path.join(d, "qemu.log")
        r = subprocess.run(["qemu-hexagon", "-d", "in_asm,exec,nochain", "-D", log, str(exe)],
                           input=request.encode(), capture_output=True)
        if r.returncode != 0 or len(r.stdout) < 16 or int.from_bytes(r.stdout[4:8], "little") != 0:
            raise HvxError(f"qemu-hexagon (traced): the request failed (exit status {r.returncode})")
        with open(log, errors="replace") as f:
            return parse_log(f)
