/* The vmc command line, end to end: help, bad options and files give a clear
 * message and a non-zero exit, never a crash or a half-written output. */
#include "cli_run.h"
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/core.h"
#include "vmc.h"

static char g_out[1 << 16];

TEST(cli_help) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  CHECK_EQ_INT(run(g_out, sizeof g_out, "--help"), 0);
  CHECK(strstr(g_out, "train") && strstr(g_out, "bench"));
  const char *cmds[] = {"train", "eval", "info", "bench"};
  for (int i = 0; i < 4; i++) {
    CHECK_EQ_INT(run(g_out, sizeof g_out, "%s --help", cmds[i]), 0);
    CHECK(strstr(g_out, "Usage: vmc") != NULL);
    CHECK(strstr(g_out, "--threads") != NULL);
  }
  CHECK_EQ_INT(run(g_out, sizeof g_out, "frobnicate"), 2);
  CHECK(strstr(g_out, "unknown command") != NULL);
}

TEST(cli_bad_options_fail_cleanly) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  char path[512];
  snprintf(path, sizeof path, "%s/never.vmc", vmc_test_tmpdir());
  static const char *bad[] = {
      "train --model resnet8",                      /* no -o */
      "train -o %s",                                /* no model */
      "train --model resnet8 --epochs 0 -o %s",     /* absurd */
      "train --model resnet8 --epochs -3 -o %s",
      "train --model resnet8 --batch 0 -o %s",
      "train --model resnet8 --lr abc -o %s",
      "train --model resnet8 --lr 1e9 -o %s",
      "train --model resnet8 --optimizer rmsprop -o %s",
      "train --model resnet8 --threads 0 -o %s",
      "train --model resnet8 --seed -1 -o %s",
      "train --model nosuchnet --data fashion-mnist --limit-train 10 -o %s",
      "train --model resnet8 --data /nonexistent/folder -o %s",
      "train --model resnet8 --bogus -o %s",
      "bench resnet8 --batch 0",
      "bench resnet8 --repeats x",
      "bench resnet8 --profile --vs lenet5",
      "eval",
      "info",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char args[1024];
    snprintf(args, sizeof args, bad[i], path);
    int rc = run(g_out, sizeof g_out, "%s", args);
    if (!(rc == 1 || rc == 2)) vmc_test_fail(__FILE__, __LINE__, "'%s' exited %d", args, rc);
    if (!strstr(g_out, "vmc")) vmc_test_fail(__FILE__, __LINE__, "'%s' printed no message", args);
    CHECK(!exists(path));
  }
  CHECK_EQ_INT(run(g_out, sizeof g_out, "train --model resnet8 --data /nonexistent/folder -o %s", path), 1);
  CHECK(strstr(g_out, "/nonexistent/folder") != NULL);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "train --model nosuchnet -o %s", path), 2);
  CHECK(strstr(g_out, "nosuchnet") != NULL);
}

TEST(cli_bad_model_files_fail_cleanly) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  const char *dir = vmc_test_tmpdir();
  char empty[512], junk[512], missing[512];
  snprintf(empty, sizeof empty, "%s/empty.vmc", dir);
  snprintf(junk, sizeof junk, "%s/junk.vmc", dir);
  snprintf(missing, sizeof missing, "%s/missing.vmc", dir);
  FILE *f = fopen(empty, "wb");
  REQUIRE(f);
  fclose(f);
  f = fopen(junk, "wb");
  REQUIRE(f);
  for (int i = 0; i < 5000; i++) fputc((i * 7919) & 0xff, f);
  fclose(f);
  const char *files[] = {empty, junk, missing};
  const char *cmds[] = {"eval", "info", "bench"};
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < 3; k++) {
      int rc = run(g_out, sizeof g_out, "%s %s", cmds[k], files[i]);
      if (rc != 1) vmc_test_fail(__FILE__, __LINE__, "%s %s exited %d: %s", cmds[k], files[i], rc, g_out);
    }
}

/* The whole CLI on a slice of real Fashion-MNIST: train, eval, info, bench,
 * resume, and a failing run that must leave the old output untouched. */
