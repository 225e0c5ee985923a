// Catch2 entry point of the C++ test binary.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
