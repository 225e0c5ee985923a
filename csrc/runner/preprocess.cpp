// OpenCV decoding + resize / centre crop / normalize, mirroring deeprebirth/export/preprocess.py.
#include "preprocess.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <stdexcept>

#include "errors.h"

namespace deeprebirth::runner {

namespace {

RunnerError image_error(const std::string& path, const std::string& what) {
  return RunnerError(ExitCode::kImage, "image '" + path + "': " + what);
}

}  // namespace

cv::Mat read_image_rgb(const std::string& path) {
  std::error_code ignored;
  if (!std::filesystem::is_regular_file(path, ignored)) {
    throw image_error(path, "file not found");
  }
  if (std::filesystem::file_size(path, ignored) == 0) {
    throw image_error(path, "file is empty");
  }
  cv::Mat decoded = cv::imread(path, cv::IMREAD_UNCHANGED);
  if (decoded.empty()) {
    throw image_error(path, "not a readable image (OpenCV cannot decode it)");
  }
  cv::Mat scaled;
  switch (decoded.depth()) {
    case CV_8U:
      decoded.convertTo(scaled, CV_32F, 1.0 / 255.0);
      break;
    case CV_16U:
      decoded.convertTo(scaled, CV_32F, 1.0 / 65535.0);
      break;
    case CV_32F:
      scaled = decoded;
      break;
    default:
      throw image_error(
          path, "unsupported pixel depth (OpenCV depth " + std::to_string(decoded.depth()) + ")");
  }
  cv::Mat rgb;
  switch (scaled.channels()) {
    case 1:
      cv::cvtColor(scaled, rgb, cv::COLOR_GRAY2RGB);
      break;
    case 3:
      cv::cvtColor(scaled, rgb, cv::COLOR_BGR2RGB);
      break;
    case 4:
      cv::cvtColor(scaled, rgb, cv::COLOR_BGRA2RGB);
      break;
    default:
      throw image_error(path, "unsupported channel count " + std::to_string(scaled.channels()));
  }
  return rgb;
}

std::array<int64_t, 2> resized_shape(int64_t height, int64_t width, int64_t size) {
  if (height <= width) {
    return {size, static_cast<int64_t>(static_cast<double>(size) * width / height)};
  }
  return {static_cast<int64_t>(static_cast<double>(size) * height / width), size};
}

cv::Mat resize_shorter_side(const cv::Mat& image, int64_t size) {
  const auto [new_h, new_w] = resized_shape(image.rows, image.cols, size);
  if (new_h == image.rows && new_w == image.cols) {
    return image;
  }
  const int interpolation = new_h < image.rows ? cv::INTER_AREA : cv::INTER_LINEAR;
  cv::Mat resized;
  cv::resize(image, resized, cv::Size(static_cast<int>(new_w), static_cast<int>(new_h)), 0, 0,
             interpolation);
  return resized;
}

std::array<int64_t, 2> center_crop_offset(int64_t height, int64_t width, int64_t crop_h,
                                          int64_t crop_w) {
  // std::nearbyint rounds half to even under the default rounding mode, like Python's round().
  return {static_cast<int64_t>(std::nearbyint((height - crop_h) / 2.0)),
          static_cast<int64_t>(std::nearbyint((width - crop_w) / 2.0))};
}

cv::Mat center_crop(const cv::Mat& image, int64_t crop_h, int64_t crop_w) {
  if (crop_h > image.rows || crop_w > image.cols) {
    throw std::invalid_argument("crop " + std::to_string(crop_h) + "x" + std::to_string(crop_w) +
                                " is larger than the image " + std::to_string(image.rows) + "x" +
                                std::to_string(image.cols));
  }
  const auto [top, left] = center_crop_offset(image.rows, image.cols, crop_h, crop_w);
  return image(cv::Rect(static_cast<int>(left), static_cast<int>(top), static_cast<int>(crop_w),
                        static_cast<int>(crop_h)))
      .clone();
}

at::Tensor normalize_to_chw(const cv::Mat& image, const std::array<float, 3>& mean,
                            const std::array<float, 3>& std) {
  TORCH_CHECK(image.type() == CV_32FC3 && image.isContinuous(),
              "normalize_to_chw: expected a continuous CV_32FC3 image, but got type ",
              image.type());
  const auto hwc = at::from_blob(image.data, {image.rows, image.cols, 3}, at::kFloat);
  const auto mean_t = at::tensor(std::vector<float>(mean.begin(), mean.end()));
  const auto std_t = at::tensor(std::vector<float>(std.begin(), std.end()));
  return ((hwc - mean_t) / std_t).permute({2, 0, 1}).contiguous();
}

at::Tensor preprocess_image(const std::string& path, const ExportMetadata& meta) {
  const cv::Mat rgb = read_image_rgb(path);
  const cv::Mat resized = resize_shorter_side(rgb, meta.resize_size);
  const cv::Mat cropped = center_crop(resized, meta.input_size[0], meta.input_size[1]);
  return normalize_to_chw(cropped, meta.mean, meta.std);
}

at::Tensor preprocess_batch(const std::vector<std::string>& paths, const ExportMetadata& meta) {
  std::vector<at::Tensor> images;
  images.reserve(paths.size());
  for (const auto& path : paths) {
    images.push_back(preprocess_image(path, meta));
  }
  return at::stack(images);
}

}  // namespace deeprebirth::runner
