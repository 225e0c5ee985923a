"""The C++ side of an installed deeprebirth: the operator library, its headers and CMake package.

A wheel install carries them inside the package (``deeprebirth/lib``, ``deeprebirth/include``,
``deeprebirth/share/cmake/deeprebirth``), so a C++ project finds them with

    cmake -DCMAKE_PREFIX_PATH="$(python -c 'import deeprebirth; print(deeprebirth.cmake_prefix_path())')" ..

and ``find_package(deeprebirth)`` / ``target_link_libraries(app PRIVATE deeprebirth::ops)``, as with
``torch.utils.cmake_prefix_path``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def cmake_prefix_path() -> str:
    """The folder to add to ``CMAKE_PREFIX_PATH`` for ``find_package(deeprebirth)``.

    Raises:
        FileNotFoundError: this install has no CMake package (an editable install: its C++ package
            comes from ``cmake --install build/cmake --prefix DIR``, then use ``DIR``).

    Example:
        >>> cmake_prefix_path()  # doctest: +SKIP
        '.../site-packages/deeprebirth/share/cmake'
    """
    prefix = _PACKAGE_DIR / "share" / "cmake"
    if not (prefix / "deeprebirth" / "deeprebirthConfig.cmake").is_file():
        raise FileNotFoundError(
            f"no CMake package in {_PACKAGE_DIR} (editable installs have none): install with "
            "`pip install --no-build-isolation .`, or run `cmake --install build/cmake --prefix DIR` "
            "in the checkout and put DIR into CMAKE_PREFIX_PATH"
        )
    return str(prefix)
