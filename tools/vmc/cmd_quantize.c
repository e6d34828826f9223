/* vmc quantize: post-training quantization, simulated in fp32 (quant/ptq.h). */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "graph/graph.h"
#include "quant/adaround.h"
#include "quant/ptq.h"
#include "quant/qat.h"
#include "quant/sensitivity.h"

static const char *const HELP =
    "Usage: vmc quantize IN.vmc -o OUT.vmc [--calib NAME|PATH] [options]\n\n"
    "Post-training quantization, simulated in fp32: BatchNorm is folded into the\n"
    "convolutions, every conv/linear weight is replaced by its fake-quantized value\n"
    "(symmetric, per output channel by default), and a fakequant node is inserted on\n"
    "the input of every conv/linear with a range calibrated on the first N images of\n"
    "the TRAINING split.  OUT.vmc is an ordinary model: `vmc eval OUT.vmc` measures\n"
    "what the integer model will score.  A summary of the choices is recorded in its\n"
    "metadata (\"quant\", \"history\"); what each layer got is in its graph (`vmc\n"
    "info` shows the activation scales); the per-layer report (ranges, clipping,\n"
    "SQNRs) is printed, and is part of the JSON of --json and --report.\n\n"
    "Options:\n"
    "  -o, --output FILE     the quantized model (written atomically; required)\n"
    "  --report FILE         also write the report as JSON to FILE (what --json\n"
    "                        prints: options, per-layer calibration and weights, or\n"
    "                        with --qat the final qparams, the evaluation)\n"
    "  --calib NAME|PATH     calibration data set (default: --data, else the one the\n"
    "                        model records)\n"
    "  --calib-images N      calibration images (default 512)\n"
    "  --calib-batch N       images per calibration forward pass (default 32; the\n"
    "                        moving-average observer updates once per batch)\n"
    "  --scheme w8a8|w7a8|w4a8\n"
    "                        weight bits (s8, s7 or s4, symmetric) and 8-bit\n"
    "                        activations (default w8a8).  w7a8 files are as large\n"
    "                        as w8a8 ones, but on CPUs without VNNI (AVX2) their\n"
    "                        convolutions run on a faster int8 kernel (as do\n"
    "                        w4a8 ones): 7-bit weights cannot saturate it\n"
    "  --act u8|s8           activation type: u8 asymmetric (default; zero point 0\n"
    "                        after a ReLU) or s8 symmetric\n"
    "  --observer KIND       activation range: minmax (default), ema (moving average\n"
    "                        of per-batch min/max), percentile, mse, kl (TensorRT's\n"
    "                        entropy calibration)\n"
    "  --input-observer KIND the same for the model's input (default minmax: the\n"
    "                        pixel grid, nearly lossless; 'same' follows --observer)\n"
    "  --percentile P        for --observer percentile (default 99.99)\n"
    "  --momentum M          for --observer ema (default 0.01)\n"
    "  --bins N              histogram bins of percentile/mse/kl (default 2048)\n"
    "  --per-channel         one weight scale per output channel (default)\n"
    "  --per-tensor          one weight scale per tensor\n"
    "  --float-bias          keep biases in fp32 (default: rounded to s32 codes of\n"
    "                        scale s_w * s_x, as the integer runtime adds them)\n"
    "  --equalize            cross-layer equalization before quantizing: each\n"
    "                        conv-relu-conv pair's channel ranges are balanced by\n"
    "                        rescaling (the fp32 model is unchanged); helps\n"
    "                        per-tensor weights\n"
    "  --bias-correction     empirical bias correction: each quantized layer's bias\n"
    "                        is shifted by the change of its mean output per channel\n"
    "                        on the calibration images (float model vs quantized,\n"
    "                        layer by layer); not with --adaround or --qat\n"
    "  --eval                also evaluate the fp32 and the quantized model on the\n"
    "                        test split and print both accuracies\n"
    "  --eval-limit N        only the first N test images\n"
    "  --adaround            learned rounding of the weights (AdaRound): each conv/\n"
    "                        linear weight rounds up or down so that the layer's\n"
    "                        output on the calibration images (as the quantized\n"
    "                        model feeds it) matches the float layer's; worth it\n"
    "                        for 4-bit weights.  Scales and storage are unchanged\n"
    "  --adaround-iters N    optimisation steps per layer (default 1000)\n\n"
    "Quantization-aware training (--qat): starts from the post-training quantized\n"
    "model above and fine-tunes it with fake-quantized weights and activations\n"
    "(float shadow weights, straight-through gradients, activation ranges from\n"
    "moving averages or learned); BatchNorm is folded from epoch 0 unless\n"
    "--freeze-bn-epoch says otherwise.  Evaluates on the test split after each\n"
    "epoch (--eval-limit: the first N images).\n"
    "  --qat                 quantization-aware training (needed for w8a4, w7a4,\n"
    "                        w4a4)\n"
    "  --scheme w8a4|w7a4|w4a4\n"
    "                        4-bit activations (u4) on the conv/linear inputs; the\n"
    "                        image and the residual add operands stay u8\n"
    "  --epochs N            epochs (default 2)\n"
    "  --lr X                SGD learning rate, cosine schedule (default 0.003)\n"
    "  --batch N             batch size (default 128)\n"
    "  --act-ranges ema|lsq  scales of the conv/linear inputs: moving averages of\n"
    "                        min/max (default for 8 bits) or learned (LSQ, default\n"
    "                        for 4 bits); the other fakequants follow averages\n"
    "  --freeze-observers-epoch E  the moving averages follow the data during\n"
    "                        epochs 1..E, then stay fixed (default 1; 0: the\n"
    "                        calibrated ranges throughout)\n"
    "  --freeze-bn-epoch F   BatchNorm normalises with batch statistics (and\n"
    "                        updates its running ones) during epochs 1..F, the\n"
    "                        conv weights fake-quantized as folded, then uses its\n"
    "                        running statistics; folded at the end (default 0:\n"
    "                        folded from the start)\n"
    "  --fixed-weight-scales keep the calibrated weight scales (default: from\n"
    "                        max |w| of each channel after every step)\n"
    "  --limit-train N       train on the first N images only\n"
    "  --checkpoint FILE     write a checkpoint each epoch (the float shadow\n"
    "                        weights, optimizer, observers, RNG)\n"
    "  --resume FILE         continue from such a checkpoint, with the same model\n"
    "                        and QAT options: the result is that of one run\n\n"
    "Sensitivity and mixed precision (see docs/quantization.md):\n"
    "  --sensitivity [FILE]  quantize each conv/linear alone (its input u8, its\n"
    "                        weights s8, then s4; the rest fp32) and print per\n"
    "                        layer the accuracy drop (points) and the SQNR of the\n"
    "                        logits against the fp32 model on held-out TRAINING\n"
    "                        images (the ones after the calibration images); also\n"
    "                        writes the table to FILE (JSON if it ends in .json,\n"
    "                        else CSV).  -o is not needed.  Give FILE as\n"
    "                        --sensitivity=FILE\n"
    "  --held-out N          held-out images (default 2000)\n"
    "  --bits-budget B       mixed precision: s4 or s8 per layer so that the conv/\n"
    "                        linear weights average at most B bits (>= 4; 8 is\n"
    "                        all-s8, 4 all-s4; an fp32 layer counts 32): the\n"
    "                        layers with the least 4-bit damage per weight go to\n"
    "                        4 bits first; then PTQ with those bits into -o\n"
    "  --max-drop P          and at most P points lost on the held-out images:\n"
    "                        while it is more, the layer most damaged at 8 bits\n"
    "                        stays fp32 and the choice is made again (an error\n"
    "                        when no choice meets both budgets)\n"
    "  --rank noise|drop     4-bit damage: the logit noise 10^(-SQNR/10) (default)\n"
    "                        or the held-out accuracy drop\n\n"
    "Per layer it reports the activation range and qparams chosen, the share of\n"
    "calibration values clipped, the SQNR of the activation and of the weights.\n\n"
    "Example:\n"
    "  vmc quantize r8.vmc --calib fashion-mnist --scheme w8a8 --observer kl -o r8q.vmc --eval\n\n"
    CLI_COMMON_HELP;

