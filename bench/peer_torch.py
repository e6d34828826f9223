#!/usr/bin/python3
"""PyTorch side of vmc's benchmarks: the same zoo models (tests/fixtures/torch_zoo.py),
timed the same way, so bench/ can print vmc's speed as a ratio to this peer.

    /usr/bin/python3 bench/peer_torch.py --task train --model resnet8 --threads 4 \
        --batch 128 --images 2048
    /usr/bin/python3 bench/peer_torch.py --task infer --model resnet8 --batch 1 \
        --threads 1 --repeats 200

Prints one JSON object on stdout:
  train: images_per_sec over --images training images (forward, cross-entropy,
         backward, SGD step with momentum 0.9 nesterov and weight decay 5e-4),
         after one untimed warm-up step; also seconds and the last loss.
  infer: latency_ms_median (and p10/p90) of one forward of --batch images in eval
         mode under torch.no_grad(), over --repeats timed runs after --warmup
         untimed ones; images_per_sec = batch / median latency.
Images are Fashion-MNIST (--data, IDX .gz, normalised with mean 0.2860, std 0.3530)
when the file is there, random N(0,1) otherwise; "data" in the JSON says which.
"""
import argparse
import gzip
import json
import os
import statistics
import struct
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "fixtures"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_zoo  # noqa: E402

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
MEAN, STD = 0.2860, 0.3530


def load_images(path, n, gen):
    """(images (n,1,28,28) float32 normalised, source name).  Repeats the
    dataset when n exceeds it; random data when the file is missing."""
    if path and os.path.exists(path):
        with gzip.open(path, "rb") as f:
            raw = f.read()
        magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
        if magic != 0x803:
            sys.exit("%s: not an IDX image file (magic %#x)" % (path, magic))
        data = torch.frombuffer(bytearray(raw[16:16 + count * rows * cols]), dtype=torch.uint8)
        data = data.view(count, 1, rows, cols)
        idx = torch.arange(n) % count
        x = (data[idx].float() / 255.0 - MEAN) / STD
        return x.contiguous(), os.path.basename(path)
    return torch.randn(n, 1, 28, 28, generator=gen), "random"


def load_labels(images_path, n, gen):
    """The IDX labels beside the images (train-labels-idx1-ubyte.gz), repeated
    like the images; random labels when there are none."""
    path = (images_path or "").replace("images-idx3", "labels-idx1")
    if path and path != images_path and os.path.exists(path):
        with gzip.open(path, "rb") as f:
            raw = f.read()
        magic, count = struct.unpack(">II", raw[:8])
        if magic == 0x801 and count > 0:
            lab = torch.frombuffer(bytearray(raw[8:8 + count]), dtype=torch.uint8).long()
            return lab[torch.arange(n) % count]
    return torch.randint(0, 10, (n,), generator=gen)


def bench_train(args, model, gen):
    x, src = load_images(args.data, args.images, gen)
    labels = load_labels(args.data if src != "random" else "", args.images, gen)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    model.train()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    step(x[:args.batch], labels[:args.batch])  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    loss = float("nan")
    for i in range(0, args.images, args.batch):
        loss = step(x[i:i + args.batch], labels[i:i + args.batch])
    secs = time.perf_counter() - t0
    return {"task": "train", "images": args.images, "seconds": secs,
            "images_per_sec": args.images / secs, "last_loss": loss, "data": src}


def bench_infer(args, model, gen):
    x, src = load_images(args.data, args.batch, gen)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(x)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    med = statistics.median(times)
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]  # noqa: E731
    return {"task": "infer", "repeats": args.repeats, "latency_ms_median": med * 1e3,
            "latency_ms_p10": q(0.1) * 1e3, "latency_ms_p90": q(0.9) * 1e3,
            "images_per_sec": args.batch / med, "data": src}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("train", "infer"), required=True)
    ap.add_argument("--model", default="resnet8", choices=torch_zoo.NAMES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=2048, help="train: images to train over")
    ap.add_argument("--repeats", type=int, default=50, help="infer: timed runs")
    ap.add_argument("--warmup", type=int, default=5, help="infer: untimed runs first")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="Fashion-MNIST train-images IDX .gz ('' or missing: random)")
    args = ap.parse_args()
    if args.threads < 1 or args.batch < 1 or args.images < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("threads, batch, images and repeats must be >= 1, warmup >= 0")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = torch_zoo.build(args.model, 1, 28, 28, 10)
    res = bench_train(args, model, gen) if args.task == "train" else bench_infer(args, model, gen)
    res.update({"peer": "pytorch", "torch_version": torch.__version__, "model": args.model,
                "threads": torch.get_num_threads(), "batch": args.batch})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
