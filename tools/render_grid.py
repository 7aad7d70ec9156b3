"""Render a grid of shapes prompts and the images a model makes of them into docs/shapes_grid.png.

Each cell is one prompt (seed `--seed + i`), shown enlarged with nearest-neighbour
scaling, its caption underneath and the detector's verdict (OK, or the attributes
it read differently). Generation goes through
`score_adherence.ENGINES` (`--engine diffusers|tinysd`).

    python3 tools/render_grid.py [--model weights/tinysd-shapes] [-o docs/shapes_grid.png]
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_adherence import ENGINES, ROOT  # noqa: E402

from tinysd.eval import shapes  # noqa: E402

# The specified attributes of each prompt; the caption is built by the grammar.
PROMPTS = [
    dict(color="red", shape="circle", background="white"),
    dict(color="blue", shape="square", position="on the left"),
    dict(color="yellow", shape="triangle", position="at the top", background="black"),
    dict(size="large", color="green", shape="circle", position="in the center", background="gray"),
    dict(size="small", color="purple", shape="square", position="on the right", background="yellow"),
    dict(color="orange", shape="triangle"),
    dict(color="white", shape="circle", position="at the bottom", background="blue"),
    dict(color="black", shape="square", position="in the center", background="white"),
    dict(size="large", color="red", shape="triangle", position="on the right", background="green"),
    dict(size="small", color="blue", shape="circle", position="at the top", background="orange"),
    dict(color="green", shape="square", position="at the bottom", background="purple"),
    dict(color="purple", shape="triangle", position="on the left", background="white"),
    dict(size="large", color="yellow", shape="square", background="red"),
    dict(size="small", color="orange", shape="circle", position="on the left", background="black"),
    dict(color="white", shape="triangle", position="in the center", background="gray"),
    dict(color="black", shape="circle", position="on the right", background="yellow"),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "weights" / "tinysd-shapes")
    p.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "shapes_grid.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--engine", default="diffusers", choices=sorted(ENGINES))
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--scale", type=int, default=3)
    args = p.parse_args(argv)
    generate = ENGINES[args.engine](args.model, args.steps, args.cfg, args.sampler)
    captions = [shapes.caption(spec) for spec in PROMPTS]
    images = generate(captions, [args.seed + i for i in range(len(PROMPTS))])
    font = ImageFont.load_default()
    cell = 64 * args.scale
    text_h = 44
    rows = (len(PROMPTS) + args.cols - 1) // args.cols
    pad = 6
    grid = Image.new("RGB", (args.cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad), (255, 255, 255))
    d = ImageDraw.Draw(grid)
    for i, (spec, prompt, im) in enumerate(zip(PROMPTS, captions, images)):
        x = pad + (i % args.cols) * (cell + pad)
        y = pad + (i // args.cols) * (cell + text_h + pad)
        grid.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(prompt, width=cell // 6)[:2]
        verdict = shapes.score(im, spec)
        bad = [k for k, ok in verdict.items() if not ok]
        lines.append("detector: OK" if not bad else "detector: wrong " + ", ".join(bad))
        for j, line in enumerate(lines):
            d.text((x, y + cell + 2 + 13 * j), line, fill=(0, 0, 0) if j < len(lines) - 1 else (90, 90, 90), font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    grid.save(tmp, format="PNG")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(PROMPTS)} prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
