r"""Golden normalization vectors made by real Go: Dagu's pipeline on Go's own ``encoding/json``.

castore must normalize and hash a value exactly as Dagu does (decode with
``UseNumber``, one value, ``json.Marshal``; floats of YAML values marshalled
by Go). ``tests/unit/test_go_vectors.py`` checks castore against two files
whose answers Go gave:

* ``tests/data/go_json_vectors.jsonl``: JSON texts (``input_b64``) and Go's
  normalized bytes and SHA-256, or its error (``kind``: ``invalid`` or
  ``too_large``);
* ``tests/data/go_float_vectors.jsonl``: float64s (``bits``, hex) and the
  text ``json.Marshal`` gives (or that it refuses them).

The inputs are the files' own; this script asks Go again (the oracle is
``tools/govectors/main.go``, built here against the toolchain's
``encoding/json``, with Go 1.22's ``\b``/``\f`` escapes applied to an older
one, as Dagu builds with a newer Go)::

    apt-get install golang-go               # any Go from 1.19
    python3 tools/go_vectors.py --check     # compare the files with Go; exit 1 on a difference
    python3 tools/go_vectors.py             # rewrite the answers from Go
    python3 tools/go_vectors.py --add-json cases.jsonl   # add texts ({"b64": ...} lines)
    python3 tools/go_vectors.py --add-floats 1000        # add random float64s (seeded)

Needs only the standard library and ``go``; CI does not run it (the files
are committed).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"
JSON_VECTORS = DATA / "go_json_vectors.jsonl"
FLOAT_VECTORS = DATA / "go_float_vectors.jsonl"

# Go before 1.22 wrote \b and \f as \u0008 and \u000c; Dagu's Go writes them by name.
_OLD_ESCAPE = "case '\\\\', '\"':\n\t\t\t\te.WriteByte(b)\n"
_NEW_ESCAPE = (
    _OLD_ESCAPE
    + "\t\t\tcase '\\b':\n\t\t\t\te.WriteByte('b')\n\t\t\tcase '\\f':\n\t\t\t\te.WriteByte('f')\n"
)


_CORNERS: tuple[float, ...] = (0.0, -0.0, 1.0, -1.0, 0.1, 1e20, 1e21, -1e21, 1e-6, 1e-7, 5e-324)
_CORNERS += (2.2250738585072014e-308, 1.7976931348623157e308, math.nan, math.inf, -math.inf)


def build(work: Path) -> Path:
    """Build the oracle in ``work``; return the binary's path."""
    go = shutil.which("go")
    if go is None:
        sys.exit("go_vectors: no go on PATH (apt-get install golang-go)")
    root = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True, check=True)
    source = Path(root.stdout.strip()) / "src" / "encoding" / "json"
    shutil.copy(HERE / "govectors" / "main.go", work / "main.go")
    shutil.copy(HERE / "govectors" / "go.mod", work / "go.mod")
    (work / "gojson").mkdir()
    for file in source.glob("*.go"):
        if not file.name.endswith("_test.go"):
            shutil.copy(file, work / "gojson" / file.name)
    encode = work / "gojson" / "encode.go"
    text = encode.read_text()
    if "case '\\b':" not in text:
        if text.count(_OLD_ESCAPE) != 2:
            sys.exit("go_vectors: this Go's encode.go is not the one the patch knows")
        encode.write_text(text.replace(_OLD_ESCAPE, _NEW_ESCAPE))
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", "oracle", "."], cwd=work, env=env, check=True)
    return work / "oracle"


