/* vmc train: train a zoo model (or continue a checkpoint) and write a .vmc. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data.h"
#include "io/io.h"
#include "train/train.h"

static const char *const HELP =
    "Usage: vmc train --model NAME -o OUT.vmc [options]\n"
    "       vmc train --resume CKPT.vmc -o OUT.vmc [options]\n\n"
    "Trains a zoo model (lenet5, resnet8, resnet20, mobilenetv2-tiny) with the\n"
    "default recipe: SGD, Nesterov momentum 0.9, weight decay 5e-4, batch 128,\n"
    "one-cycle LR, no augmentation (on Fashion-MNIST the zoo models reach higher\n"
    "test accuracy in 8-15 epochs without it; --augment for longer schedules).\n"
    "Evaluates on the test split after each epoch.  The output is written\n"
    "atomically.\n\n"
    "Options:\n"
    "  --model NAME          zoo architecture\n"
    "  -o, --output FILE     the trained model (.vmc)\n"
    "  --epochs N            epochs (default 8)\n"
    "  --batch N             batch size (default 128)\n"
    "  --lr X                peak learning rate (default 0.1 SGD, 0.001 AdamW)\n"
    "  --optimizer sgd|adamw (default sgd)\n"
    "  --momentum X          SGD momentum (default 0.9)\n"
    "  --no-nesterov         plain momentum\n"
    "  --wd X                weight decay (default 5e-4 SGD, 0.05 AdamW)\n"
    "  --sched onecycle|cosine|step|constant   LR schedule (default onecycle)\n"
    "  --step-size N --gamma X  step schedule: multiply by X every N epochs\n"
    "  --label-smoothing X   (default 0)\n"
    "  --augment             random crop (pad 2) + horizontal flip\n"
    "  --no-augment          none (the default)\n"
    "  --crop-pad N          random-crop padding with --augment (default 2; 0: no crop)\n"
    "  --no-flip             no horizontal flip with --augment\n"
    "  --limit-train N       use only the first N training images\n"
    "  --limit-test N        evaluate on only the first N test images\n"
    "  --checkpoint FILE     write a checkpoint (weights, optimizer, RNG) each epoch\n"
    "  --resume FILE         continue a checkpoint exactly (its --epochs total, batch and\n"
    "                        optimizer; a larger --epochs extends the run)\n"
    "  --no-eval             skip the per-epoch test evaluation\n\n" CLI_COMMON_HELP;

enum {
  O_MODEL = OPT_CMD_BASE, O_EPOCHS, O_BATCH, O_LR, O_OPT, O_MOM, O_NONEST, O_WD, O_SCHED,
  O_STEPSZ, O_GAMMA, O_LS, O_NOAUG, O_CROP, O_NOFLIP, O_LTRAIN, O_LTEST, O_CKPT, O_RESUME,
  O_NOEVAL, O_AUG
};

/* Data set and normalisation go into the model before training, so
 * checkpoints carry them too. */
static vmc_status data_meta(vmc_graph *g, const vmc_dataset *d) {
  char mean[64], std[64], cls[16];
  snprintf(cls, sizeof cls, "%d", d->n_classes);
  if (d->c == 1) {
    snprintf(mean, sizeof mean, "%.9g", d->mean[0]);
    snprintf(std, sizeof std, "%.9g", d->std[0]);
  } else {
    snprintf(mean, sizeof mean, "%.9g,%.9g,%.9g", d->mean[0], d->mean[1], d->mean[2]);
    snprintf(std, sizeof std, "%.9g,%.9g,%.9g", d->std[0], d->std[1], d->std[2]);
  }
  VMC_TRY(vmc_graph_set_meta(g, "dataset", d->name[0] ? d->name : d->source));
  VMC_TRY(vmc_graph_set_meta(g, "classes", cls));
  VMC_TRY(vmc_graph_set_meta(g, "normalize.mean", mean));
  return vmc_graph_set_meta(g, "normalize.std", std);
}

static vmc_status result_meta(vmc_graph *g, const char *arch, const vmc_dataset *d,
                              const vmc_train_config *c, const vmc_train_result *r) {
  char acc[32] = "", line[256];
  if (r->last.test_acc >= 0) {
    snprintf(acc, sizeof acc, "%.4f", r->last.test_acc);
    VMC_TRY(vmc_graph_set_meta(g, "accuracy", acc));
    snprintf(acc, sizeof acc, ", test accuracy %.2f%%", 100 * r->last.test_acc);
  }
  snprintf(line, sizeof line, "train %s on %s: %d epochs, %s lr %g, batch %d, seed %llu%s", arch,
           d->name, c->epochs, c->optimizer == VMC_OPT_SGD ? "sgd" : "adamw", c->lr, c->batch,
           (unsigned long long)c->seed, acc);
  return vmc_graph_add_history(g, line);
}

