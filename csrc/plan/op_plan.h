// OpPlan: a recorded sequence of dispatcher calls, run again in C++ on new inputs.
//
// deeprebirth.nn.op_plan records an eager inference forward at the dispatcher (one
// TorchDispatchMode pass) and hands the calls here, with every argument classified: a constant
// (weights, sizes, flags), a tensor an earlier call or the forward's input produced (a slot), or
// a list mixing both. run() then makes the same calls through the dispatcher without Python
// between them. Why: from Python each operator call costs about 20 us once the convolutions have
// flushed the interpreter's data from the caches, several percent of a small model's forward
// (docs/kernels.md, "Eager forward as one C++ call").
//
// The plan is valid only for inputs of the recorded sizes, strides, dtypes and devices, and while
// the Python state the forward read stays as recorded; the Python side checks both before run().
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace deeprebirth::plan {

// Where one argument of a call comes from when the plan runs.
struct Source {
  enum class Kind { kConstant, kSlot, kList };
  Kind kind = Kind::kConstant;
  c10::IValue constant;       // kConstant: converted to the schema's type once
  int64_t slot = -1;          // kSlot: the value's slot ...
  int64_t element = -1;       // ... and, when >= 0, its element (a call returned a list)
  std::vector<Source> items;  // kList: one source per element
  c10::TypePtr element_type;  // kList: the list's element type (Tensor, Tensor?, ...)
};

// One dispatcher call: its operator, one source per schema argument, the first slot its returns
// fill, and the slots whose last reader it is (freed after it, as the eager forward frees them).
struct Step {
  c10::OperatorHandle op;
  std::vector<Source> arguments;
  int64_t first_slot = 0;
  size_t returns = 0;
  std::vector<int64_t> release;
  // winograd_conv2d, recorded where small_conv2d chose it: small_conv2d runs oneDNN instead on a
  // non-finite input (Winograd's transforms spread an infinity or NaN over 2x2 blocks)
  bool needs_finite_input = false;
};

class OpPlan {
 public:
  // A plan whose first `inputs` slots hold run()'s tensors.
  explicit OpPlan(int64_t inputs);

  // Appends a call of `name`.`overload` (e.g. "aten::linear", ""), one spec per schema argument
  // in schema order: ("c", value) a constant, ("s", slot, element) a slot's value, ("l", [spec,
  // ...]) a list. Returns the slot of its first return. Raises ValueError for an unknown
  // operator, a spec count that is not the schema's, or a constant the schema's type rejects.
  int64_t add_step(const std::string& name, const std::string& overload,
                   const pybind11::list& specs);

  // The forward's tensors to return, each (slot, element); frees every slot after its last use.
  void set_outputs(const pybind11::list& outputs);

  // Makes run() refuse once `t` is written through autograd-visible writes (its version counter)
  // or given other memory (.data =): for tensors from which the recording computed constants.
  // Raises ValueError for an inference tensor, which has no version counter.
  void add_guard(const at::Tensor& t);

  // Whether every guarded tensor is as it was when guarded.
  bool guards_hold() const;

  // Runs the calls on `inputs` (the GIL released) and returns the output tensors, or nothing
  // when a guard fails (then no call ran) or a Winograd call meets a non-finite input, where the
  // eager forward would take another kernel (then the calls before it ran, on new tensors only).
  std::optional<std::vector<at::Tensor>> run(const std::vector<at::Tensor>& inputs) const;

  int64_t step_count() const { return static_cast<int64_t>(steps_.size()); }

 private:
  Source parse(const pybind11::handle& spec, const c10::TypePtr& type) const;

  struct Guard {
    at::Tensor tensor;
    uint32_t version;
    const void* data;
  };

  int64_t inputs_;
  int64_t slots_;
  std::vector<Guard> guards_;
  std::vector<Step> steps_;
  std::vector<Source> outputs_;
};

// Registers OpPlan on the pybind11 module `m`.
void bind_op_plan(pybind11::module_& m);

}  // namespace deeprebirth::plan
