/* The op registry: every op table, found by name. */
#include "graph/op.h"

#include <string.h>

extern const vmc_op vmc_op_conv2d, vmc_op_batchnorm, vmc_op_relu, vmc_op_relu6, vmc_op_maxpool,
    vmc_op_avgpool, vmc_op_gap, vmc_op_linear, vmc_op_add, vmc_op_concat, vmc_op_flatten,
    vmc_op_dropout, vmc_op_fakequant;

static const vmc_op *const g_ops[] = {
    &vmc_op_conv2d, &vmc_op_batchnorm, &vmc_op_relu,   &vmc_op_relu6,
    &vmc_op_maxpool, &vmc_op_avgpool,  &vmc_op_gap,    &vmc_op_linear,
    &vmc_op_add,    &vmc_op_concat,    &vmc_op_flatten, &vmc_op_dropout,
    &vmc_op_fakequant,
};
#define N_OPS ((int)(sizeof g_ops / sizeof g_ops[0]))

const vmc_op *vmc_op_find(const char *name) {
  for (int i = 0; i < N_OPS; i++)
    if (!strcmp(g_ops[i]->name, name)) return g_ops[i];
  return NULL;
}

const vmc_op *const *vmc_op_all(int *count) {
  *count = N_OPS;
  return g_ops;
}
