"""Installs the `tessera` Python package (docs/python.md, "Install").

    tools/build.sh                                       # builds build/python/tessera/_tessera*.so
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation ./python  # no network needed
    pip wheel --no-deps --no-build-isolation -w dist ./python   # a wheel to install elsewhere

The native module is the one CMake built: from $TESSERA_BUILD_DIR, else ../build. When it is
missing this builds it (cmake --build on that tree, configuring it first if needed).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def native_module():
    build = os.path.abspath(os.environ.get("TESSERA_BUILD_DIR") or os.path.join(ROOT, "build"))
    pattern = os.path.join(build, "python", "tessera", "_tessera*.so")
    if not glob.glob(pattern):
        if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
            subprocess.check_call(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                                   "-DTESSERA_PYTHON=ON", f"-DPython_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["cmake", "--build", build, "--target", "_tessera", "-j",
                               str(os.cpu_count() or 2)])
    found = glob.glob(pattern)
    if not found:
        sys.exit(f"setup.py: no {pattern} after building (is pybind11-dev installed?)")
    return found[0]


class BuildPyWithNative(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "tessera")
        os.makedirs(target, exist_ok=True)
        shutil.copy2(native_module(), target)


class NativeDistribution(Distribution):
    """The package carries a native module: its wheel is for this Python and platform
    (cp311-cp311-linux_x86_64 on Debian 12), not py3-none-any."""

    def has_ext_modules(self):
        return True


setup(
    name="tessera",
    version="0.1.0",
    description="Python and PyTorch client of the Tessera parameter server",
    packages=["tessera"],
    package_dir={"": HERE},
    python_requires=">=3.9",
    cmdclass={"build_py": BuildPyWithNative},
    distclass=NativeDistribution,
    zip_safe=False,
)