enum {
  O_CALIB = OPT_CMD_BASE, O_CALIB_IMAGES, O_CALIB_BATCH, O_SCHEME, O_ACT, O_OBSERVER,
  O_PERCENTILE, O_MOMENTUM, O_BINS, O_PER_CHANNEL, O_PER_TENSOR, O_FLOAT_BIAS, O_EQUALIZE, O_BIAS_CORR, O_EVAL,
  O_EVAL_LIMIT, O_INPUT_OBSERVER, O_QAT, O_EPOCHS, O_LR, O_BATCH, O_FREEZE_OBS, O_FREEZE_BN,
  O_FIXED_WSCALES, O_LIMIT_TRAIN, O_ACT_RANGES, O_SENSITIVITY, O_HELD_OUT, O_BITS_BUDGET,
  O_MAX_DROP, O_RANK, O_ADAROUND, O_ADAROUND_ITERS, O_REPORT, O_CKPT, O_RESUME
};

/* JSON number, null where not finite (an SQNR of +inf: no error at all). */
static void add_num(cJSON *o, const char *key, double v) {
  if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
  else cJSON_AddNullToObject(o, key);
}

cJSON *cli_ptq_layers_json(const vmc_ptq_report *r) {
  cJSON *layers = cJSON_CreateArray();
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_ptq_layer *l = &r->layers[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", l->node);
    cJSON_AddStringToObject(j, "op", l->op);
    cJSON_AddStringToObject(j, "input", l->input);
    cJSON_AddStringToObject(j, "quant_node", l->quant);
    cJSON_AddStringToObject(j, "observer", vmc_observer_kind_name(l->observer));
    cJSON_AddNumberToObject(j, "act_scale", l->act.scale);
    cJSON_AddNumberToObject(j, "act_zero_point", l->act.zero_point);
    cJSON_AddNumberToObject(j, "act_qmin", l->act.qmin);
    cJSON_AddNumberToObject(j, "act_qmax", l->act.qmax);
    cJSON_AddNumberToObject(j, "range_lo", l->lo);
    cJSON_AddNumberToObject(j, "range_hi", l->hi);
    cJSON_AddNumberToObject(j, "seen_min", l->seen_min);
    cJSON_AddNumberToObject(j, "seen_max", l->seen_max);
    cJSON_AddNumberToObject(j, "clipped", l->clipped);
    add_num(j, "act_sqnr_db", l->act_sqnr_db);
    cJSON_AddNumberToObject(j, "weight_bits", l->weight_bits);
    cJSON_AddNumberToObject(j, "weight_blocks", l->channels);
    add_num(j, "weight_sqnr_db", l->w_sqnr_db);
    cJSON_AddNumberToObject(j, "weight_scale_min", l->w_scale_min);
    cJSON_AddNumberToObject(j, "weight_scale_max", l->w_scale_max);
    cJSON_AddItemToArray(layers, j);
  }
  return layers;
}

