/* vmc: train, evaluate, inspect and benchmark vision models. */
#include "cli.h"

#include <string.h>

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *what;
} g_cmds[] = {
    {"train", cmd_train, "train a zoo model on a data set, write a .vmc model"},
    {"eval", cmd_eval, "accuracy and loss of a model on a data set"},
    {"info", cmd_info, "layers, shapes, parameters, MACs and bytes of a model"},
    {"bench", cmd_bench, "inference latency and throughput at batch 1 and N"},
    {"quantize", cmd_quantize, "post-training quantization (w8a8, w4a8), simulated in fp32"},
};

static void usage(FILE *f) {
  fprintf(f, "vmc %s - compress and accelerate vision CNNs\n\n"
             "Usage: vmc COMMAND [options]   (vmc COMMAND --help for each)\n\nCommands:\n",
          VMC_VERSION_STRING);
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
    fprintf(f, "  %-8s %s\n", g_cmds[i].name, g_cmds[i].what);
  fprintf(f, "\nExamples:\n"
             "  vmc train --model resnet8 --data fashion-mnist --epochs 8 -o r8.vmc\n"
             "  vmc eval r8.vmc --data fashion-mnist --json\n"
             "  vmc bench r8.vmc --batch 64 --json\n"
             "  vmc info r8.vmc --json\n"
             "  vmc quantize r8.vmc --calib fashion-mnist --observer kl -o r8q.vmc --eval\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
    printf("vmc %s (cpu: %s; kernels: %s)\n", VMC_VERSION_STRING, vmc_cpu_features_str(),
           vmc_isa_name());
    return 0;
  }
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
    if (!strcmp(argv[1], g_cmds[i].name)) return g_cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "vmc: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
