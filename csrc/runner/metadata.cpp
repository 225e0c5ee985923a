// JSON metadata record -> ExportMetadata, with the same checks as ExportMetadata.validate().
#include "metadata.h"

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
  const auto input_size = field<std::vector<int64_t>>(record, "input_size", {224, 224});
  check(input_size.size() == 2 && input_size[0] > 0 && input_size[1] > 0,
        "expected input_size [H, W] > 0");
  meta.input_size = {input_size[0], input_size[1]};
  meta.resize_size = field<int64_t>(record, "resize_size", meta.resize_size);
  check(meta.resize_size >= std::max(input_size[0], input_size[1]),
        "expected resize_size >= the crop size, but got " + std::to_string(meta.resize_size));
  const auto mean = field<std::vector<float>>(record, "mean", {0.485F, 0.456F, 0.406F});
  const auto std = field<std::vector<float>>(record, "std", {0.229F, 0.224F, 0.225F});
  check(mean.size() == 3 && std.size() == 3, "expected 3 means and 3 stds");
  for (size_t c = 0; c < 3; ++c) {
    check(std[c] > 0.0F, "expected positive std values");
    meta.mean[c] = mean[c];
    meta.std[c] = std[c];
  }
  check(field<std::string>(record, "color", "RGB") == "RGB", "expected color \"RGB\"");
  meta.class_names = field<std::vector<std::string>>(record, "class_names", {});
  meta.rules_applied = field<std::vector<std::string>>(record, "rules_applied", {});
  meta.source_model = field<std::string>(record, "source_model", meta.source_model);
  meta.format = field<std::string>(record, "format", meta.format);
  meta.portable = field<bool>(record, "portable", false);
  return meta;
}

}  // namespace deeprebirth::runner