static void print_layers(const vmc_ptq_report *r) {
  printf("%-24s %-7s %-24s %-22s %-11s %4s %7s %9s %9s\n", "layer", "op", "reads",
         "activation range", "scale", "zp", "clip%", "act SQNR", "w SQNR");
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_ptq_layer *l = &r->layers[i];
    char range[48], sq[16], wq[16];
    const float lo = (float)(l->act.qmin - l->act.zero_point) * l->act.scale;
    const float hi = (float)(l->act.qmax - l->act.zero_point) * l->act.scale;
    snprintf(range, sizeof range, "[%.4g, %.4g]", lo, hi);
    snprintf(sq, sizeof sq, isfinite(l->act_sqnr_db) ? "%.1f dB" : "exact", l->act_sqnr_db);
    snprintf(wq, sizeof wq, isfinite(l->w_sqnr_db) ? "%.1f dB" : "exact", l->w_sqnr_db);
    printf("%-24s %-7s %-24s %-22s %-11.5g %4d %7.3f %9s %9s\n", l->node, l->op, l->input, range,
           l->act.scale, (int)l->act.zero_point, 100 * l->clipped, sq, wq);
  }
}

/* Per layer: the output reconstruction error (mean over the calibration
 * columns of the squared error summed over output channels) with the
 * rounding to nearest, the learned rounding and the float weights. */
static void print_adaround(const vmc_adaround_report *r) {
  printf("\nlearned rounding (AdaRound), %d calibration images, %.2f s\n", r->calib_images,
         r->seconds);
  printf("%-24s %-7s %8s %11s %11s %11s %8s %7s\n", "layer", "op", "columns", "err nearest",
         "err learned", "err float", "changed", "time");
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_adaround_layer *l = &r->layers[i];
    printf("%-24s %-7s %8d %11.4g %11.4g %11.4g %7.1f%% %6.1fs%s\n", l->node, l->op, l->columns,
           l->err_nearest, l->err_learned, l->err_float, 100 * l->changed, l->seconds,
           l->kept_nearest ? "  (worse: nearest kept)" : "");
  }
}

