"""tinysd's integer arithmetic as Hexagon HVX kernels (C with Q6_ intrinsics), run under qemu-hexagon.

The C program (`*.c`, `*.h` here: a freestanding runtime, the primitives of docs/arithmetic.md §2
in `prims.h`, one file per op family) is compiled with clang for Hexagon V66 with 128-byte HVX
and answers kernel requests on stdin/stdout. Python side:

* `runner`: build (cached), `HvxProcess`, the request format;
* `ops`: one request builder per op, with the arguments of its reference twin;
* `golden`: run the layer and network cases of a golden folder;
* `interp`: `HvxKernels` (the HVX backend of the integer interpreter), `HvxInterpreter`;
* `cost`: executed instruction counts from QEMU's log.

`python3 -m tinysd.hvx GOLDEN --model QMODEL` runs a golden folder. docs/hvx.md maps every
primitive and op to its instruction sequence.
"""
