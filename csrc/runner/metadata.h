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
// The most input channels a record may state (MAX_CHANNELS of deeprebirth/export/metadata.py).
inline constexpr int64_t kMaxChannels = 4096;

struct ExportMetadata {
  std::array<int64_t, 2> input_size{224, 224};  // centre crop (H, W)
  int64_t resize_size = 256;                    // shorter side before the crop
  int64_t channels = 3;                         // model input channels
  // What the channels hold: "RGB" (3 channels), "GRAY" (1: the luma of the RGB image) or "none"
  // (any other count: the model takes no image input).
  std::string color = "RGB";
  std::vector<float> mean{0.485F, 0.456F, 0.406F};  // one per channel
  std::vector<float> std{0.229F, 0.224F, 0.225F};
  std::vector<std::string> class_names;  // may be empty
  std::vector<std::string> rules_applied;
  std::string source_model = "unknown";
  std::string format = "torchscript";
  bool portable = false;

  // "class_names[i]" or "class i" when the model has no names.
  std::string label(int64_t index) const;
};

// Parses and validates the JSON record (sizes: integers in [1, kMaxImageSide]; channels in
// [1, kMaxChannels], 3 when absent; one mean and std per channel). Throws std::invalid_argument
// naming the field.
ExportMetadata parse_metadata(const std::string& json_text);

}  // namespace deeprebirth::runner
