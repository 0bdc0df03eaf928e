"""Example noisybench method plug-ins, kept outside the noisybench package.

Put this directory's parent on ``PYTHONPATH`` (or install it) and add ``../conf`` to Hydra's
search path; see ``bootstrap.py`` and ``conf/method/bootstrap.yaml``.
"""

from my_methods.bootstrap import SoftBootstrapping, soft_bootstrapping_loss

__all__ = ["SoftBootstrapping", "soft_bootstrapping_loss"]
