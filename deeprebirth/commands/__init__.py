"""Sub-commands of the ``deeprebirth`` CLI (see deeprebirth.cli)."""
