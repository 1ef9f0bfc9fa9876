"""``python -m benchmarks.gpu_wheels``: the wheels a GPU machine without a package index needs.

The lent H200 machine (benchmarks/README.md "GPU") runs Python 3.12 with torch 2.11 and the
packages listed in ``benchmarks/gpu_machine_packages.txt``, and reaches no package index. This
command, run on a machine that does, downloads for CPython 3.12 on manylinux x86-64 every wheel
the project needs that the GPU machine lacks, into ``.whl/`` (git ignores it), and prints the
size of what travels to the machine: the working tree (tracked and untracked-not-ignored files)
plus the wheels, which must stay under ``LIMIT_MIB``.

What is carried is worked out, not listed: from the project's dependencies in pyproject.toml
(with their extras), each wheel's ``Requires-Dist`` (markers evaluated for the GPU machine) is
followed until every requirement is either on the machine or carried. Each package is carried at
the version installed here, where the project's tests ran; one that is not installed here gets
the newest version pip finds for the requirement. Left off on purpose (``LEFT_OUT``): mlflow
(about 70 MB installed) and kedro-viz, which only draws the DAG; without mlflow a ``kedro run``
says in one line that tracking is off and goes on (tracking/mlflow_hook.py).

On the GPU machine, after ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``,
``python -m benchmarks.gpu_wheels --check /tmp/site`` lists the requirements of the carried
wheels that the machine's own packages do not meet (their versions are not known in advance).

    python -m benchmarks.gpu_wheels            # download into .whl/, print the sizes
    python -m benchmarks.gpu_wheels --check /tmp/site   # on the GPU machine, after the install
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
MACHINE_PACKAGES = Path(__file__).with_name("gpu_machine_packages.txt")
LIMIT_MIB = 55.0  # the machine takes 64 MiB; the rest is margin for files written meanwhile
LEFT_OUT = frozenset({"mlflow", "kedro-viz"})
# On the machine, but its version is unknown and the carried wheels need a recent one
# (pydantic 2.14 needs typing-extensions>=4.16, kedro 1.7 click>=8.2): both are small and pure
# Python, so carrying them is cheaper than finding out on the machine.
ALWAYS_CARRY = frozenset({"typing-extensions", "click"})
# What the machine is known to run (benchmarks/gpu_machine_packages.txt's header): a carried
# wheel whose requirement excludes one of these would break there, so it is refused here.
MACHINE_VERSIONS = {"torch": Version("2.11.0"), "torchvision": Version("0.26.0"), "numpy": Version("2.5.2")}
PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def machine_environment() -> dict[str, str]:
    """PEP 508 marker values of the GPU machine (CPython 3.12 on Linux x86-64)."""
    env = default_environment()
    env.update(python_version=PYTHON, python_full_version=f"{PYTHON}.3", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix",
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


def machine_packages(path: Path = MACHINE_PACKAGES) -> frozenset[str]:
    """The canonical names in the machine's package list (comment lines start with #)."""
    lines = path.read_text().splitlines()
    return frozenset(canonicalize_name(x) for x in (s.strip() for s in lines) if x and not x.startswith("#"))


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The project's own dependencies, without ``LEFT_OUT``."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if canonicalize_name(r.name) not in LEFT_OUT]


