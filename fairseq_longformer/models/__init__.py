"""Every module in this package registers itself with fairseq on import."""

from .._registry import import_all_modules

import_all_modules(__name__, __path__)
