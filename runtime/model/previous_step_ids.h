// Overlapped steps (SchedulerOptions::overlap_steps): what a batch's kTokenFromPreviousStep tokens
// stand for, as the executor that launched the previous step knows it. The forward takes them from
// the device where its path can (the CUDA runner's staging), from the host elsewhere. Include only
// from LibTorch TUs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <unordered_map>

namespace glmserve {

struct PreviousStepIds {
  // The previous step's sampled ids on the device ([its sampled rows] int32, none negative) and
  // each of its sequences' index there. Undefined where that step's ids are on the host already.
  at::Tensor device_ids;
  const std::unordered_map<int64_t, int64_t>* row_of_sequence = nullptr;
  // The id on the host, waiting for the previous step where it must; < 0 where it sampled none
  // for the sequence.
  std::function<int32_t(int64_t sequence_id)> host_id;
};

}  // namespace glmserve