def ask(oracle: Path, requests: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Go's answer to each request (one process, JSON lines)."""
    data = "".join(json.dumps(r) + "\n" for r in requests).encode()
    out = subprocess.run([oracle], input=data, capture_output=True, check=True).stdout
    answers = [json.loads(line) for line in out.decode().splitlines()]
    if len(answers) != len(requests):
        sys.exit(f"go_vectors: the oracle answered {len(answers)} of {len(requests)}")
    return answers


def read(path: Path) -> list[dict[str, Any]]:
    """The rows of a vectors file ([] if there is none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def json_rows(oracle: Path, inputs: Iterable[bytes]) -> list[dict[str, Any]]:
    """Vector rows for JSON texts, answered by Go."""
    raws = list(dict.fromkeys(inputs))  # each input once, in order
    answers = ask(oracle, [{"mode": "json", "b64": base64.b64encode(r).decode()} for r in raws])
    rows = []
    for raw, answer in zip(raws, answers, strict=True):
        row: dict[str, Any] = {"input_b64": base64.b64encode(raw).decode(), "ok": answer["ok"]}
        if answer["ok"]:
            row.update(normalized_b64=answer["b64"], sha256=answer["sha256"])
        else:
            kind = "too_large" if "too large" in answer["err"] else "invalid"
            row.update(kind=kind, error=answer["err"])
        rows.append(row)
    return rows


def float_rows(oracle: Path, bits: Iterable[str]) -> list[dict[str, Any]]:
    """Vector rows for float64s (hex bits), answered by Go."""
    keys = list(dict.fromkeys(bits))
    answers = ask(oracle, [{"mode": "float", "bits": b} for b in keys])
    rows = []
    for key, answer in zip(keys, answers, strict=True):
        row: dict[str, Any] = {"bits": key, "ok": answer["ok"]}
        if answer["ok"]:
            row["json"] = base64.b64decode(answer["b64"]).decode("ascii")
        rows.append(row)
    return rows


def random_floats(count: int, seed: int) -> list[str]:
    """``count`` float64s (as hex bits) near the corners of Go's float formatting."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        r = rng.random()
        if r < 0.3:  # any bits
            f = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
        elif r < 0.6:  # the switch between plain and exponent forms (1e-6, 1e21)
            f = rng.choice([1, -1]) * rng.random() * 10.0 ** rng.randrange(-8, 24)
        elif r < 0.75:  # short decimals
            f = float(f"{rng.randrange(1, 10 ** rng.randrange(1, 18))}e{rng.randrange(-26, 24)}")
        elif r < 0.9:  # powers of ten and their neighbours
            f = 10.0 ** rng.randrange(-10, 25)
            for _ in range(rng.randrange(0, 4)):
                f = math.nextafter(f, rng.choice([0.0, math.inf]))
        else:  # subnormals and the largest
            low = rng.getrandbits(52) | (rng.randrange(0, 3) << 52)
            f = struct.unpack(">d", low.to_bytes(8, "big"))[0]
            f = rng.choice([f, -f, 1.7976931348623157e308 / 2 ** rng.randrange(0, 60)])
        out.append(struct.pack(">d", f).hex())
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines (ASCII)."""
    path.write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows))


def main() -> int:
    """Ask Go again for every vector; rewrite the files, or (``--check``) compare."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    parser.add_argument("--add-json", type=Path, help="JSON lines of {'b64': ...} inputs to add")
    parser.add_argument("--add-floats", type=int, default=0, help="random float64s to add")
    parser.add_argument("--seed", type=int, default=1, help="for --add-floats")
    args = parser.parse_args()
    old_json, old_floats = read(JSON_VECTORS), read(FLOAT_VECTORS)
    inputs = [base64.b64decode(r["input_b64"]) for r in old_json]
    if args.add_json is not None:
        inputs += [base64.b64decode(json.loads(line)["b64"]) for line in args.add_json.open()]
    bits = [r["bits"] for r in old_floats] + [struct.pack(">d", f).hex() for f in _CORNERS]
    bits += random_floats(args.add_floats, args.seed)
    with tempfile.TemporaryDirectory(prefix="castore-govectors-") as work:
        oracle = build(Path(work))
        new_json, new_floats = json_rows(oracle, inputs), float_rows(oracle, bits)
    if args.check:
        differ = sum(a != b for a, b in zip(old_json, new_json, strict=False))
        differ += sum(a != b for a, b in zip(old_floats, new_floats, strict=False))
        print(f"{len(new_json)} JSON and {len(new_floats)} float vectors; {differ} differ from Go")
        return 1 if differ or len(old_json) != len(new_json) else 0
    write(JSON_VECTORS, new_json)
    write(FLOAT_VECTORS, new_floats)
    print(f"wrote {len(new_json)} JSON and {len(new_floats)} float vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
