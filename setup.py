from setuptools import find_packages, setup

setup(
    name="pyrun",
    version="0.1.0",
    description="A container runtime and image/container manager for Linux",
    packages=find_packages(include=["pyrun", "pyrun.*"]),
    python_requires=">=3.11",
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "requests", "zstandard", "pyroute2"],
    extras_require={"test": ["pytest"]},
    cffi_modules=["native/build.py:ffi"],
    scripts=["bin/pyrun", "bin/pyrunctl"],
)
