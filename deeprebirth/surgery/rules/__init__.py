"""Built-in slimming rules, one per file; importing this package registers them all."""

from deeprebirth.surgery.rules import (  # noqa: F401
    branch_slim,
    fold_bn,
    fuse_conv_pool,
    merge_branches,
    streamline,
    tucker,
)
