// Image decoding and the evaluation transform, step for step as
// deeprebirth/export/preprocess.py (the Python side is the specification).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <opencv2/core.hpp>
#include <optional>
#include <string>
#include <vector>

#include "metadata.h"

namespace deeprebirth::runner {

// The most pixels a decoded image may have (MAX_IMAGE_PIXELS of deeprebirth/export/preprocess.py).
inline constexpr int64_t kMaxImagePixels = kMaxImageSide * kMaxImageSide;

// (height, width) of a PNG or JPEG file read from its header without decoding; nullopt for other
// formats and headers that do not say.
std::optional<std::array<int64_t, 2>> image_header_size(const std::string& path);

// Decodes `path` to RGB float32 (CV_32FC3) in [0, 1]: 8-bit / 255, 16-bit / 65535, grayscale
// replicated, alpha dropped. Throws RunnerError(kImage) for a missing, empty or undecodable file
// and for more than kMaxImagePixels pixels (PNG / JPEG: from the header, before decoding).
cv::Mat read_image_rgb(const std::string& path);

// The (height, width) after resizing the shorter side to `size` (torchvision's rounding).
std::array<int64_t, 2> resized_shape(int64_t height, int64_t width, int64_t size);

// Resizes so that the shorter side is `size`: INTER_AREA when shrinking, INTER_LINEAR otherwise.
// Throws std::invalid_argument when the longer side would exceed kMaxImageSide.
cv::Mat resize_shorter_side(const cv::Mat& image, int64_t size);

// The top-left corner of a centred (crop_h, crop_w) window (round half to even, as Python).
std::array<int64_t, 2> center_crop_offset(int64_t height, int64_t width, int64_t crop_h,
                                          int64_t crop_w);

// A contiguous copy of the centred crop. Throws std::invalid_argument when the crop is larger.
cv::Mat center_crop(const cv::Mat& image, int64_t crop_h, int64_t crop_w);

// (x - mean) / std per channel of a continuous float32 image of C channels (one mean and std
// each), as a (C, H, W) float tensor.
at::Tensor normalize_to_chw(const cv::Mat& image, const std::vector<float>& mean,
                            const std::vector<float>& std);

// The full transform of one file: (C, input_H, input_W), C = meta.channels; a 1-channel model
// ("GRAY") gets the luma of the RGB image (cv::COLOR_RGB2GRAY after the crop). Throws
// RunnerError(kModel) for a model that takes neither RGB nor grayscale input (color "none").
at::Tensor preprocess_image(const std::string& path, const ExportMetadata& meta);

// The transforms of several files stacked: (N, C, input_H, input_W).
at::Tensor preprocess_batch(const std::vector<std::string>& paths, const ExportMetadata& meta);

}  // namespace deeprebirth::runner
