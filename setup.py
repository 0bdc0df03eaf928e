"""Package layout (the rest of the metadata is in pyproject.toml).

The repository keeps the comparison methods in the top-level ``baselines/`` folder and the
Hydra configs in ``conf/``; both are installed *inside* the package, as
``noisybench.baselines`` and ``noisybench.conf``, so a wheel carries its configs and installs
no top-level ``baselines`` package (an unrelated project of that name exists on PyPI).
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["noisybench", "noisybench.*"]),
        "noisybench.baselines",
        "noisybench.conf",
    ],
    package_dir={"noisybench.baselines": "baselines", "noisybench.conf": "conf"},
)
