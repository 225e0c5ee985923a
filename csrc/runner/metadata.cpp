// JSON metadata record -> ExportMetadata, with the same checks as ExportMetadata.validate().
#include "metadata.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace deeprebirth::runner {

namespace {

constexpr const char* kSchema = "deeprebirth-export";
constexpr int kSchemaVersion = 1;

template <typename T>
T field(const nlohmann::json& record, const char* name, const T& fallback) {
  if (!record.contains(name)) {
    return fallback;
  }
  try {
    return record.at(name).get<T>();
  } catch (const nlohmann::json::exception& error) {
    throw std::invalid_argument(std::string("metadata field '") + name +
                                "' has the wrong type: " + error.what());
  }
}

void check(bool condition, const std::string& message) {
  if (!condition) {
    throw std::invalid_argument("metadata: " + message);
  }
}

// `value` as an image size of field `name`: a JSON integer in [1, kMaxImageSide], checked before
// any conversion (a float or a number beyond int64 would otherwise be cast silently).
int64_t image_side(const nlohmann::json& value, const std::string& name) {
  constexpr auto kMax = static_cast<uint64_t>(kMaxImageSide);
  const bool in_range = value.is_number_unsigned()
                            ? value.get<uint64_t>() >= 1 && value.get<uint64_t>() <= kMax
                            : value.is_number_integer() && value.get<int64_t>() >= 1 &&
                                  value.get<int64_t>() <= kMaxImageSide;
  check(in_range, "expected " + name + " to be integers in [1, " + std::to_string(kMaxImageSide) +
                      "] (MAX_IMAGE_SIDE), but got " + value.dump());
  return value.get<int64_t>();
}

// `rgb` for a 3-channel input, else its average repeated per channel (as _per_channel of
// deeprebirth/export/metadata.py).
std::vector<double> per_channel(const std::vector<double>& rgb, size_t channels) {
  if (channels == 3) {
    return rgb;
  }
  return std::vector<double>(channels, (rgb[0] + rgb[1] + rgb[2]) / 3.0);
}

}  // namespace

std::string ExportMetadata::label(int64_t index) const {
  if (index >= 0 && index < static_cast<int64_t>(class_names.size())) {
    return class_names[static_cast<size_t>(index)];
  }
  return "class " + std::to_string(index);
}

ExportMetadata parse_metadata(const std::string& json_text) {
  nlohmann::json record;
  try {
    record = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& error) {
    throw std::invalid_argument(std::string("metadata is not valid JSON: ") + error.what());
  }
  check(record.is_object(), "expected a JSON object");
  const auto schema = field<std::string>(record, "schema", "");
  const auto version = field<int>(record, "schema_version", 0);
  check(schema == kSchema && version == kSchemaVersion,
        std::string("expected schema ") + kSchema + " v" + std::to_string(kSchemaVersion) +
            ", but got '" + schema + "' v" + std::to_string(version));
  ExportMetadata meta;
  if (record.contains("input_size")) {
    const auto& input_size = record.at("input_size");
    check(input_size.is_array() && input_size.size() == 2,
          "expected input_size [H, W], but got " + input_size.dump());
    meta.input_size = {image_side(input_size[0], "input_size"),
                       image_side(input_size[1], "input_size")};
  }
  if (record.contains("resize_size")) {
    meta.resize_size = image_side(record.at("resize_size"), "resize_size");
  }
  check(meta.resize_size >= std::max(meta.input_size[0], meta.input_size[1]),
        "expected resize_size >= the crop size, but got " + std::to_string(meta.resize_size));
  if (record.contains("channels")) {
    const auto& channels = record.at("channels");
    const bool in_range = channels.is_number_integer() && channels.get<int64_t>() >= 1 &&
                          channels.get<int64_t>() <= kMaxChannels;
    check(in_range, "expected channels to be an integer in [1, " + std::to_string(kMaxChannels) +
                        "] (MAX_CHANNELS), but got " + channels.dump());
    meta.channels = channels.get<int64_t>();
  }
  const auto count = static_cast<size_t>(meta.channels);
  const std::vector<double> imagenet_mean{0.485, 0.456, 0.406};
  const std::vector<double> imagenet_std{0.229, 0.224, 0.225};
  const auto mean = field<std::vector<double>>(record, "mean", per_channel(imagenet_mean, count));
  const auto std = field<std::vector<double>>(record, "std", per_channel(imagenet_std, count));
  check(mean.size() == count && std.size() == count,
        "expected " + std::to_string(count) + " means and " + std::to_string(count) +
            " stds (one per channel, channels=" + std::to_string(count) + ")");
  meta.mean.assign(count, 0.0F);
  meta.std.assign(count, 0.0F);
  for (size_t c = 0; c < count; ++c) {
    const auto largest = static_cast<double>(std::numeric_limits<float>::max());
    check(std::abs(mean[c]) <= largest && std::abs(std[c]) <= largest,
          "expected finite float means and stds");
    meta.mean[c] = static_cast<float>(mean[c]);
    meta.std[c] = static_cast<float>(std[c]);
    check(meta.std[c] > 0.0F, "expected positive std values");
  }
  const std::string color = meta.channels == 3 ? "RGB" : meta.channels == 1 ? "GRAY" : "none";
  meta.color = field<std::string>(record, "color", color);
  check(meta.color == color, "expected color \"" + color +
                                 "\" for channels=" + std::to_string(meta.channels) +
                                 ", but got \"" + meta.color + "\"");
  meta.class_names = field<std::vector<std::string>>(record, "class_names", {});
  meta.rules_applied = field<std::vector<std::string>>(record, "rules_applied", {});
  meta.source_model = field<std::string>(record, "source_model", meta.source_model);
  meta.format = field<std::string>(record, "format", meta.format);
  meta.portable = field<bool>(record, "portable", false);
  return meta;
}

}  // namespace deeprebirth::runner
