#!/usr/bin/env python3
"""Build `dist/mlrunner.pyz`, one file that any CPython >= 3.8 runs with nothing installed (SPEC Z1).

    python3 build_zipapp.py              # mlrunner + pure-Python PyYAML, no compiled code
    python3 build_zipapp.py --with-ssh   # also paramiko and its compiled dependencies, for this
                                         # interpreter and platform: dist/mlrunner-ssh-<tag>.pyz

The same sources give the same bytes: entries are sorted, with fixed timestamps and modes, and
the vendored PyYAML is one pinned release whatever PyYAML is installed.
Compiled modules cannot be imported from a zip, so the --with-ssh archive carries them under
`_vendor/` and its `__main__.py` unpacks them once into a per-user cache (as shiv does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Optional

ROOT = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
VENDOR = "_vendor/"
PYYAML = "6.0.3"  # the PyYAML release inside the pyz; change both lines together
PYYAML_SOURCES = "a0f5b387f30f9579"  # content_hash() of its yaml/*.py
SKIPPED_SUFFIXES = (".pyc", ".pyo")

MAIN = """\
import sys

from mlrunner.cli import main

sys.exit(main())
"""

# Runs from inside the archive, so it may use only the standard library. The cache key is the
# content hash of `_vendor/`, computed at build time: starting up hashes nothing.
MAIN_WITH_VENDOR = '''\
import os
import shutil
import sys
import tempfile
import zipfile

VENDOR_HASH = "{vendor_hash}"


def _unpack_vendor() -> str:
    """Unpack `_vendor/` once per archive content; a half-written cache is never visible."""
    archive = os.path.dirname(os.path.abspath(__file__))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    parent = os.path.join(cache, "mlrunner")
    target = os.path.join(parent, VENDOR_HASH)
    if os.path.isdir(target):
        return target
    os.makedirs(parent, mode=0o700, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(scratch, [n for n in bundle.namelist() if n.startswith("_vendor/")])
        try:
            os.rename(os.path.join(scratch, "_vendor"), target)
        except OSError:  # another process unpacked it first
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


sys.path.insert(0, _unpack_vendor())

from mlrunner.cli import main  # noqa: E402

sys.exit(main())
'''


def python_files(directory: Path, prefix: str) -> Dict[str, bytes]:
    """Every .py file under `directory` (no caches, no compiled code), keyed by archive name."""
    return {f"{prefix}/{path.relative_to(directory).as_posix()}": path.read_bytes()
            for path in directory.rglob("*.py") if "__pycache__" not in path.parts}


def _installed_yaml() -> Dict[str, bytes]:
    try:
        import yaml
    except ImportError:
        return {}
    return python_files(Path(yaml.__file__).parent, "yaml")


def _downloaded_yaml() -> Dict[str, bytes]:
    """The pinned release's `yaml/*.py` from its wheel for this interpreter, downloaded once into a cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlrunner-build" / f"pyyaml-{PYYAML}"
    wheels = sorted(cache.glob("*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                   "--only-binary", ":all:", "--dest", str(cache), f"pyyaml=={PYYAML}"]
        if subprocess.run(command).returncode != 0:
            return {}
        wheels = sorted(cache.glob("*.whl"))
    return {name: data for wheel in wheels[:1] for name, data in wheel_members(wheel)
            if name.startswith("yaml/") and name.endswith(".py")}


def yaml_sources() -> Dict[str, bytes]:
    """PyYAML's pure-Python package, always the pinned release's, so that the pyz's bytes depend on
    this repository only: the installed copy when it is that release, else its wheel (any platform's
    wheel holds the same .py files; the C extension is left out)."""
    for source in (_installed_yaml, _downloaded_yaml):
        files = source()
        if files and content_hash(files) == PYYAML_SOURCES:
            return files
    sys.exit(f"build_zipapp: the pyz carries PyYAML {PYYAML}, which is neither installed nor downloadable here; "
             f"`pip install pyyaml=={PYYAML}` and build again")


def wheel_members(wheel: Path) -> Iterator[tuple[str, bytes]]:
    """A wheel's importable files, as they would lie in site-packages."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or name.endswith(SKIPPED_SUFFIXES) or "/__pycache__/" in name:
                continue
            parts = name.split("/")
            if parts[0].endswith(".data"):  # <dist>.data/purelib|platlib/... go to the top
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            yield name, archive.read(info)


def ssh_vendor() -> Dict[str, bytes]:
    """paramiko and its dependencies, from binary wheels for this interpreter, under `_vendor/`."""
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary", ":all:", "--dest", download, "paramiko"]
        if subprocess.run(command).returncode != 0:
            sys.exit("build_zipapp: `pip download paramiko` failed (it needs the package index)")
        files: Dict[str, bytes] = {}
        for wheel in sorted(Path(download).glob("*.whl")):
            files.update((VENDOR + name, data) for name, data in wheel_members(wheel))
        return files


def platform_tag() -> str:
    """The interpreter and platform the compiled dependencies were built for, e.g. cp311-linux_x86_64."""
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform}"


def content_hash(files: Dict[str, bytes]) -> str:
    """A short digest of names and contents: the cache directory that these files unpack into."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()[:16]


def write_pyz(path: Path, files: Dict[str, bytes]) -> None:
    """Shebang, then a deflated zip with sorted entries, fixed times and fixed modes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(SHEBANG)
        with zipfile.ZipFile(stream, "w") as archive:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, date_time=EPOCH)
                info.create_system = 3  # unix, so that the mode below is read
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name], compresslevel=9)
    path.chmod(0o755)


def build(out_dir: Path, vendor: Optional[Dict[str, bytes]] = None, name: str = "mlrunner.pyz") -> Path:
    """Write the archive into `out_dir` and return its path; `vendor` maps `_vendor/...` names to bytes."""
    files = python_files(ROOT / "mlrunner", "mlrunner")
    files.update(yaml_sources())
    if vendor:
        files.update(vendor)
        files["__main__.py"] = MAIN_WITH_VENDOR.format(vendor_hash=content_hash(vendor)).encode()
    else:
        files["__main__.py"] = MAIN.encode()
    path = out_dir / name
    write_pyz(path, files)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-ssh", action="store_true",
                        help="also bundle paramiko and its compiled dependencies (needs the package index)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "dist", help="where to write the archive")
    args = parser.parse_args()
    if args.with_ssh:
        path = build(args.out_dir, ssh_vendor(), f"mlrunner-ssh-{platform_tag()}.pyz")
    else:
        path = build(args.out_dir)
    print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
