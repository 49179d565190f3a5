#include "kernels/device_ops.h"

#include "engine/core/error.h"

namespace lethe {

namespace {
// Never destroyed, like the memory backend's registry: a static tensor's op may run late.
std::unique_ptr<DeviceOps>& slot() {
  static auto* s = new std::unique_ptr<DeviceOps>;
  return *s;
}
}  // namespace

void register_device_ops(std::unique_ptr<DeviceOps> ops) { slot() = std::move(ops); }
bool device_ops_registered() { return slot() != nullptr; }
std::unique_ptr<DeviceOps> swap_device_ops_for_testing(std::unique_ptr<DeviceOps> ops) {
  std::swap(slot(), ops);
  return ops;
}

namespace {
bool overlap(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.raw());
  const char* pb = static_cast<const char*>(b.raw());
  return a.nbytes() > 0 && b.nbytes() > 0 && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}
}  // namespace

void check_disjoint(const char* op, std::initializer_list<OpArg> outputs, std::initializer_list<OpArg> inputs) {
  for (const auto& [oname, o] : outputs) {
    if (!o || !o->defined()) continue;
    auto against = [&](const OpArg& other) {
      const auto& [iname, i] = other;
      if (i && i != o && i->defined())
        LETHE_CHECK(!overlap(*o, *i), op, ": ", oname, " shares memory with ", iname,
                    "; the device kernel needs separate buffers");
    };
    for (const OpArg& i : inputs) against(i);
    for (const OpArg& other : outputs) against(other);
  }
}

DeviceOps* route(const char* op, std::initializer_list<OpArg> args) {
  const OpArg* first = nullptr;
  for (const OpArg& a : args) {
    if (!a.second || !a.second->defined()) continue;
    if (!first) {
      first = &a;
      continue;
    }
    LETHE_CHECK(a.second->device() == first->second->device(), op, ": ", first->first, " is on ",
                device_name(first->second->device()), " but ", a.first, " is on ", device_name(a.second->device()),
                "; an op's tensors must share a device (copy one with Tensor::to)");
  }
  if (!first || first->second->device() == Device::cpu) return nullptr;
  LETHE_CHECK(slot(), op, ": ", first->first, " is on ", device_name(first->second->device()),
              " and this lethe has no kernels for that device (it was built without CUDA)");
  return slot().get();
}

}  // namespace lethe