def wanted(requirement: Requirement, extras: Iterable[str], env: dict[str, str]) -> bool:
    """Whether ``requirement`` applies on the machine for a package asked with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def _wheels_by_name(folder: Path) -> dict[str, Path]:
    return {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in folder.glob("*.whl")}


def _download(specs: list[str], folder: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp", "--dest", str(folder)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + specs, check=True)


def _pin(requirement: Requirement) -> str:
    """``name==<installed here>`` when the version installed here meets the requirement, else
    the requirement itself (pip picks the newest match)."""
    try:
        here = md.version(requirement.name)
    except md.PackageNotFoundError:
        return f"{requirement.name}{requirement.specifier}"
    if requirement.specifier and not requirement.specifier.contains(here, prereleases=True):
        return f"{requirement.name}{requirement.specifier}"
    return f"{requirement.name}=={here}"


def resolve(folder: Path = WHEELS) -> tuple[dict[str, Path], list[str]]:
    """Download the closure into ``folder``; returns (carried name -> wheel, problems)."""
    folder.mkdir(exist_ok=True)
    env, on_machine = machine_environment(), machine_packages()
    carried: dict[str, Path] = {}
    problems: list[str] = []
    queue = [(r, tuple(r.extras)) for r in project_requirements()]
    seen_extras: dict[str, set[str]] = {}
    while queue:
        level, queue = queue, []
        todo: dict[str, Requirement] = {}
        follow: set[str] = set()  # first seen, or seen again with new extras
        for req, extras in level:
            name = canonicalize_name(req.name)
            known = MACHINE_VERSIONS.get(name)
            if known is not None and not req.specifier.contains(known, prereleases=True):
                problems.append(f"{req} excludes the machine's {name} {known}")
            if name in LEFT_OUT or (name in on_machine and name not in ALWAYS_CARRY):
                continue
            new = set(extras) - seen_extras.get(name, set())
            if name in seen_extras and not new:
                continue
            seen_extras.setdefault(name, set()).update(extras)
            follow.add(name)
            if name not in carried:
                todo[name] = req
        present = _wheels_by_name(folder)
        specs = []
        for name, req in todo.items():
            spec = _pin(req)
            have = present.get(name)
            pinned = spec.split("==", 1)[1] if "==" in spec else None
            if have is not None and pinned is not None and str(parse_wheel_filename(have.name)[1]) == pinned:
                continue
            if have is not None:
                have.unlink()  # another version: one wheel per name, or the install stops
            specs.append(spec)
        if specs:
            _download(specs, folder)
        present = _wheels_by_name(folder)
        for name in todo:
            carried[name] = present[name]
        # Follow the requirements of the packages new at this level (with all their extras).
        for name in sorted(follow):
            for sub in wheel_requirements(carried[name]):
                if wanted(sub, seen_extras[name], env):
                    queue.append((Requirement(_without_marker(sub)), tuple(sub.extras)))
    for name, wheel in _wheels_by_name(folder).items():
        if name not in carried:  # left from an earlier closure
            wheel.unlink()
    return carried, problems


def _without_marker(req: Requirement) -> str:
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def travelling_bytes(root: Path = ROOT, extra: Iterable[Path] = ()) -> int:
    """Bytes of the tracked and untracked-not-ignored files of ``root``'s work tree, plus the
    files under each of ``extra`` (the carried folders)."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    total = sum((root / p).stat().st_size for p in listed.decode().split("\0") if p and (root / p).is_file())
    for folder in extra:
        total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def check_installed(site: Path) -> list[str]:
    """On the GPU machine: the requirements of the packages installed in ``site`` that the
    running interpreter's packages do not meet (name missing, or another version)."""
    env = machine_environment()
    carried = {canonicalize_name(d.metadata["Name"]) for d in md.distributions(path=[str(site)])}
    unmet = []
    for dist in md.distributions(path=[str(site)]):
        extras = _asked_extras(dist.metadata["Name"])
        for line in dist.requires or []:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            if name in LEFT_OUT or name in carried or not wanted(req, extras, env):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                unmet.append(f"{dist.metadata['Name']} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} needs {req}: {have} is installed")
    return unmet


def _asked_extras(name: str) -> tuple[str, ...]:
    for req in project_requirements():
        if canonicalize_name(req.name) == canonicalize_name(name):
            return tuple(req.extras)
    return ()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", type=Path, metavar="SITE",
                        help="on the GPU machine: list the carried wheels' unmet requirements")
    args = parser.parse_args(argv)
    if args.check is not None:
        unmet = check_installed(args.check)
        print("\n".join(unmet) if unmet else "every requirement of the carried wheels is met")
        return 0
    carried, problems = resolve()
    wheels_bytes = 0
    for name in sorted(carried):
        size = carried[name].stat().st_size
        wheels_bytes += size
        print(f"{carried[name].name:80s} {size / 2**20:7.2f} MiB")
    total = travelling_bytes(extra=[WHEELS])
    print(f"{len(carried)} wheels in {WHEELS.relative_to(ROOT)}/: {wheels_bytes / 2**20:.1f} MiB")
    print(f"what travels (work tree, tracked and untracked-not-ignored, plus .whl/): {total / 2**20:.1f} MiB "
          f"(limit {LIMIT_MIB:g} MiB)")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if total > LIMIT_MIB * 2**20:
        print(f"too large: {total / 2**20:.1f} MiB > {LIMIT_MIB:g} MiB", file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
