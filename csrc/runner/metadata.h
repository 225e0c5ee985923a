// The metadata record of exported models (schema in deeprebirth/export/metadata.py).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace deeprebirth::runner {

inline constexpr const char* kMetadataFile = "deeprebirth.json";
// The largest crop side and resize size a record may ask for, and the longest side an image may
// have after the resize (MAX_IMAGE_SIDE of deeprebirth/export/metadata.py).
inline constexpr int64_t kMaxImageSide = 16384;

struct ExportMetadata {
  std::array<int64_t, 2> input_size{224, 224};  // centre crop (H, W)
  int64_t resize_size = 256;                    // shorter side before the crop
  std::array<float, 3> mean{0.485F, 0.456F, 0.406F};
  std::array<float, 3> std{0.229F, 0.224F, 0.225F};
  std::vector<std::string> class_names;  // may be empty
  std::vector<std::string> rules_applied;
  std::string source_model = "unknown";
  std::string format = "torchscript";
  bool portable = false;

  // "class_names[i]" or "class i" when the model has no names.
  std::string label(int64_t index) const;
};

// Parses and validates the JSON record (sizes: integers in [1, kMaxImageSide]). Throws
// std::invalid_argument naming the field.
ExportMetadata parse_metadata(const std::string& json_text);

}  // namespace deeprebirth::runner
