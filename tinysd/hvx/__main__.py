"""`python3 -m tinysd.hvx GOLDEN [--model QMODEL] [--cases GLOB] [--cost]`: run a golden folder on the HVX kernels.

Builds the kernels (clang, cached), then under qemu-hexagon:

* every layer case of GOLDEN, compared with its expected output;
* with --model (the quantized model folder GOLDEN was written from): every network case as a
  chain of HVX kernels from the call's integer inputs, compared with its output;
* with --cases GLOB: only the cases whose id matches (fnmatch), e.g. 'p000/text_encoder*';
* with --cost (needs --model): the executed instructions of every op of the network calls,
  summed per op kind (`tinysd.hvx.cost`; each op is re-run alone under QEMU's execution log).

Prints one line per differing case and a summary; exit status 0 when everything is equal,
1 when something differs, 2 on bad input (one line).
"""
from __future__ import annotations

import fnmatch
import sys
from collections import defaultdict

import click

from ..errors import TinySDError


def _run(golden, model, cases, cost):
    from ..golden import GoldenFolder
    from . import cost as costs
    from . import golden as hvx_golden
    from .runner import HvxProcess, build

    folder = GoldenFolder(golden)
    selected = [c for c in folder.cases if cases is None or fnmatch.fnmatchcase(c["id"], cases)]
    if not selected:
        raise TinySDError(f"--cases {cases!r}: no case of {golden} matches")
    qmodel = None
    if model is not None:
        from ..quant.folder import load_quantized

        qmodel = load_quantized(model)
    exe = build()
    calls = []
    with HvxProcess(exe) as proc:
        results = hvx_golden.check_layer_cases(folder, proc, selected)
        if qmodel is not None:
            for case in selected:
                if case["kind"] == "network":
                    results += hvx_golden.check_network_case(
                        folder, case, qmodel, proc, on_call=lambda call, c=case: calls.append((c, call)))
    bad = [r for r in results if not r.ok]
    for r in bad:
        click.echo(r.line())
    click.echo(f"{len(results)} cases: {len(results) - len(bad)} equal, {len(bad)} differ")
    if cost:
        per_kind: dict[tuple, costs.Cost] = defaultdict(costs.Cost)
        count: dict[tuple, int] = defaultdict(int)
        for case, call in calls:
            key = (case["id"], call.what)
            per_kind[key] += costs.measure(exe, call.request)
            count[key] += 1
        click.echo(f"{'CASE':24s} {'OP':20s} {'CALLS':>6s} {'HVX':>12s} {'PACKETS':>12s} {'INSNS':>12s}")
        for (cid, what), c in sorted(per_kind.items(), key=lambda kv: (kv[0][0], -kv[1].hvx)):
            click.echo(f"{cid:24s} {what:20s} {count[(cid, what)]:6d} {c.hvx:12d} {c.packets:12d} {c.insns:12d}")
    return 1 if bad else 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("golden", type=click.Path(file_okay=False))
@click.option("--model", type=click.Path(file_okay=False), default=None,
              help="The quantized model folder GOLDEN was written from: also run its network cases as HVX chains.")
@click.option("--cases", default=None, help="Only the cases whose id matches this glob (e.g. 'p000/unet/*').")
@click.option("--cost", is_flag=True, help="Count the executed instructions of every op of the network cases.")
def main(golden, model, cases, cost):
    """Run the layer (and, with --model, network) cases of a golden folder on tinysd's HVX kernels."""
    if cost and model is None:
        raise click.UsageError("--cost needs --model")
    try:
        status = _run(golden, model, cases, cost)
    except TinySDError as e:
        click.echo(f"tinysd: error: {e}", err=True)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main(prog_name="python3 -m tinysd.hvx")
