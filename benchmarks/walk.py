"""How far a fit's arguments travel: trace one `padim fit` from the command's run function to the
model file and count the rooms (modules) it passes through.

Every call between two padim functions in different modules is a step into a room; every return
across modules is a climb back up; each distinct (caller, callee) pair counts once, so loops over
batches do not inflate the walk. Run it on two trees to compare them:

    python benchmarks/walk.py                          # this checkout
    PYTHONPATH=/path/to/other/src python benchmarks/walk.py

Prints one JSON line: rooms entered, steps, climbs back up, entries into the estimator module,
distinct modules, and the longest chain of modules on the stack at once.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FIT_COMMANDS = ("cli.commands:cmd_fit", "cli.fit:run")  # where the walk starts, then and now


def make_images(folder: Path, n: int = 8, side: int = 64) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )


def main() -> None:
    import padim
    from padim.cli import main as padim_main

    root = str(Path(padim.__file__).parent)
    stack: list[tuple[str, str]] = []
    steps: set[tuple[str, str]] = set()
    climbs: set[tuple[str, str]] = set()
    deepest = 0

    def where(frame) -> tuple[str, str] | None:
        path = frame.f_code.co_filename
        if not path.startswith(root) or frame.f_code.co_name == "<module>":
            return None  # outside padim, or a module's own code running on import
        module = path[len(root) :].removesuffix(".py").replace("/", ".").strip(".")
        return module or "padim", f"{module}:{frame.f_code.co_qualname}"

    def profile(frame, event, arg) -> None:
        nonlocal deepest
        if event not in ("call", "return"):
            return
        here = where(frame)
        if here is None:
            return
        if event == "call":
            if not stack and here[1] not in FIT_COMMANDS:
                return  # parsing arguments, building the parser: not the fit's walk
            if stack and stack[-1][0] != here[0]:
                steps.add((stack[-1][1], here[1]))
            stack.append(here)
            rooms_on_stack = len({m for m, _ in stack})
            deepest = max(deepest, rooms_on_stack)
        elif stack and stack[-1] == here:
            stack.pop()
            if stack and stack[-1][0] != here[0]:
                climbs.add((here[1], stack[-1][1]))

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "good"
        data.mkdir()
        make_images(data)
        out = Path(tmp) / "m.safetensors"
        args = ["fit", str(data), "--out", str(out), "--size", "64", "--crop", "none", "--quiet"]
        sys.setprofile(profile)
        try:
            code = padim_main(args)
        finally:
            sys.setprofile(None)
        assert code == 0 and out.exists()

    def module(qualified: str) -> str:
        return qualified.split(":")[0]

    rooms = {module(b) for _, b in steps}
    estimator = {(a, b) for a, b in steps if module(b) == "model.estimator"}
    if "--steps" in sys.argv:
        for a, b in sorted(steps):
            print(f"{a} -> {b}")
    print(
        json.dumps(
            {
                "rooms_entered": len(steps),
                "climbs_back_up": len(climbs),
                "estimator_entries": len(estimator),
                "distinct_modules": len(rooms),
                "deepest_chain_of_modules": deepest,
            }
        )
    )


if __name__ == "__main__":
    main()
