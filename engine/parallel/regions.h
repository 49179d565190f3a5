// Megatron-LM's communication regions, as named functions so that model code reads as
// the math of the layer. There is no autograd: each function says which pass calls it.
//
//   column-parallel linear:  X (replicated) -> copy_to_tp_region -> X W_r^T (sharded)
//     forward: identity; backward: copy_to_tp_region_backward sums the partial dX.
//   row-parallel linear:     Y_r (sharded) -> Y_r W_r^T (partial) -> reduce_from_tp_region
//     forward: all-reduce; backward: identity.
#pragma once
#include "engine/core/tensor.h"
#include "engine/parallel/grid.h"

namespace lethe {

// Forward of a row-parallel layer (and of the vocabulary-parallel embedding): the tp
// ranks' partial sums become the full activation on every rank.
void reduce_from_tp_region(const ProcessGrid& g, Tensor& x);
// Backward of a column-parallel layer's input: each rank's dX covers its output columns
// only; their sum is the gradient of the replicated input.
void copy_to_tp_region_backward(const ProcessGrid& g, Tensor& dx);
// Gradient of a weight that every tp rank holds whole but to which each contributes only
// its heads' share (key/value projections replicated when n_kv_heads % tp != 0).
void reduce_replicated_grad(const ProcessGrid& g, Tensor& dw);
// [N, n] per rank -> [N, n * tp]: the columns of all tp ranks, in rank order.
void gather_from_tp_region(const ProcessGrid& g, const Tensor& local, Tensor& full);
// [N, n * tp] -> this rank's [N, n] columns.
void scatter_to_tp_region(const ProcessGrid& g, const Tensor& full, Tensor& local);

}  // namespace lethe
