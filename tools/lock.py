"""Write the install locks from the environment this runs in (the one the tests passed in).

Each lock pins exact versions of what one set of requirements pulls in, found by walking the
installed packages' metadata from ``pyproject.toml``'s requirements, so ``make run`` installs
only what running needs:

- ``requirements.lock``: the project's dependencies;
- ``requirements-test.lock``: ``-r requirements.lock`` plus what the ``test`` extra adds;
- ``requirements-docs.lock``: ``-r requirements.lock`` plus what the ``docs`` extra adds.

The requirements are read from ``pyproject.toml``, the versions from the installed packages: run
it with the venv's Python after installing ``.[test,docs]`` (``make lock`` does both). The
pins hold for this platform (Linux x86_64, Python 3.12: e.g. torch's CUDA libraries).
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "cite_bench"
ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "# Exact versions the tests passed with ({what}). Written by `make lock` (tools/lock.py);\n"
    "# do not edit by hand. Platform: Linux x86_64, Python 3.12.\n"
)


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether a requirement holds here for a package installed with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure(extras: set[str]) -> dict[str, str]:
    """Installed name -> version of everything the project with ``extras`` needs."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    queue = [Requirement(text) for text in texts]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{name} is required but not installed: run `make lock` (it installs first)")
        pinned[name] = distribution.version
        queue += [
            sub
            for sub in map(Requirement, distribution.requires or [])
            if _applies(sub, set(requirement.extras))
        ]
    pinned.pop(canonicalize_name(PROJECT), None)
    return pinned


def _write(path: Path, what: str, pins: dict[str, str], include: str | None = None) -> None:
    lines = [HEADER.format(what=what)]
    if include:
        lines.append(f"-r {include}\n")
    lines += [f"{name}=={version}\n" for name, version in sorted(pins.items())]
    path.write_text("".join(lines))
    print(f"{path.name}: {len(pins)} packages")


def main() -> None:
    runtime = closure(set())
    _write(ROOT / "requirements.lock", "running: make install, make run", runtime)
    for extra in ("test", "docs"):
        added = {k: v for k, v in closure({extra}).items() if k not in runtime}
        _write(
            ROOT / f"requirements-{extra}.lock",
            f"the {extra} extra, on top of requirements.lock",
            added,
            include="requirements.lock",
        )


if __name__ == "__main__":
    main()
