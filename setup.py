"""Build meshd with its hot path compiled by mypyc (docs/architecture.md, "Building and packaging").

`pip install .`, `pip wheel .` and `pip install -e .` compile the modules every request runs
through (`meshd.COMPILED_MODULES`) into C extensions, as black and charset-normalizer ship
themselves, and the cffi binding of libnghttp2 (`meshd.http2._nghttp2`, the fast HTTP/2 codec)
when libnghttp2's headers are there (Debian `libnghttp2-dev`; without them HTTP/2 runs on the
pure-Python `h2` codec, and the build says so). They build pure Python instead, which works the same at about half the requests per
CPU-second, when `MESHD_PURE=1` or when there is no C compiler or no Python headers. A failure
of mypyc itself (a type error, say) fails the build: it never turns silently into the slow one.

Everything else (metadata, packages, dependencies) is declared in setup.cfg.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

#: mypyc's shared runtime (one C library the compiled modules share) is installed as this
#: top-level module: `meshd__mypyc` (docs/architecture.md says which top-level names meshd claims).
GROUP = "meshd"


def compiled_modules() -> list[str]:
    """`meshd.COMPILED_MODULES`, read without importing meshd (its dependencies may be absent)."""
    tree = ast.parse((ROOT / "meshd" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id == "COMPILED_MODULES" and node.value is not None:
                return [str(name) for name in ast.literal_eval(node.value)]
    raise SystemExit("setup.py: meshd/__init__.py defines no COMPILED_MODULES")


def why_pure() -> str | None:
    """Why this build runs the hot path as pure Python, or None when it compiles it."""
    if os.environ.get("MESHD_PURE") == "1":
        return "MESHD_PURE=1"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}; apt-get install gcc)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; apt-get install python3-dev)"
    return None


PURE_REASON = why_pure()

#: the cffi binding's extension module (meshd/http2/_nghttp2_build.py builds it)
NGHTTP2_MODULE = "meshd.http2._nghttp2"


def nghttp2_extension() -> Any | None:
    """The libnghttp2 binding as an Extension, or None (and why) when it cannot be built."""
    spec = importlib.util.spec_from_file_location("_nghttp2_build", ROOT / "meshd/http2/_nghttp2_build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    reason = build.why_not()
    if reason is not None:
        print(f"meshd: not building the libnghttp2 binding ({reason}): HTTP/2 runs on the h2 codec",
              file=sys.stderr)
        return None
    return build.builder().distutils_extension(tmpdir=str(ROOT / "build" / "cffi"))


class MeshdDistribution(Distribution):
    """Says it has extensions before they exist, so the wheel is tagged for this platform."""

    def has_ext_modules(self) -> bool:
        return PURE_REASON is None


class build_mypyc(build_ext):
    """Runs mypyc only when extensions are built, not for metadata (`egg_info`, `dist_info`).

    mypyc type-checks the whole project from the source tree with setup.cfg's mypy settings (what
    `mypy --strict` checks), then writes C into build/ that build_ext compiles.
    """

    def finalize_options(self) -> None:
        if PURE_REASON is None and not self.distribution.ext_modules:
            from mypyc.build import mypycify

            paths = [name.replace(".", "/") + ".py" for name in compiled_modules()]
            print(f"meshd: compiling the hot path with mypyc ({len(paths)} modules)", file=sys.stderr)
            extensions = mypycify(paths, group_name=GROUP)
            nghttp2 = nghttp2_extension()
            if nghttp2 is not None:
                extensions.append(nghttp2)
            self.distribution.ext_modules = extensions
        super().finalize_options()

    def copy_extensions_to_source(self) -> None:
        # An editable install (`make install`) puts the builds beside their sources. build_ext
        # does not recompile C that mypyc left unchanged, and copies the old build with its old
        # time; `import meshd` refuses a build older than its source, so the copies are stamped.
        super().copy_extensions_to_source()
        suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
        for name in [*compiled_modules(), GROUP + "__mypyc", NGHTTP2_MODULE]:
            built = ROOT / (name.replace(".", "/") + suffix)
            if built.exists():
                os.utime(built)


if PURE_REASON is not None:
    print(f"meshd: building pure Python ({PURE_REASON}): the hot path runs interpreted", file=sys.stderr)

options: dict[str, Any] = {"distclass": MeshdDistribution, "cmdclass": {"build_ext": build_mypyc}}
setup(**options)
