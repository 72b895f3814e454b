"""Throw-away virtual environments with plugin distributions installed for real (pip,
no network): the plugin tests and the new-backend test use them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

from cliutil import clean_env, run_difftest


def build_wheel(src: Path, out_dir: Path) -> Path:
    """Build a pure-Python wheel of a ``tests/plugin_dists`` project with the stdlib alone.

    The projects are ordinary setuptools projects, but setuptools < 70.1 needs the
    ``wheel`` package to build one and it is not always installed; a wheel is a zip file
    with three metadata files, so make it here and let pip install it for real.
    """
    meta = tomllib.loads((src / "pyproject.toml").read_text())
    project = meta["project"]
    name, version = project["name"], project["version"]
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    info = f"{stem}.dist-info"
    files: dict[str, bytes] = {}
    for module in meta["tool"]["setuptools"]["py-modules"]:
        files[f"{module}.py"] = (src / f"{module}.py").read_bytes()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: difftest-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    groups = project.get("entry-points", {})
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in groups.items()
    ).encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out_dir / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


class Venv:
    """A virtual environment that sees the system site-packages (so difftest and its
    dependencies, installed there, need no network) plus the distributions installed here."""

    def __init__(self, root: Path, wheels: Path) -> None:
        self.root = root
        self.wheels = wheels
        self.python = root / "bin" / "python"
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
            check=True,
        )
        if not self._sees("difftest", "pip"):
            # This interpreter runs in a venv itself: --system-site-packages gave the new one
            # the base interpreter's packages, not the ones difftest is installed in.
            purelib = subprocess.run(
                [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
            (Path(purelib) / "_difftest_host.pth").write_text(
                "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"
            )
            assert self._sees("difftest", "pip"), "cannot make a venv that sees difftest"
        self.pip = [str(self.python), "-m", "pip"]  # the host's pip, running in the venv
        # The console script pip writes for difftest's [project.scripts] (with its main
        # guard: worker processes are spawned, and they import the main module again).
        self.difftest = root / "bin" / "difftest"
        self.difftest.write_text(f"#!{self.python}\nimport sys\nfrom difftest.cli import run\n"
                                 "if __name__ == '__main__':\n    sys.argv[0] = 'difftest'\n    run()\n")
        self.difftest.chmod(0o755)

    def _sees(self, *modules: str) -> bool:
        """Whether the venv's interpreter imports ``modules`` as its console scripts will:
        ``-P`` and an unrelated working directory, so that a module next to the test's
        working directory (the repository's root) does not count."""
        probe = "; ".join(f"import {m}" for m in modules)
        return subprocess.run([str(self.python), "-P", "-c", probe], env=clean_env(plugins=None),
                              cwd=self.root, capture_output=True).returncode == 0

    def run(self, *args: str, pythonpath: Sequence[Path] = (), **env: str | None
            ) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``difftest`` as a user would: entry points discovered, from the
        venv's directory (not the repository's root)."""
        return run_difftest(*args, command=[str(self.difftest)], cwd=self.root,
                            env=clean_env(pythonpath, plugins=None, **env))

    def pytest(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run pytest with the venv's interpreter in ``cwd``, plugins discovered as usual."""
        return subprocess.run([str(self.python), "-m", "pytest", *args], cwd=cwd, capture_output=True,
                              text=True, env=clean_env(plugins=None), timeout=300)

    def _pip(self, *args: str) -> None:
        result = subprocess.run(
            [*self.pip, *args, "--disable-pip-version-check", "--no-input", "-q"],
            capture_output=True, text=True, env=clean_env(plugins=None, PIP_NO_INDEX="1"), timeout=120,
        )
        assert result.returncode == 0, f"pip {args}: {result.stdout}{result.stderr}"

    def install(self, dist_dir: Path) -> str:
        """Install a plugin distribution; return its name."""
        self._pip("install", "--no-deps", "--no-index", str(build_wheel(dist_dir, self.wheels)))
        return tomllib.loads((dist_dir / "pyproject.toml").read_text())["project"]["name"]

    def uninstall(self, name: str) -> None:
        self._pip("uninstall", "--yes", name)

    @contextlib.contextmanager
    def installed(self, dist_dir: Path) -> Iterator[str]:
        name = self.install(dist_dir)
        try:
            yield name
        finally:
            self.uninstall(name)