int cmd_train(int argc, char **argv) {
  static const struct option opts[] = {
      CLI_COMMON_OPTIONS,
      {"model", required_argument, 0, O_MODEL},
      {"output", required_argument, 0, 'o'},
      {"epochs", required_argument, 0, O_EPOCHS},
      {"batch", required_argument, 0, O_BATCH},
      {"lr", required_argument, 0, O_LR},
      {"optimizer", required_argument, 0, O_OPT},
      {"momentum", required_argument, 0, O_MOM},
      {"no-nesterov", no_argument, 0, O_NONEST},
      {"wd", required_argument, 0, O_WD},
      {"weight-decay", required_argument, 0, O_WD},
      {"sched", required_argument, 0, O_SCHED},
      {"step-size", required_argument, 0, O_STEPSZ},
      {"gamma", required_argument, 0, O_GAMMA},
      {"label-smoothing", required_argument, 0, O_LS},
      {"no-augment", no_argument, 0, O_NOAUG},
      {"augment", no_argument, 0, O_AUG},
      {"crop-pad", required_argument, 0, O_CROP},
      {"no-flip", no_argument, 0, O_NOFLIP},
      {"limit-train", required_argument, 0, O_LTRAIN},
      {"limit-test", required_argument, 0, O_LTEST},
      {"checkpoint", required_argument, 0, O_CKPT},
      {"resume", required_argument, 0, O_RESUME},
      {"no-eval", no_argument, 0, O_NOEVAL},
      {0, 0, 0, 0}};
  cli_common cc;
  cli_common_init(&cc);
  vmc_train_config c;
  vmc_train_config_default(&c);
  const char *model = NULL, *out = NULL;
  int lr_set = 0, wd_set = 0, no_eval = 0, epochs_set = 0, batch_set = 0, opt_set = 0, opt;
  long v;
  double f;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    int r = cli_common_opt(&cc, opt, optarg);
    if (r < 0) return 2;
    if (r) continue;
    switch (opt) {
    case 'h': fputs(HELP, stdout); return 0;
    case 'o': out = optarg; break;
    case O_MODEL: model = optarg; break;
    case O_EPOCHS: if (cli_int("--epochs", optarg, 1, 100000, &v)) return 2; c.epochs = (int)v; epochs_set = 1; break;
    case O_BATCH: if (cli_int("--batch", optarg, 1, 65536, &v)) return 2; c.batch = (int)v; batch_set = 1; break;
    case O_LR: if (cli_float("--lr", optarg, 1e-8, 10, &f)) return 2; c.lr = (float)f; lr_set = 1; break;
    case O_MOM: if (cli_float("--momentum", optarg, 0, 0.999, &f)) return 2; c.momentum = (float)f; break;
    case O_NONEST: c.nesterov = 0; break;
    case O_WD: if (cli_float("--wd", optarg, 0, 0.5, &f)) return 2; c.weight_decay = (float)f; wd_set = 1; break;
    case O_OPT:
      opt_set = 1;
      if (!strcmp(optarg, "sgd")) c.optimizer = VMC_OPT_SGD;
      else if (!strcmp(optarg, "adamw")) c.optimizer = VMC_OPT_ADAMW;
      else return cli_usage_error("train", "--optimizer '%s': expected sgd or adamw", optarg);
      break;
    case O_SCHED:
      if (!strcmp(optarg, "onecycle")) c.sched = VMC_SCHED_ONECYCLE;
      else if (!strcmp(optarg, "cosine")) c.sched = VMC_SCHED_COSINE;
      else if (!strcmp(optarg, "step")) c.sched = VMC_SCHED_STEP;
      else if (!strcmp(optarg, "constant")) c.sched = VMC_SCHED_CONSTANT;
      else return cli_usage_error("train", "--sched '%s': expected onecycle, cosine, step or constant", optarg);
      break;
    case O_STEPSZ: if (cli_int("--step-size", optarg, 1, 100000, &v)) return 2; c.step_size = (int)v; break;
    case O_GAMMA: if (cli_float("--gamma", optarg, 0, 1, &f)) return 2; c.gamma = (float)f; break;
    case O_LS: if (cli_float("--label-smoothing", optarg, 0, 0.99, &f)) return 2; c.label_smoothing = (float)f; break;
    case O_NOAUG: c.augment = 0; break;
    case O_AUG: c.augment = 1; break;
    case O_CROP: if (cli_int("--crop-pad", optarg, 0, 64, &v)) return 2; c.crop_pad = (int)v; break;
    case O_NOFLIP: c.flip = 0; break;
    case O_LTRAIN: if (cli_int("--limit-train", optarg, 1, 1L << 30, &v)) return 2; c.limit_train = (int)v; break;
    case O_LTEST: if (cli_int("--limit-test", optarg, 1, 1L << 30, &v)) return 2; c.limit_test = (int)v; break;
    case O_CKPT: c.checkpoint = optarg; break;
    case O_RESUME: c.resume = optarg; break;
    case O_NOEVAL: no_eval = 1; break;
    default: return cli_usage_error("train", "unknown option");
    }
  }
  if (optind < argc) return cli_usage_error("train", "unexpected argument '%s'", argv[optind]);
  if (!out) return cli_usage_error("train", "missing -o OUT.vmc");
  if (!model && !c.resume) return cli_usage_error("train", "missing --model NAME (or --resume CKPT)");
  if (model) {
    int known = 0;
    for (const char *const *z = vmc_zoo_names(); *z; z++) known |= !strcmp(*z, model);
    if (!known)
      return cli_usage_error("train", "unknown --model '%s' (lenet5, resnet8, resnet20, mobilenetv2-tiny)", model);
  }
  cli_common_apply(&cc);
  c.seed = cc.seed;
  c.quiet = !cc.progress;

  vmc_dataset *train = NULL, *test = NULL;
  vmc_graph *g = NULL;
  vmc_status s;
  int rc = 1;
  if (c.resume) {
    s = vmc_model_load(c.resume, &g);
    if (s) return cli_fail("train", s, "cannot resume");
    if (model && strcmp(model, vmc_graph_meta(g, "architecture") ? vmc_graph_meta(g, "architecture") : "")) {
      vmc_graph_free(g);
      return cli_usage_error("train", "--model %s does not match the checkpoint's architecture", model);
    }
    model = vmc_graph_meta(g, "architecture") ? vmc_graph_meta(g, "architecture") : "model";
    /* The schedule spans the whole run: continue with the checkpoint's total. */
    const char *total = vmc_graph_meta(g, "checkpoint.epochs_total");
    if (!epochs_set && total && atoi(total) > 0) c.epochs = atoi(total);
    const char *cb = vmc_graph_meta(g, "checkpoint.batch"), *co = vmc_graph_meta(g, "checkpoint.optimizer");
    if (!batch_set && cb && atoi(cb) > 0) c.batch = atoi(cb);
    if (!opt_set && co) c.optimizer = strcmp(co, "adamw") ? VMC_OPT_SGD : VMC_OPT_ADAMW;
    const char *cl = vmc_graph_meta(g, "checkpoint.lr"), *cw = vmc_graph_meta(g, "checkpoint.weight_decay");
    if (!lr_set && cl && atof(cl) > 0) c.lr = (float)atof(cl), lr_set = 1;
    if (!wd_set && cw && atof(cw) >= 0) c.weight_decay = (float)atof(cw), wd_set = 1;
  }
  if (c.optimizer == VMC_OPT_ADAMW) {
    if (!lr_set) c.lr = 1e-3f;
    if (!wd_set) c.weight_decay = 0.05f;
  }
  s = cli_open_data(&cc, g, VMC_SPLIT_TRAIN, &train);
  if (s) goto fail;
  if (!no_eval) {
    s = vmc_dataset_open(cc.data ? cc.data : (g && vmc_graph_meta(g, "dataset")) ? vmc_graph_meta(g, "dataset") : "fashion-mnist", VMC_SPLIT_TEST, &test);
    if (s) goto fail;
    memcpy(test->mean, train->mean, sizeof test->mean);
    memcpy(test->std, train->std, sizeof test->std);
  }
  if (!g) {
    s = vmc_zoo_build(model, train->c, train->h, train->w, train->n_classes, cc.seed, &g);
    if (s) goto fail;
  }
  if (!cc.json && !cc.quiet)
    printf("training %s on %s (%d images, %dx%dx%d, %d classes), %d params, %d threads, %s kernels\n",
           model, train->name, train->n, train->c, train->h, train->w, train->n_classes,
           vmc_graph_num_params(g), vmc_get_threads(), vmc_isa_name());
  s = data_meta(g, train);
  if (s) goto fail;
  cli_epoch_log log = {&cc, cJSON_CreateArray(), ""};
  vmc_train_result r;
  s = vmc_train(g, train, test, &c, NULL, cli_on_epoch, &log, &r);
  if (!s) s = result_meta(g, model, train, &c, &r);
  if (!s) s = vmc_model_save(g, out);
  if (s) {
    cJSON_Delete(log.epochs);
    goto fail;
  }
  if (cc.json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "dataset", train->name);
    cJSON_AddStringToObject(o, "output", out);
    cJSON_AddNumberToObject(o, "params", vmc_graph_num_params(g));
    cJSON_AddNumberToObject(o, "threads", vmc_get_threads());
    cJSON_AddNumberToObject(o, "seconds", r.total_seconds);
    if (r.last.test_acc >= 0) cJSON_AddNumberToObject(o, "test_accuracy", r.last.test_acc);
    cJSON_AddItemToObject(o, "epochs", log.epochs);
    cli_print_json(o);
  } else {
    cJSON_Delete(log.epochs);
    if (!cc.quiet) printf("wrote %s (%.1f s)\n", out, r.total_seconds);
  }
  rc = 0;
  goto done;
fail:
  rc = cli_fail("train", s, NULL);
done:
  vmc_dataset_free(train);
  vmc_dataset_free(test);
  vmc_graph_free(g);
  return rc;
}
