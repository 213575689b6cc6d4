"""Fill a folder with every wheel the package needs on a GPU image except torch — for
``make test-gpu WHEELS=dir`` on a machine without network (``make wheels`` runs this).

    python scripts/gpu_wheels.py --dest wheels --python-version 3.11 --platform manylinux_2_28_x86_64 \
        --torch 2.11.0

1. DeepSpeed is published as a source archive only: it is built here into a pure-Python wheel
   (``pip wheel --no-deps``, no ops compiled: ``DS_BUILD_OPS=0``; the GPU compiles what it needs
   at run time), so the offline image never builds it.
2. The rest of the dependency closure is resolved for the target interpreter and platform
   (``pip install --dry-run --report`` with ``--platform/--python-version --only-binary=:all:``,
   torch held at the image's version so every other version fits it), then each wheel is
   downloaded alone (``pip download --no-deps``). torch, triton and the nvidia-* CUDA libraries
   are left out: the image's own CUDA torch is kept.
3. setuptools and wheel come along, for the editable install without build isolation.

The folder ends with ``MANIFEST.txt``: the wheels and what they were resolved for.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_KEEPS = re.compile(r"^(torch|triton|nvidia-.*|pytorch-triton.*)$")
"""What the GPU image's own CUDA torch brings: never downloaded, never replaced."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def project_requirements() -> list[str]:
    """install_requires and the ``test`` extra of setup.cfg."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines() + \
        config["options.extras_require"]["test"].splitlines()
    return [line.strip() for line in lines if line.strip()]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build_deepspeed(dest: Path, version: str) -> Path:
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    f"deepspeed=={version}", "-w", str(dest)], check=True, env=env)
    (wheel,) = dest.glob(f"deepspeed-{version}-*.whl")
    return wheel


def wheel_requirements(wheel: Path) -> list[str]:
    """Requires-Dist of a wheel, without the optional extras."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def expand_platforms(platforms: list[str]) -> list[str]:
    """Every manylinux tag a glibc of the given tags accepts, as pip does for its own machine
    (pip takes a ``--platform`` literally): ``manylinux_2_28_x86_64`` → manylinux_2_28 … 2_5,
    manylinux2014, manylinux2010, manylinux1 (PEP 600: a wheel for an older glibc runs on a newer)."""
    tags: list[str] = []
    for platform in platforms:
        legacy = re.match(r"^(manylinux1|manylinux2010|manylinux2014)_(\w+)$", platform)
        modern = re.match(r"^manylinux_(\d+)_(\d+)_(\w+)$", platform)
        if legacy:
            (major, minor), arch = LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
        elif modern:
            major, minor, arch = int(modern.group(1)), int(modern.group(2)), modern.group(3)
        else:
            tags.append(platform)
            continue
        tags += [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
        tags += [f"{name}_{arch}" for name, (_, m) in LEGACY_MANYLINUX.items() if m <= minor]
    return list(dict.fromkeys(tags))


def target_flags(python_version: str, platforms: list[str]) -> list[str]:
    flags = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
    for platform in expand_platforms(platforms):
        flags += ["--platform", platform]
    return flags


def resolve(requirements: list[str], *, torch: str, flags: list[str]) -> list[tuple[str, str]]:
    """(name, version) of every distribution the requirements pull in on the target."""
    with tempfile.TemporaryDirectory() as tmp:
        constraint, report = Path(tmp) / "torch.txt", Path(tmp) / "report.json"
        constraint.write_text(f"torch=={torch}\n")
        pip("install", "--dry-run", "--quiet", "--ignore-installed", "--target", str(Path(tmp) / "target"),
            "--report", str(report), "-c", str(constraint), *flags, *requirements)
        items = json.loads(report.read_text())["install"]
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in items]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--python-version", default="3.11", help="the image's Python, e.g. 3.10 or 3.11")
    parser.add_argument("--platform", nargs="+", default=["manylinux_2_28_x86_64"],
                        help="wheel platform tags the image accepts, e.g. manylinux2014_x86_64")
    parser.add_argument("--torch", default="2.11.0", help="the image's torch version (kept; others resolve against it)")
    parser.add_argument("--deepspeed", default=metadata.version("deepspeed"), help="DeepSpeed version to build")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    flags = target_flags(args.python_version, args.platform)
    deepspeed = build_deepspeed(args.dest, args.deepspeed)
    requirements = [r for r in project_requirements() if requirement_name(r) != "deepspeed"]
    requirements += wheel_requirements(deepspeed)      # DeepSpeed itself is the wheel just built
    wanted = [(name, version) for name, version in resolve(requirements, torch=args.torch, flags=flags)
              if not IMAGE_KEEPS.match(normalise(name)) and normalise(name) != "deepspeed"]
    pip("download", "--no-deps", "--quiet", "-d", str(args.dest), *flags,
        *[f"{name}=={version}" for name, version in wanted], "setuptools>=64", "wheel")
    wheels = sorted(p.name for p in args.dest.glob("*.whl"))
    (args.dest / "MANIFEST.txt").write_text(
        f"# for Python {args.python_version} on {' '.join(args.platform)} beside torch {args.torch} (not included)\n"
        + "\n".join(wheels) + "\n")
    print(f"{len(wheels)} wheels in {args.dest} (MANIFEST.txt); install them offline with "
          f"`make test-gpu WHEELS={args.dest}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
