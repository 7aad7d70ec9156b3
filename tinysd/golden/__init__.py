"""Golden vectors: integer inputs, parameters and outputs of network calls and layers, and their comparison.

* `manifest`: the `manifest.json` schema, safe paths, hashes, validation.
* `formats`: `npy`, `raw` and `c` tensor files; NCHW / NHWC layouts.
* `writer`: `GoldenWriter`, an atomically written golden folder of `GoldenCase`s.
* `reader`: `GoldenFolder`, a validated folder whose tensors are checked against their hashes.
* `cases`: single-layer cases cut from recorded ops (`tinysd.interp.record`), conv/linear cropped
  and re-checked with the kernel references.
* `compare`: `tinysd compare` (device folder against golden folder).
* `generate`: `tinysd golden` (a quantized model run with recording).

The file formats are documented in docs/golden.md.
"""
from .compare import Report, compare, write_report
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, load_manifest, tensor_sha256, validate
from .reader import GoldenFolder
from .writer import GoldenCase, GoldenTensor, GoldenWriter, encoding_fields

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "GoldenCase",
    "GoldenFolder",
    "GoldenTensor",
    "GoldenWriter",
    "Report",
    "compare",
    "encoding_fields",
    "load_manifest",
    "tensor_sha256",
    "validate",
    "write_report",
]