TEST(cli_train_eval_info_bench_end_to_end) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  vmc_dataset *d = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &d) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(d);
  const char *dir = vmc_test_tmpdir();
  char model[512], ckpt[512];
  snprintf(model, sizeof model, "%s/l5.vmc", dir);
  snprintf(ckpt, sizeof ckpt, "%s/l5.ckpt", dir);
  int rc = run(g_out, sizeof g_out,
               "train --model lenet5 --data fashion-mnist --epochs 2 --limit-train 2000 "
               "--limit-test 500 --lr 0.05 --batch 32 --checkpoint %s -o %s --json --quiet", ckpt, model);
  REQUIRE(rc == 0);
  CHECK(strstr(g_out, "\"test_accuracy\"") != NULL);
  CHECK(exists(model) && exists(ckpt));
  rc = run(g_out, sizeof g_out, "eval %s --limit 500 --json", model);
  CHECK_EQ_INT(rc, 0);
  const char *a = strstr(g_out, "\"accuracy\":");
  REQUIRE(a);
  CHECK(atof(a + 11) > 0.5);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "info %s --json", model), 0);
  CHECK(strstr(g_out, "\"macs\"") && strstr(g_out, "conv1") && strstr(g_out, "history"));
  CHECK_EQ_INT(run(g_out, sizeof g_out, "info %s", model), 0);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --batch 4 --repeats 3 --warmup 1 --json", model), 0);
  CHECK(strstr(g_out, "\"images_per_sec\"") != NULL);
  /* Per-layer timing: every node that runs, with its multiply-adds. */
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --batch 4 --repeats 3 --warmup 1 --profile", model), 0);
  CHECK(strstr(g_out, "per layer, batch 4") && strstr(g_out, "conv2 ") && strstr(g_out, "fc1 ") &&
        strstr(g_out, "all "));
  CHECK_EQ_INT(run(g_out, sizeof g_out, "bench %s --batch 2 --repeats 2 --warmup 0 --profile --json", model), 0);
  CHECK(strstr(g_out, "\"profile\"") && strstr(g_out, "\"layers\"") &&
        strstr(g_out, "\"us_per_image\"") && strstr(g_out, "\"gflops\""));
  /* Resume the 2-epoch checkpoint to 3 epochs. */
  char model3[512];
  snprintf(model3, sizeof model3, "%s/l5-3.vmc", dir);
  rc = run(g_out, sizeof g_out,
           "train --resume %s --epochs 3 --limit-train 2000 --limit-test 500 --lr 0.05 --batch 32 -o %s --quiet",
           ckpt, model3);
  CHECK_EQ_INT(rc, 0);
  CHECK(exists(model3));
  /* A failing run over an existing output leaves it byte-identical. */
  struct stat before, after;
  REQUIRE(stat(model, &before) == 0);
  rc = run(g_out, sizeof g_out, "train --model lenet5 --data /nonexistent -o %s", model);
  CHECK_EQ_INT(rc, 1);
  REQUIRE(stat(model, &after) == 0);
  CHECK(before.st_size == after.st_size && before.st_mtime == after.st_mtime);
  /* A truncated copy of a real model is rejected. */
  char cut[512], cmd[1200];
  snprintf(cut, sizeof cut, "%s/cut.vmc", dir);
  snprintf(cmd, sizeof cmd, "head -c %lld %s > %s", (long long)before.st_size / 2, model, cut);
  REQUIRE(system(cmd) == 0);
  CHECK_EQ_INT(run(g_out, sizeof g_out, "eval %s", cut), 1);
  CHECK(strstr(g_out, "cut.vmc") != NULL);
}

/* Reads the logit columns of `vmc eval --logits` output; returns the count. */
static size_t read_logits(const char *path, float *z, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[4096];
  size_t n = 0;
  if (!fgets(line, sizeof line, f)) n = 0; /* header */
  while (fgets(line, sizeof line, f)) {
    char *p = line;
    for (int col = 0; *p && *p != '\n'; col++) {
      char *end;
      float v = strtof(p, &end);
      if (col >= 3 && n < cap) z[n++] = v;
      p = *end == ',' ? end + 1 : end;
    }
  }
  fclose(f);
  return n;
}

/* The "kernel" of the layer named node in bench's --json profile (into
 * buf), or "" when the layer or its kernel is missing. */
static const char *profile_kernel(const char *json, const char *node, char *buf, size_t n) {
  char key[96];
  snprintf(key, sizeof key, "\"%s\"", node);
  buf[0] = 0;
  const char *at = strstr(json, key), *next = at ? strstr(at + 1, "\"node\"") : NULL;
  const char *k = at ? strstr(at, "\"kernel\":") : NULL;
  if (!k || (next && k > next)) return buf;
  k = strchr(k + 9, '"');
  const char *end = k ? strchr(k + 1, '"') : NULL;
  if (end && (size_t)(end - k - 1) < n) {
    memcpy(buf, k + 1, (size_t)(end - k - 1));
    buf[end - k - 1] = 0;
  }
  return buf;
}

/* bench --profile names the way each layer ran: the plan's choice for its
 * shape (Winograd's tiling by output width, the phase GEMM for strides) and
 * VMC_WINOGRAD=0's. */
TEST(cli_profile_names_each_layers_kernel) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  const char *cmd = "bench resnet8 --batch 2 --repeats 1 --warmup 0 --profile --json";
  REQUIRE(run(g_out, sizeof g_out, "%s", cmd) == 0);
  char k[32];
  CHECK_EQ_STR(profile_kernel(g_out, "conv1", k, sizeof k), "gemm-wide");
  CHECK_EQ_STR(profile_kernel(g_out, "layer1.0.conv1", k, sizeof k), "winograd-4x4");
  CHECK_EQ_STR(profile_kernel(g_out, "layer2.0.conv1", k, sizeof k), "gemm-phase");
  CHECK_EQ_STR(profile_kernel(g_out, "layer2.0.downsample.0", k, sizeof k), "gemm-phase");
  CHECK_EQ_STR(profile_kernel(g_out, "layer3.0.conv2", k, sizeof k), "winograd-2x2");
  profile_kernel(g_out, "fc", k, sizeof k);
  CHECK(!strcmp(k, "gemm") || !strcmp(k, "dot"));
  CHECK_EQ_STR(profile_kernel(g_out, "avgpool", k, sizeof k), ""); /* one way: no name */
  setenv("VMC_WINOGRAD", "0", 1);
  const int rc = run(g_out, sizeof g_out, "%s", cmd);
  unsetenv("VMC_WINOGRAD");
  REQUIRE(rc == 0);
  CHECK_EQ_STR(profile_kernel(g_out, "layer1.0.conv1", k, sizeof k), "gemm-wide");
  REQUIRE(run(g_out, sizeof g_out, "bench lenet5 --batch 2 --repeats 1 --warmup 0 --profile") == 0);
  CHECK(strstr(g_out, " kernel ") != NULL);
}

