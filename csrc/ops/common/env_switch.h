// On/off switches read from the environment (DEEPREBIRTH_CONV_POOL_DIRECT,
// DEEPREBIRTH_CONV_POOL_WINOGRAD, ...).
#pragma once

#include <cstdlib>
#include <cstring>

namespace deeprebirth::ops {

// Whether the switch `variable` is on: unset, or set to anything but "0". Callers read it once
// (a function-local static), so a switch takes effect when the library loads.
inline bool env_switch_on(const char* variable) {
  const char* value = std::getenv(variable);
  return value == nullptr || std::strcmp(value, "0") != 0;
}

}  // namespace deeprebirth::ops
