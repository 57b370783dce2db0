"""ELIT Lab: ensemble learning and iterative training of atom-finding networks.

The modules follow the pipeline: ``config`` and ``cache`` (profiles, storage),
``simulate`` and ``io`` (data), ``viz`` and ``widgets`` (pictures), ``report``
and ``reproduce`` (results), ``cli`` (the ``elit`` command).

>>> import elit_utils
>>> elit_utils.get_profile("smoke").name
'smoke'
"""

from .config import VERSION, get_profile
from .report import markdown_table, record_metrics, save_figure
from .runtime import setup

__version__ = VERSION
__all__ = ["__version__", "get_profile", "markdown_table", "record_metrics", "save_figure", "setup"]
