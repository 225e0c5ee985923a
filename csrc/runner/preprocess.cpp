// OpenCV decoding + resize / centre crop / normalize, mirroring deeprebirth/export/preprocess.py.
#include "preprocess.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>
#include <stdexcept>

#include "errors.h"

namespace deeprebirth::runner {

namespace {

RunnerError image_error(const std::string& path, const std::string& what) {
  return RunnerError(ExitCode::kImage, "image '" + path + "': " + what);
}

// Big-endian unsigned integer of `bytes` bytes at `data`.
int64_t big_endian(const unsigned char* data, int bytes) {
  int64_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    value = (value << 8) | data[i];
  }
  return value;
}

// JPEG start-of-frame markers: 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
bool is_jpeg_frame_marker(int marker) {
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

// Header sizes reach 2^32 - 1 per side: the division keeps the product from overflowing.
void check_pixels(const std::string& path, int64_t height, int64_t width) {
  if (width > 0 && height > kMaxImagePixels / width) {
    throw image_error(path, "the image is " + std::to_string(height) + "x" + std::to_string(width) +
                                " pixels, more than the limit of " +
                                std::to_string(kMaxImagePixels) + " pixels (" +
                                std::to_string(kMaxImageSide) + "x" +
                                std::to_string(kMaxImageSide) + ")");
  }
}

}  // namespace

std::optional<std::array<int64_t, 2>> image_header_size(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  unsigned char head[24] = {};
  file.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = file.gcount();
  constexpr unsigned char kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (got == 24 && std::equal(kPng, kPng + 8, head) && std::equal(head + 12, head + 16, "IHDR")) {
    return std::array<int64_t, 2>{big_endian(head + 20, 4), big_endian(head + 16, 4)};
  }
  if (got < 2 || head[0] != 0xFF || head[1] != 0xD8) {
    return std::nullopt;
  }
  file.clear();
  file.seekg(2);
  while (true) {  // JPEG segments up to the first frame header
    if (file.get() != 0xFF) {
      return std::nullopt;
    }
    int marker = file.get();
    while (marker == 0xFF) {  // fill bytes
      marker = file.get();
    }
    if (marker == std::char_traits<char>::eof() || marker == 0xD9 || marker == 0xDA) {
      return std::nullopt;  // end of file or image, start of scan
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {
      continue;  // no length field
    }
    unsigned char length_bytes[2] = {};
    if (!file.read(reinterpret_cast<char*>(length_bytes), 2)) {
      return std::nullopt;
    }
    const auto length = big_endian(length_bytes, 2);
    if (length < 2) {
      return std::nullopt;
    }
    if (is_jpeg_frame_marker(marker)) {
      unsigned char frame[5] = {};  // precision, height, width
      if (!file.read(reinterpret_cast<char*>(frame), 5)) {
        return std::nullopt;
      }
      const auto height = big_endian(frame + 1, 2);
      const auto width = big_endian(frame + 3, 2);
      if (height == 0 || width == 0) {
        return std::nullopt;
      }
      return std::array<int64_t, 2>{height, width};
    }
    file.seekg(length - 2, std::ios::cur);
  }
}

cv::Mat read_image_rgb(const std::string& path) {
  std::error_code ignored;
  if (!std::filesystem::is_regular_file(path, ignored)) {
    throw image_error(path, "file not found");
  }
  if (std::filesystem::file_size(path, ignored) == 0) {
    throw image_error(path, "file is empty");
  }
  if (const auto header = image_header_size(path)) {
    check_pixels(path, (*header)[0], (*header)[1]);
  }
  cv::Mat decoded = cv::imread(path, cv::IMREAD_UNCHANGED);
  if (decoded.empty()) {
    throw image_error(path, "not a readable image (OpenCV cannot decode it)");
  }
  check_pixels(path, decoded.rows, decoded.cols);
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
  if (std::max(new_h, new_w) > kMaxImageSide) {
    std::ostringstream message;
    message << "resizing the " << image.rows << "x" << image.cols << " image to shorter side "
            << size << " gives " << new_h << "x" << new_w << ", more than the limit of "
            << kMaxImageSide << " pixels per side (aspect ratio at most " << std::setprecision(4)
            << static_cast<double>(kMaxImageSide) / static_cast<double>(size)
            << ":1 for resize_size " << size << ")";
    throw std::invalid_argument(message.str());
  }
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

at::Tensor normalize_to_chw(const cv::Mat& image, const std::vector<float>& mean,
                            const std::vector<float>& std) {
  const auto channels = static_cast<size_t>(image.channels());
  TORCH_CHECK(image.depth() == CV_32F && image.isContinuous(),
              "normalize_to_chw: expected a continuous float32 image, but got type ", image.type());
  TORCH_CHECK(mean.size() == channels && std.size() == channels, "normalize_to_chw: expected ",
              channels, " means and stds (one per channel), but got ", mean.size(), " and ",
              std.size());
  const auto hwc =
      at::from_blob(image.data, {image.rows, image.cols, image.channels()}, at::kFloat);
  const auto mean_t = at::tensor(std::vector<float>(mean.begin(), mean.end()));
  const auto std_t = at::tensor(std::vector<float>(std.begin(), std.end()));
  return ((hwc - mean_t) / std_t).permute({2, 0, 1}).contiguous();
}

at::Tensor preprocess_image(const std::string& path, const ExportMetadata& meta) {
  if (meta.color != "RGB" && meta.color != "GRAY") {
    throw RunnerError(ExitCode::kModel, "the model takes " + std::to_string(meta.channels) +
                                            "-channel input (color \"" + meta.color +
                                            "\"); images give RGB (3 channels) or grayscale (1)");
  }
  const cv::Mat rgb = read_image_rgb(path);
  cv::Mat resized;
  try {
    resized = resize_shorter_side(rgb, meta.resize_size);
  } catch (const std::invalid_argument& error) {
    throw image_error(path, error.what());
  }
  cv::Mat cropped = center_crop(resized, meta.input_size[0], meta.input_size[1]);
  if (meta.color == "GRAY") {
    cv::Mat gray;
    cv::cvtColor(cropped, gray, cv::COLOR_RGB2GRAY);
    cropped = gray;
  }
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