/* VMC_ISA: a name no path has is refused (exit 2, the names listed); one
 * this CPU cannot run falls back to the best with a warning; one it can run
 * is used without a word. */
TEST(cli_isa_env_checked) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  setenv("VMC_ISA", "avx-512", 1); /* run() passes the environment on */
  int rc = run(g_out, sizeof g_out, "info lenet5");
  CHECK_EQ_INT(rc, 2);
  CHECK(strstr(g_out, "VMC_ISA=avx-512: unknown kernel path; use ref, avx2 or avx512") != NULL);
  CHECK(strstr(g_out, "lenet5: input") == NULL); /* nothing ran */
  setenv("VMC_ISA", "ref", 1);
  rc = run(g_out, sizeof g_out, "--version");
  CHECK_EQ_INT(rc, 0);
  CHECK(strstr(g_out, "kernels: ref)") != NULL && strstr(g_out, "VMC_ISA") == NULL);
  setenv("VMC_ISA", "avx512", 1);
  rc = run(g_out, sizeof g_out, "--version");
  CHECK_EQ_INT(rc, 0);
  if (strcmp(vmc_isa_name(), "avx512")) { /* the fallback, said */
    char want[160];
    snprintf(want, sizeof want, "VMC_ISA=avx512: this CPU (%s) cannot run it; running %s kernels",
             vmc_cpu_features_str(), vmc_isa_name());
    CHECK(strstr(g_out, want) != NULL);
  } else {
    CHECK(strstr(g_out, "VMC_ISA") == NULL);
  }
  unsetenv("VMC_ISA");
  REQUIRE(run(g_out, sizeof g_out, "--help") == 0);
  CHECK(strstr(g_out, "VMC_ISA=ref|avx2|avx512") != NULL);
}

/* One binary, every ISA path it can run on this CPU (VMC_ISA), the same
 * outputs for every zoo model (fp32: within 1e-4 of the logits' scale). */
TEST(cli_zoo_same_outputs_on_every_isa) {
  if (!have_binary()) SKIP("vmc binary not built (set VMC_BIN)");
  vmc_dataset *d = NULL;
  if (vmc_dataset_open("fashion-mnist", VMC_SPLIT_TEST, &d) != VMC_OK)
    SKIP("fashion-mnist not installed (apt-get install dataset-fashion-mnist)");
  vmc_dataset_free(d);
  const char *isas[3] = {"ref", NULL, NULL};
  if (vmc_cpu_runs(VMC_ISA_AVX2)) isas[1] = "avx2";
  if (!strcmp(vmc_isa_name(), "avx512")) isas[2] = "avx512";
  const char *models[] = {"lenet5", "resnet8", "resnet20", "mobilenetv2-tiny"};
  enum { IMAGES = 12, CAP = IMAGES * 10 };
  const char *dir = vmc_test_tmpdir();
  for (int m = 0; m < 4; m++) {
    float ref[CAP], z[CAP];
    size_t nref = 0;
    for (int i = 0; i < 3; i++) {
      if (!isas[i]) continue;
      char path[512];
      snprintf(path, sizeof path, "%s/%s-%s.csv", dir, models[m], isas[i]);
      setenv("VMC_ISA", isas[i], 1); /* run() passes the environment on */
      int rc = run(g_out, sizeof g_out,
               "eval %s --data fashion-mnist --limit %d --batch 5 --seed 3 --logits %s --quiet",
               models[m], IMAGES, path);
      unsetenv("VMC_ISA");
      if (rc != 0) vmc_test_fail(__FILE__, __LINE__, "VMC_ISA=%s: %s", isas[i], g_out);
      REQUIRE(rc == 0);
      size_t n = read_logits(path, i == 0 ? ref : z, CAP);
      REQUIRE(n == CAP);
      if (i == 0) {
        nref = n;
        continue;
      }
      float scale = 1e-3f, diff = 0;
      for (size_t j = 0; j < nref; j++) scale = fmaxf(scale, fabsf(ref[j]));
      for (size_t j = 0; j < nref; j++) diff = fmaxf(diff, fabsf(ref[j] - z[j]));
      if (diff > 1e-4f * scale)
        vmc_test_fail(__FILE__, __LINE__, "%s: %s differs from ref by %g (scale %g)", models[m],
                      isas[i], diff, scale);
    }
  }
}