static cJSON *adaround_json(const vmc_adaround_opts *o, const vmc_adaround_report *r) {
  cJSON *a = cJSON_CreateObject(), *layers = cJSON_CreateArray();
  cJSON_AddNumberToObject(a, "iters", o->iters);
  cJSON_AddNumberToObject(a, "batch", o->batch);
  cJSON_AddNumberToObject(a, "pixels", o->pixels);
  cJSON_AddNumberToObject(a, "lr", o->lr);
  cJSON_AddNumberToObject(a, "lambda", o->lambda);
  cJSON_AddNumberToObject(a, "calib_images", r->calib_images);
  cJSON_AddNumberToObject(a, "seconds", r->seconds);
  for (int i = 0; i < r->n_layers; i++) {
    const vmc_adaround_layer *l = &r->layers[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "node", l->node);
    cJSON_AddStringToObject(j, "op", l->op);
    cJSON_AddNumberToObject(j, "columns", l->columns);
    add_num(j, "err_nearest", l->err_nearest);
    add_num(j, "err_learned", l->err_learned);
    add_num(j, "err_float", l->err_float);
    cJSON_AddNumberToObject(j, "changed", l->changed);
    cJSON_AddBoolToObject(j, "kept_nearest", l->kept_nearest);
    cJSON_AddNumberToObject(j, "seconds", l->seconds);
    cJSON_AddItemToArray(layers, j);
  }
  cJSON_AddItemToObject(a, "layers", layers);
  return a;
}

