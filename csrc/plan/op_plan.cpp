// OpPlan: recorded dispatcher calls run again in C++ (see op_plan.h).
#include "plan/op_plan.h"

#include <ATen/ScalarOps.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "ops/winograd_conv/cpu/winograd_conv_kernel.h"

namespace deeprebirth::plan {

namespace py = pybind11;

namespace {

c10::IValue resolve(const Source& source, const std::vector<c10::IValue>& slots) {
  switch (source.kind) {
    case Source::Kind::kConstant:
      return source.constant;
    case Source::Kind::kSlot: {
      const c10::IValue& value = slots[source.slot];
      return source.element < 0 ? value : value.toListRef()[source.element];
    }
    case Source::Kind::kList: {
      c10::impl::GenericList list(source.element_type);
      list.reserve(source.items.size());
      for (const Source& item : source.items) list.push_back(resolve(item, slots));
      return list;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "OpPlan: unknown source kind");
}

void collect_slots(const Source& source, std::vector<int64_t>& slots) {
  if (source.kind == Source::Kind::kSlot) slots.push_back(source.slot);
  for (const Source& item : source.items) collect_slots(item, slots);
}

}  // namespace

OpPlan::OpPlan(int64_t inputs) : inputs_(inputs), slots_(inputs) {
  if (inputs < 0)
    throw py::value_error("OpPlan: expected inputs >= 0, but got " + std::to_string(inputs));
}

Source OpPlan::parse(const py::handle& spec, const c10::TypePtr& type) const {
  const auto parts = py::reinterpret_borrow<py::tuple>(spec);
  const std::string kind = parts[0].cast<std::string>();
  Source source;
  if (kind == "c") {
    source.kind = Source::Kind::kConstant;
    const py::handle value = parts[1];
    const bool number = py::isinstance<py::int_>(value) || py::isinstance<py::float_>(value);
    if (number && !py::isinstance<py::bool_>(value) && type->kind() == c10::TensorType::Kind) {
      // The dispatcher hands Python modes a scalar operand (x * 0.5) as the number itself; the
      // operator takes it as a wrapped-number tensor, as Python's argument parser makes it.
      at::Tensor wrapped =
          c10::scalar_to_tensor(torch::jit::toIValue(value, c10::NumberType::get()).toScalar());
      wrapped.unsafeGetTensorImpl()->set_wrapped_number(true);
      source.constant = wrapped;
      return source;
    }
    try {
      source.constant = torch::jit::toIValue(parts[1], type);
    } catch (const std::exception& error) {
      throw py::value_error(std::string("OpPlan: a constant of type ") + type->str() +
                            " could not be converted: " + error.what());
    }
  } else if (kind == "s") {
    source.kind = Source::Kind::kSlot;
    source.slot = parts[1].cast<int64_t>();
    source.element = parts[2].cast<int64_t>();
    if (source.slot < 0 || source.slot >= slots_) {
      throw py::value_error("OpPlan: slot " + std::to_string(source.slot) +
                            " is not filled before this call (" + std::to_string(slots_) +
                            " slots so far)");
    }
  } else if (kind == "l") {
    c10::TypePtr list_type = type;
    if (const auto optional = list_type->cast<c10::OptionalType>()) {
      list_type = optional->getElementType();
    }
    const auto list = list_type->cast<c10::ListType>();
    if (!list) throw py::value_error("OpPlan: a list given for an argument of type " + type->str());
    source.kind = Source::Kind::kList;
    source.element_type = list->getElementType();
    for (const py::handle item : py::reinterpret_borrow<py::list>(parts[1])) {
      source.items.push_back(parse(item, source.element_type));
    }
  } else {
    throw py::value_error("OpPlan: expected a spec kind 'c', 's' or 'l', but got '" + kind + "'");
  }
  return source;
}

int64_t OpPlan::add_step(const std::string& name, const std::string& overload,
                         const py::list& specs) {
  const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({name, overload});
  if (!op.has_value()) {
    throw py::value_error("OpPlan: no operator " + name + (overload.empty() ? "" : "." + overload));
  }
  const c10::FunctionSchema& schema = op->schema();
  if (schema.is_vararg() || schema.is_varret() || specs.size() != schema.arguments().size()) {
    throw py::value_error("OpPlan: " + schema.name() + " takes " +
                          std::to_string(schema.arguments().size()) + " arguments, but got " +
                          std::to_string(specs.size()) + " specs");
  }
  Step step{*op, {}, slots_, schema.returns().size(), {}};
  step.needs_finite_input = name == "deeprebirth::winograd_conv2d";
  for (size_t i = 0; i < specs.size(); ++i) {
    step.arguments.push_back(parse(specs[i], schema.arguments()[i].type()));
  }
  steps_.push_back(std::move(step));
  slots_ += static_cast<int64_t>(schema.returns().size());
  return steps_.back().first_slot;
}

void OpPlan::set_outputs(const py::list& outputs) {
  outputs_.clear();
  for (const py::handle output : outputs) {
    outputs_.push_back(parse(py::make_tuple("s", output[py::int_(0)], output[py::int_(1)]),
                             c10::TensorType::get()));
  }
  // Each slot is freed after its last reader, unless the forward returns it.
  std::vector<int64_t> last_reader(slots_, -1);
  for (size_t i = 0; i < steps_.size(); ++i) {
    std::vector<int64_t> read;
    for (const Source& source : steps_[i].arguments) collect_slots(source, read);
    for (const int64_t slot : read) last_reader[slot] = static_cast<int64_t>(i);
    steps_[i].release.clear();
  }
  for (const Source& output : outputs_) last_reader[output.slot] = -1;
  for (int64_t slot = 0; slot < slots_; ++slot) {
    if (last_reader[slot] >= 0) steps_[last_reader[slot]].release.push_back(slot);
  }
}

namespace {

const void* data_of(const at::Tensor& t) {
  return t.has_storage() ? t.storage().data() : nullptr;  // oneDNN's opaque tensors have none
}

}  // namespace

void OpPlan::add_guard(const at::Tensor& t) {
  if (t.is_inference()) {
    throw py::value_error(
        "OpPlan: an inference tensor (made under torch.inference_mode) has no "
        "version counter to guard");
  }
  guards_.push_back({t, t._version(), data_of(t)});
}

bool OpPlan::guards_hold() const {
  return std::all_of(guards_.begin(), guards_.end(), [](const Guard& guard) {
    return guard.tensor._version() == guard.version && data_of(guard.tensor) == guard.data;
  });
}

std::optional<std::vector<at::Tensor>> OpPlan::run(const std::vector<at::Tensor>& inputs) const {
  TORCH_CHECK(static_cast<int64_t>(inputs.size()) == inputs_, "OpPlan: expected ", inputs_,
              " input tensors, but got ", inputs.size());
  if (!guards_hold()) return std::nullopt;
  std::vector<c10::IValue> slots(slots_);
  std::copy(inputs.begin(), inputs.end(), slots.begin());
  torch::jit::Stack stack;
  for (const Step& step : steps_) {
    stack.clear();
    for (const Source& source : step.arguments) stack.push_back(resolve(source, slots));
    if (step.needs_finite_input && stack[0].isTensor() && stack[0].toTensor().is_cpu() &&
        !ops::winograd_input_finite(stack[0].toTensor())) {
      return std::nullopt;
    }
    step.op.callBoxed(stack);
    TORCH_INTERNAL_ASSERT(stack.size() == step.returns, "OpPlan: ", step.op.schema().name(),
                          " returned ", stack.size(), " values, expected ", step.returns);
    for (size_t j = 0; j < stack.size(); ++j) slots[step.first_slot + j] = std::move(stack[j]);
    for (const int64_t slot : step.release) slots[slot] = c10::IValue();
  }
  std::vector<at::Tensor> outputs;
  outputs.reserve(outputs_.size());
  for (const Source& output : outputs_) outputs.push_back(resolve(output, slots).toTensor());
  return outputs;
}

void bind_op_plan(py::module_& m) {
  py::class_<OpPlan>(m, "OpPlan",
                     "Recorded dispatcher calls run again in C++ (deeprebirth.nn.op_plan).")
      .def(py::init<int64_t>(), py::arg("inputs"))
      .def("add_step", &OpPlan::add_step, py::arg("name"), py::arg("overload"), py::arg("specs"))
      .def("set_outputs", &OpPlan::set_outputs, py::arg("outputs"))
      .def("add_guard", &OpPlan::add_guard, py::arg("tensor"))
      .def("guards_hold", &OpPlan::guards_hold)
      .def("run", &OpPlan::run, py::arg("inputs"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("step_count", &OpPlan::step_count);
}

}  // namespace deeprebirth::plan
