// Public C++ API of the deeprebirth operator library (libdeeprebirth_ops.so).
// Every function calls its operator through the PyTorch dispatcher.
#pragma once

#include "ops/branch_conv/branch_conv.h"
#include "ops/build_info.h"
#include "ops/conv_pool/conv_pool.h"
#include "ops/direct_conv/cpu/onednn_packed_conv.h"
#include "ops/direct_conv/direct_conv.h"
#include "ops/linear/linear.h"
#include "ops/max_pool/max_pool.h"
#include "ops/winograd_conv/winograd_conv.h"