int cmd_quantize(int argc, char **argv) {
  static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                       {"output", required_argument, 0, 'o'},
                                       {"report", required_argument, 0, O_REPORT},
                                       {"calib", required_argument, 0, O_CALIB},
                                       {"calib-images", required_argument, 0, O_CALIB_IMAGES},
                                       {"calib-batch", required_argument, 0, O_CALIB_BATCH},
                                       {"scheme", required_argument, 0, O_SCHEME},
                                       {"act", required_argument, 0, O_ACT},
                                       {"observer", required_argument, 0, O_OBSERVER},
                                       {"input-observer", required_argument, 0, O_INPUT_OBSERVER},
                                       {"percentile", required_argument, 0, O_PERCENTILE},
                                       {"momentum", required_argument, 0, O_MOMENTUM},
                                       {"bins", required_argument, 0, O_BINS},
                                       {"per-channel", no_argument, 0, O_PER_CHANNEL},
                                       {"per-tensor", no_argument, 0, O_PER_TENSOR},
                                       {"float-bias", no_argument, 0, O_FLOAT_BIAS},
                                       {"equalize", no_argument, 0, O_EQUALIZE},
                                       {"bias-correction", no_argument, 0, O_BIAS_CORR},
                                       {"eval", no_argument, 0, O_EVAL},
                                       {"eval-limit", required_argument, 0, O_EVAL_LIMIT},
                                       {"adaround", no_argument, 0, O_ADAROUND},
                                       {"adaround-iters", required_argument, 0, O_ADAROUND_ITERS},
                                       {"qat", no_argument, 0, O_QAT},
                                       {"epochs", required_argument, 0, O_EPOCHS},
                                       {"lr", required_argument, 0, O_LR},
                                       {"batch", required_argument, 0, O_BATCH},
                                       {"freeze-observers-epoch", required_argument, 0, O_FREEZE_OBS},
                                       {"freeze-bn-epoch", required_argument, 0, O_FREEZE_BN},
                                       {"fixed-weight-scales", no_argument, 0, O_FIXED_WSCALES},
                                       {"limit-train", required_argument, 0, O_LIMIT_TRAIN},
                                       {"checkpoint", required_argument, 0, O_CKPT},
                                       {"resume", required_argument, 0, O_RESUME},
                                       {"act-ranges", required_argument, 0, O_ACT_RANGES},
                                       {"sensitivity", optional_argument, 0, O_SENSITIVITY},
                                       {"held-out", required_argument, 0, O_HELD_OUT},
                                       {"bits-budget", required_argument, 0, O_BITS_BUDGET},
                                       {"max-drop", required_argument, 0, O_MAX_DROP},
                                       {"rank", required_argument, 0, O_RANK},
                                       {0, 0, 0, 0}};
  cli_common cc;
  cli_common_init(&cc);
  vmc_ptq_opts po;
  vmc_ptq_opts_default(&po);
  vmc_adaround_opts ao;
  vmc_adaround_opts_default(&ao);
  int adaround = 0, adaround_iters_set = 0;
  const char *out_path = NULL, *calib = NULL, *scheme = "w8a8", *report = NULL;
  int do_eval = 0, granularity_set = 0, input_same = 0;
  int qat = 0, a4 = 0, qat_flag = 0, act_ranges = -1; /* act_ranges: 0 ema, 1 lsq, -1 by scheme */
  vmc_qat_opts qo;
  vmc_qat_opts_default(&qo);
  cli_mixed mx = {.max_drop = -1, .held_out = 2000};
  int mixed_flag = 0, scheme_set = 0;
  long v, eval_limit = 0;
  double d;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    int r = cli_common_opt(&cc, opt, optarg);
    if (r < 0) return 2;
    if (r) continue;
    switch (opt) {
    case 'h': fputs(HELP, stdout); return 0;
    case 'o': out_path = optarg; break;
    case O_REPORT: report = optarg; break;
    case O_CALIB: calib = optarg; break;
    case O_CALIB_IMAGES:
      if (cli_int("--calib-images", optarg, 1, 1L << 24, &v)) return 2;
      po.calib_images = (int)v;
      break;
    case O_CALIB_BATCH:
      if (cli_int("--calib-batch", optarg, 1, 4096, &v)) return 2;
      po.batch = (int)v;
      break;
    case O_SCHEME:
      if (!strcmp(optarg, "w8a8") || !strcmp(optarg, "w8a4")) po.weight_scheme = VMC_QSCHEME_S8;
      else if (!strcmp(optarg, "w7a8") || !strcmp(optarg, "w7a4")) po.weight_scheme = VMC_QSCHEME_S7;
      else if (!strcmp(optarg, "w4a8") || !strcmp(optarg, "w4a4")) po.weight_scheme = VMC_QSCHEME_S4;
      else return cli_usage_error("quantize", "--scheme '%s': expected w8a8, w7a8, w4a8, w8a4, "
                                  "w7a4 or w4a4", optarg);
      a4 = optarg[3] == '4';
      scheme = optarg;
      scheme_set = 1;
      break;
    case O_ACT:
      if (!strcmp(optarg, "u8")) po.act_scheme = VMC_QSCHEME_U8;
      else if (!strcmp(optarg, "s8")) po.act_scheme = VMC_QSCHEME_S8;
      else return cli_usage_error("quantize", "--act '%s': expected u8 or s8", optarg);
      break;
    case O_OBSERVER: {
      vmc_observer_kind k;
      if (vmc_observer_kind_from_name(optarg, &k))
        return cli_usage_error("quantize", "--observer '%s': expected minmax, ema, percentile, "
                               "mse or kl", optarg);
      po.observer = k;
      break;
    }
    case O_INPUT_OBSERVER: {
      vmc_observer_kind k;
      input_same = !strcmp(optarg, "same");
      if (input_same) break;
      if (vmc_observer_kind_from_name(optarg, &k))
        return cli_usage_error("quantize", "--input-observer '%s': expected minmax, ema, "
                               "percentile, mse, kl or same", optarg);
      po.input_observer = k;
      break;
    }
    case O_PERCENTILE:
      if (cli_float("--percentile", optarg, 50, 100, &d)) return 2;
      if (!(d > 50)) return cli_usage_error("quantize", "--percentile must be above 50");
      po.obs.percentile = d;
      break;
    case O_MOMENTUM:
      if (cli_float("--momentum", optarg, 0, 1, &d)) return 2;
      if (!(d > 0)) return cli_usage_error("quantize", "--momentum must be above 0");
      po.obs.momentum = (float)d;
      break;
    case O_BINS:
      if (cli_int("--bins", optarg, 512, 8192, &v)) return 2;
      if (v & (v - 1)) return cli_usage_error("quantize", "--bins %ld: expected a power of two", v);
      po.obs.bins = (int)v;
      break;
    case O_PER_CHANNEL:
    case O_PER_TENSOR:
      if (granularity_set && po.per_channel != (opt == O_PER_CHANNEL))
        return cli_usage_error("quantize", "--per-channel and --per-tensor exclude each other");
      po.per_channel = opt == O_PER_CHANNEL;
      granularity_set = 1;
      break;
    case O_FLOAT_BIAS: po.bias_s32 = 0; break;
    case O_EQUALIZE: po.equalize = 10; break;
    case O_BIAS_CORR: po.bias_correct = 1; break;
    case O_EVAL: do_eval = 1; break;
    case O_EVAL_LIMIT:
      if (cli_int("--eval-limit", optarg, 1, 1L << 30, &eval_limit)) return 2;
      do_eval = 1;
      break;
    case O_QAT: qat = 1; break;
    case O_EPOCHS:
      if (cli_int("--epochs", optarg, 1, 10000, &v)) return 2;
      qo.train.epochs = (int)v;
      qat_flag = 1;
      break;
    case O_LR:
      if (cli_float("--lr", optarg, 1e-8, 10, &d)) return 2;
      qo.train.lr = (float)d;
      qat_flag = 1;
      break;
    case O_BATCH:
      if (cli_int("--batch", optarg, 1, 65536, &v)) return 2;
      qo.train.batch = (int)v;
      qat_flag = 1;
      break;
    case O_FREEZE_OBS:
      if (cli_int("--freeze-observers-epoch", optarg, 0, 10000, &v)) return 2;
      qo.freeze_observers_epoch = (int)v;
      qat_flag = 1;
      break;
    case O_FREEZE_BN:
      if (cli_int("--freeze-bn-epoch", optarg, 0, 10000, &v)) return 2;
      qo.freeze_bn_epoch = (int)v;
      qat_flag = 1;
      break;
    case O_ACT_RANGES:
      if (!strcmp(optarg, "ema")) act_ranges = 0;
      else if (!strcmp(optarg, "lsq")) act_ranges = 1;
      else return cli_usage_error("quantize", "--act-ranges '%s': expected ema or lsq", optarg);
      qat_flag = 1;
      break;
    case O_FIXED_WSCALES: qo.fixed_weight_scales = 1; qat_flag = 1; break;
    case O_LIMIT_TRAIN:
      if (cli_int("--limit-train", optarg, 1, 1L << 30, &v)) return 2;
      qo.train.limit_train = (int)v;
      qat_flag = 1;
      break;
    case O_CKPT: qo.train.checkpoint = optarg; qat_flag = 1; break;
    case O_RESUME: qo.train.resume = optarg; qat_flag = 1; break;
    case O_SENSITIVITY: mx.sensitivity = 1; mx.table = optarg; break;
    case O_HELD_OUT:
      if (cli_int("--held-out", optarg, 1, 1L << 30, &v)) return 2;
      mx.held_out = (int)v;
      mixed_flag = 1;
      break;
    case O_BITS_BUDGET:
      if (cli_float("--bits-budget", optarg, 0, 1e6, &d)) return 2;
      if (!(d >= 4))
        return cli_usage_error("quantize", "--bits-budget %g: below 4 bits per weight (every "
                               "layer at 4 bits is the smallest choice)", d);
      mx.bits_budget = d;
      break;
    case O_MAX_DROP:
      if (cli_float("--max-drop", optarg, 0, 100, &d)) return 2;
      mx.max_drop = d;
      mixed_flag = 1;
      break;
    case O_RANK: {
      vmc_sens_rank k;
      if (vmc_sens_rank_from_name(optarg, &k))
        return cli_usage_error("quantize", "--rank '%s': expected noise or drop", optarg);
      mx.rank = (int)k;
      mixed_flag = 1;
      break;
    }
    case O_ADAROUND: adaround = 1; break;
    case O_ADAROUND_ITERS:
      if (cli_int("--adaround-iters", optarg, 1, 1L << 24, &v)) return 2;
      ao.iters = (int)v;
      adaround_iters_set = 1;
      break;
    default: return cli_usage_error("quantize", "unknown option");
    }
  }
  if (a4 && !qat)
    return cli_usage_error("quantize", "--scheme %s: 4-bit activations need --qat "
                           "(quantization-aware training); post-training quantization "
                           "supports w8a8, w7a8 and w4a8", scheme);
  if (qat_flag && !qat)
    return cli_usage_error("quantize", "--epochs, --lr, --batch, --freeze-*, --act-ranges, "
                           "--fixed-weight-scales, --limit-train, --checkpoint and --resume are "
                           "for --qat");
  if (qat && adaround)
    return cli_usage_error("quantize", "--adaround is for post-training quantization, not --qat");
  if (po.bias_correct && (qat || adaround))
    return cli_usage_error("quantize", "--bias-correction is for nearest rounding: %s already "
                           "fits each layer's output", qat ? "--qat" : "--adaround");
  if (optind != argc - 1) return cli_usage_error("quantize", "expected one IN.vmc argument");
  if (mx.sensitivity || mx.bits_budget > 0) {
    if (qat || a4 || scheme_set)
      return cli_usage_error("quantize", "--sensitivity and --bits-budget choose the weight bits "
                             "per layer (post-training, 8-bit activations): drop --scheme/--qat");
    if (mx.bits_budget > 0 && !out_path)
      return cli_usage_error("quantize", "--bits-budget: no output file: give -o OUT.vmc");
    if (!mx.bits_budget && out_path)
      return cli_usage_error("quantize", "-o with --sensitivity needs --bits-budget (the table "
                             "alone writes no model)");
  } else if (mixed_flag) {
    return cli_usage_error("quantize", "--held-out, --max-drop and --rank are for --sensitivity "
                           "or --bits-budget");
  }
  if (!out_path && !mx.sensitivity)
    return cli_usage_error("quantize", "no output file: give -o OUT.vmc");
  if (input_same) po.input_observer = po.observer;
  if (po.obs.percentile > 0 && po.observer != VMC_OBSERVER_PERCENTILE &&
      po.input_observer != VMC_OBSERVER_PERCENTILE)
    return cli_usage_error("quantize", "--percentile is for --observer percentile");
  if (po.obs.momentum > 0 && po.observer != VMC_OBSERVER_MOVING_AVG &&
      po.input_observer != VMC_OBSERVER_MOVING_AVG)
    return cli_usage_error("quantize", "--momentum is for --observer ema");
  if (po.obs.bins > 0 && po.observer < VMC_OBSERVER_PERCENTILE &&
      po.input_observer < VMC_OBSERVER_PERCENTILE)
    return cli_usage_error("quantize", "--bins is for the percentile, mse and kl observers");
  if (adaround_iters_set && !adaround)
    return cli_usage_error("quantize", "--adaround-iters is for --adaround");
  if (adaround && (qat || mx.sensitivity || mx.bits_budget > 0))
    return cli_usage_error("quantize", "--adaround is for post-training quantization (not with "
                           "--qat, --sensitivity or --bits-budget)");
  const char *in_path = argv[optind];
  if (calib) cc.data = calib;
  cli_common_apply(&cc);
  const cli_quant_out qout = {out_path, report, do_eval, eval_limit};
  if (mx.sensitivity || mx.bits_budget > 0) return quantize_mixed(&cc, in_path, &qout, &po, &mx);
  if (qat) {
    if (a4 && po.act_scheme != VMC_QSCHEME_U8)
      return cli_usage_error("quantize", "--scheme %s: 4-bit activations are u4; drop --act",
                             scheme);
    if (a4) po.act_scheme = VMC_QSCHEME_U4;
    qo.learn_act_scales = act_ranges < 0 ? a4 : act_ranges;
    qo.ptq = po;
    return quantize_qat(&cc, in_path, &qout, &qo, scheme);
  }

  vmc_graph *g = NULL, *q = NULL;
  vmc_dataset *train = NULL, *test = NULL;
  vmc_ptq_report rep = {0};
  vmc_eval_result ef = {0}, eq = {0};
  vmc_status s = vmc_model_load(in_path, &g);
  if (s) return cli_fail("quantize", s, NULL);
  s = cli_open_data(&cc, g, VMC_SPLIT_TRAIN, &train);
  if (!s) s = vmc_ptq_quantize(g, train, &po, &q, &rep);
  vmc_adaround_report arep = {0};
  if (!s && adaround) {
    ao.calib_images = po.calib_images;
    ao.seed = cc.seed;
    ao.progress = cc.progress;
    s = vmc_adaround(g, q, train, &ao, &arep);
  }
  if (!s && do_eval) s = cli_open_data(&cc, g, VMC_SPLIT_TEST, &test);
  if (!s && do_eval) s = vmc_evaluate(g, test, 256, (int)eval_limit, cc.progress, &ef);
  if (!s && do_eval) s = vmc_evaluate(q, test, 256, (int)eval_limit, cc.progress, &eq);
  /* The float model's accuracy is not the quantized one's. */
  const char *acc = q ? vmc_graph_meta(q, "accuracy") : NULL;
  if (!s && acc) s = vmc_graph_set_meta(q, "accuracy.fp32", acc);
  if (!s && q) cli_meta_remove(q, "accuracy");
  if (!s && do_eval && !eval_limit) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.4f", eq.accuracy);
    s = vmc_graph_set_meta(q, "accuracy", buf);
  }
  if (!s) s = vmc_model_save(q, out_path);
  if (s) {
    int rc = cli_fail("quantize", s, NULL);
    vmc_ptq_report_free(&rep);
    vmc_adaround_report_free(&arep);
    vmc_graph_free(g);
    vmc_graph_free(q);
    vmc_dataset_free(train);
    vmc_dataset_free(test);
    return rc;
  }
  const char *obs = vmc_observer_kind_name(po.observer);
  const char *act = po.act_scheme == VMC_QSCHEME_U8 ? "u8" : "s8";
  const char *wsch = vmc_qscheme_get(po.weight_scheme)->name;
  if (cc.json || report) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", in_path);
    cJSON_AddStringToObject(o, "output", out_path);
    cJSON_AddStringToObject(o, "scheme", scheme);
    cJSON_AddStringToObject(o, "weights", wsch);
    cJSON_AddStringToObject(o, "granularity", po.per_channel ? "per-channel" : "per-tensor");
    cJSON_AddStringToObject(o, "activations", act);
    cJSON_AddStringToObject(o, "observer", obs);
    cJSON_AddStringToObject(o, "input_observer", vmc_observer_kind_name(po.input_observer));
    cJSON_AddStringToObject(o, "bias", po.bias_s32 ? "s32" : "f32");
    cJSON_AddStringToObject(o, "calib_data", train->name);
    cJSON_AddNumberToObject(o, "calib_images", rep.calib_images);
    cJSON_AddNumberToObject(o, "batchnorm_folded", rep.bn_folded);
    cJSON_AddNumberToObject(o, "equalized_pairs", rep.equalized_pairs);
    cJSON_AddNumberToObject(o, "bias_corrected", rep.bias_corrected);
    cJSON_AddNumberToObject(o, "bias_shift", rep.bias_shift);
    cJSON_AddNumberToObject(o, "seconds", rep.seconds);
    cJSON_AddItemToObject(o, "layers", cli_ptq_layers_json(&rep));
    if (do_eval) {
      cJSON *e = cJSON_CreateObject();
      cJSON_AddStringToObject(e, "dataset", test->name);
      cJSON_AddNumberToObject(e, "images", eq.n);
      cJSON_AddNumberToObject(e, "fp32_accuracy", ef.accuracy);
      cJSON_AddNumberToObject(e, "quant_accuracy", eq.accuracy);
      cJSON_AddNumberToObject(e, "drop_points", 100.0 * ((double)ef.accuracy - eq.accuracy));
      cJSON_AddNumberToObject(e, "fp32_loss", ef.loss);
      cJSON_AddNumberToObject(e, "quant_loss", eq.loss);
      cJSON_AddItemToObject(o, "eval", e);
    }
    if (adaround) cJSON_AddItemToObject(o, "adaround", adaround_json(&ao, &arep));
    s = cli_report_json(&cc, report, o);
  }
  if (!cc.json && (!cc.quiet || do_eval)) {
    if (!cc.quiet) {
      printf("%s -> %s: %s (weights %s %s, activations %s, %s observer, input %s, bias %s), "
             "%d calibration images of %s/train, %d batchnorms folded, %.2f s\n\n",
             in_path, out_path, scheme, wsch, po.per_channel ? "per-channel" : "per-tensor", act,
             obs, vmc_observer_kind_name(po.input_observer), po.bias_s32 ? "s32" : "f32",
             rep.calib_images, train->name, rep.bn_folded, rep.seconds);
      print_layers(&rep);
      if (adaround) print_adaround(&arep);
    }
    if (do_eval)
      printf("%stest accuracy on %s (%d images): fp32 %.2f%%, %s %.2f%% (drop %.2f points)\n",
             cc.quiet ? "" : "\n", test->name, eq.n, 100 * ef.accuracy, scheme, 100 * eq.accuracy,
             100.0 * ((double)ef.accuracy - eq.accuracy));
  }
  vmc_ptq_report_free(&rep);
  vmc_adaround_report_free(&arep);
  vmc_graph_free(g);
  vmc_graph_free(q);
  vmc_dataset_free(train);
  vmc_dataset_free(test);
  return s ? cli_fail("quantize", s, NULL) : 0; /* the report could not be written */
}
