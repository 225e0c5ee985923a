"""The deeprebirth version (read by setup.py and CMakeLists.txt too)."""

__version__ = "0.1.0"
