/* vmc: train, evaluate, inspect and benchmark vision models. */
#include "cli.h"

#include <stdlib.h>
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
             "  vmc quantize r8.vmc --calib fashion-mnist --observer kl -o r8q.vmc --eval\n"
             "\nEnvironment:\n"
             "  VMC_ISA=ref|avx2|avx512  force a kernel path, at most the CPU's best (the\n"
             "                           default; `vmc --version` names it)\n"
             "  VMC_WINOGRAD=0           direct 3x3 convolutions instead of Winograd\n"
             "  VMC_PROFILE=1            training: each op's forward and backward seconds\n"
             "                           on stderr\n"
             "  VMC_DATA=DIR             where named data sets are looked for first\n");
}

/* VMC_ISA: an unknown name is refused (a comparison run on a mistyped one
 * would measure the default path); a path this CPU cannot run falls back to
 * the best it can (core/cpu.c), with a warning. */
static int check_isa_env(void) {
  const char *want = getenv("VMC_ISA");
  if (!want || !*want) return 0;
  if (!vmc_isa_known(want)) {
    fprintf(stderr, "vmc: VMC_ISA=%s: unknown kernel path; use ref, avx2 or avx512, or unset "
                    "it for the best this CPU runs (%s)\n",
            want, vmc_isa_name());
    return 2;
  }
  if (strcmp(want, vmc_isa_name()))
    fprintf(stderr, "vmc: VMC_ISA=%s: this CPU (%s) cannot run it; running %s kernels\n", want,
            vmc_cpu_features_str(), vmc_isa_name());
  return 0;
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
  if (check_isa_env()) return 2;
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
