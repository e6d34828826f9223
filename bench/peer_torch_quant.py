#!/usr/bin/python3
"""PyTorch's own post-training static quantization of a trained vmc model, as the peer of
`vmc quantize`: the same float weights, the same calibration images, the same test set.

    /usr/bin/python3 bench/peer_torch_quant.py --model /work/models/resnet8.vmc \
        --threads 2 --engine onednn --observer minmax,histogram

Steps:
  1. reads the float .vmc (bench/vmcfile.py) into the zoo's PyTorch twin
     (tests/fixtures/torch_zoo.py, the architecture named in the file's metadata) and
     measures its float accuracy on the 10,000 test images; --expect-accuracy (vmc's
     figure, e.g. from `vmc eval`) makes it fail when the two differ by more than
     --tolerance points (summation order flips a few borderline images, no more);
  2. per observer: FX graph mode PTQ (prepare_fx / convert_fx): conv+bn(+relu) fused,
     weights s8 symmetric per output channel (default_per_channel_weight_observer),
     activations u8 affine per tensor without reduce_range, observed over the first
     --calib-images training images in batches of --calib-batch (vmc's defaults);
       minmax     MinMaxObserver, the activation observer of PyTorch's default qconfig
       histogram  HistogramObserver, of get_default_qconfig('onednn'/'qnnpack')
  3. the int8 model's accuracy on the whole test set, and its speed on the engine:
     median latency of --repeats-b1 single-image forwards, and images/s of batch
     --batch (median of --repeats-b64 forwards), after --warmup untimed runs.
Images are normalised as vmc normalises Fashion-MNIST: (v/255 - 0.2860) / 0.3530 in
float32 (bench/peer_torch.py's loader).  Prints one JSON object on stdout.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peer_torch  # noqa: E402  (also puts tests/fixtures on the path)
import torch  # noqa: E402
import torch_zoo  # noqa: E402
import vmcfile  # noqa: E402
from torch.ao.quantization import (QConfig, QConfigMapping, HistogramObserver,  # noqa: E402
                                   MinMaxObserver, default_per_channel_weight_observer)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
OBSERVERS = {
    "minmax": MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False),
    "histogram": HistogramObserver.with_args(dtype=torch.quint8, reduce_range=False),
}


def load_float_model(path):
    m = vmcfile.read(path)
    arch = m.meta.get("architecture", "")
    if arch not in torch_zoo.NAMES:
        sys.exit("%s: architecture %r is not one of the zoo's (%s)"
                 % (path, arch, ", ".join(torch_zoo.NAMES)))
    c, h, w = m.input_chw
    model = torch_zoo.build(arch, c, h, w, int(m.meta.get("classes", "10")))
    want = torch_zoo.vmc_state_dict(model)
    have = m.float_params()
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        sys.exit("%s: parameters do not match the PyTorch %s (missing %s, unexpected %s)"
                 % (path, arch, missing[:4], extra[:4]))
    for k, v in have.items():
        if tuple(v.shape) != tuple(want[k].shape):
            sys.exit("%s: %s has shape %s, PyTorch's %s" % (path, k, tuple(v.shape),
                                                            tuple(want[k].shape)))
    model.load_state_dict(have, strict=False)  # num_batches_tracked stays
    model.eval()
    return model, arch, m.meta


def accuracy(model, x, y, batch=256):
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def quantize(model, calib, obs, calib_batch):
    qc = QConfig(activation=OBSERVERS[obs], weight=default_per_channel_weight_observer)
    prepared = prepare_fx(copy.deepcopy(model), QConfigMapping().set_global(qc),
                          example_inputs=(calib[:1],))
    with torch.no_grad():
        for i in range(0, len(calib), calib_batch):
            prepared(calib[i:i + calib_batch])
    return convert_fx(prepared)


def median_ms(model, x, warmup, repeats):
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained float .vmc")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="onednn",
                    help="torch.backends.quantized.engine (have: %s)"
                    % ", ".join(torch.backends.quantized.supported_engines))
    ap.add_argument("--observer", default="minmax,histogram",
                    help="comma-separated: " + ", ".join(OBSERVERS))
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--calib-batch", type=int, default=32)
    ap.add_argument("--expect-accuracy", type=float, default=None,
                    help="vmc's float test accuracy (0..1) to check ours against")
    ap.add_argument("--tolerance", type=float, default=0.1, help="points (default 0.1)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats-b1", type=int, default=300)
    ap.add_argument("--repeats-b64", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--no-speed", action="store_true", help="accuracy only")
    ap.add_argument("--no-accuracy", action="store_true",
                    help="speed only (calibrates and converts, evaluates nothing)")
    ap.add_argument("--data", default=DATA_DIR, help="folder of Fashion-MNIST's IDX .gz files")
    args = ap.parse_args()
    observers = [o for o in args.observer.split(",") if o]
    if not observers or any(o not in OBSERVERS for o in observers):
        ap.error("--observer: one or more of " + ", ".join(OBSERVERS))
    if args.engine not in torch.backends.quantized.supported_engines:
        ap.error("--engine %s: this PyTorch build has %s"
                 % (args.engine, torch.backends.quantized.supported_engines))
    if min(args.threads, args.calib_images, args.calib_batch, args.batch, args.repeats_b1,
           args.repeats_b64) < 1 or args.warmup < 0:
        ap.error("counts must be >= 1 (warmup >= 0)")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.backends.quantized.engine = args.engine

    train_path = os.path.join(args.data, "train-images-idx3-ubyte.gz")
    test_path = os.path.join(args.data, "t10k-images-idx3-ubyte.gz")
    for p in (train_path, test_path):
        if not os.path.exists(p):
            sys.exit("%s: missing (Debian's dataset-fashion-mnist)" % p)
    gen = torch.Generator().manual_seed(0)
    calib, _ = peer_torch.load_images(train_path, args.calib_images, gen)
    x_test, _ = peer_torch.load_images(test_path, 10000, gen)
    y_test = peer_torch.load_labels(test_path, 10000, gen)

    model, arch, meta = load_float_model(args.model)
    t0 = time.perf_counter()
    acc_f = float("nan") if args.no_accuracy else accuracy(model, x_test, y_test)
    res = {"peer": "pytorch", "torch_version": torch.__version__, "engine": args.engine,
           "model": args.model, "arch": arch, "threads": torch.get_num_threads(),
           "float_accuracy": acc_f, "float_eval_seconds": time.perf_counter() - t0,
           "vmc_recorded_accuracy": float(meta.get("accuracy", "nan")),
           "calib_images": args.calib_images, "variants": []}
    if args.expect_accuracy is not None and not args.no_accuracy:
        res["expect_accuracy"] = args.expect_accuracy
        diff = abs(acc_f - args.expect_accuracy) * 100
        res["float_matches"] = diff <= args.tolerance
        if not res["float_matches"]:
            print(json.dumps(res))
            sys.exit("%s: PyTorch's float accuracy %.2f%% differs from vmc's %.2f%% by %.2f "
                     "points: the weights did not load as vmc runs them"
                     % (args.model, acc_f * 100, args.expect_accuracy * 100, diff))

    x1 = x_test[:1].contiguous()
    xb, _ = peer_torch.load_images(test_path, args.batch, gen)
    for obs in observers:
        t0 = time.perf_counter()
        qmodel = quantize(model, calib, obs, args.calib_batch)
        v = {"observer": obs, "weights": "qint8 per-channel symmetric",
             "activations": "quint8 per-tensor affine", "seconds_quantize":
             time.perf_counter() - t0}
        if not args.no_accuracy:
            v["accuracy"] = accuracy(qmodel, x_test, y_test)
            v["drop_points"] = (acc_f - v["accuracy"]) * 100
        if not args.no_speed:
            ms1 = median_ms(qmodel, x1, args.warmup, args.repeats_b1)
            msb = median_ms(qmodel, xb, max(2, args.warmup // 4), args.repeats_b64)
            v.update({"b1_latency_ms_median": ms1, "batch": args.batch,
                      "batch_latency_ms_median": msb,
                      "batch_images_per_sec": args.batch * 1e3 / msb})
        res["variants"].append(v)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
