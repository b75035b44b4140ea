"""mmcl: multi-modal continual learning, notebook-first.

The library behind the notebooks: profiles (:mod:`mmcl.config`), the embedded benchmark and real
data (:mod:`mmcl.data`), the open_clip backbone (:mod:`mmcl.models`), methods
(:mod:`mmcl.methods`), the continual-learning engine (:mod:`mmcl.engine`), metrics and run
records.

Importing it pins the CPU kernels of this process and of those it starts to AVX2
(:mod:`mmcl.kernels`), so that a seed gives the same bytes on every x86-64 machine.
"""
from mmcl import kernels as _kernels

# Before anything imports numpy or torch: the CPU kernels every number is computed with (mmcl.kernels).
_kernels.pin()

__version__ = "0.1.0"
