"""mmcl: multi-modal continual learning, notebook-first.

The library behind the notebooks: profiles (:mod:`mmcl.config`), the embedded benchmark and real
data (:mod:`mmcl.data`), the open_clip backbone (:mod:`mmcl.models`), methods
(:mod:`mmcl.methods`), the continual-learning engine (:mod:`mmcl.engine`), metrics and run
records.
"""
__version__ = "0.1.0"
