"""Built-in slimming rules, one per file; importing this package registers them all.

The list of rules is the list of modules here (files starting with ``_`` are helpers): adding a
rule is adding a file.
"""

import importlib
import pkgutil

BUILTIN_RULE_MODULES = tuple(
    sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
)

for _name in BUILTIN_RULE_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
