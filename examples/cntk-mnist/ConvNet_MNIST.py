#!/usr/bin/env python3
"""A convolutional network for MNIST with the interface of the Batch AI CNTK quickstart's
`ConvNet_MNIST.py`: it reads `Train-28x28_cntk_text.txt` and `Test-28x28_cntk_text.txt` (CNTK's
text format, see prepare_data.py) from the input directory and writes the trained model into the
model directory, printing loss and error per epoch as it goes.

    python3 ConvNet_MNIST.py INPUT_DIR MODEL_DIR [--epochs N] [--limit N]

It trains with numpy on the CPU, or with PyTorch on a GPU when torch and CUDA are there. With
CONVNET_FAST=1 in the environment (or --fast) it trains one epoch on 2,000 images: a check that
the pipeline works, not a model.

Network: conv 5x5x16 (same) - ReLU - max-pool 2 - conv 5x5x32 (same) - ReLU - max-pool 2 -
dense 128 - ReLU - dense 10 - softmax; Adam, batch 64.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

TRAIN = "Train-28x28_cntk_text.txt"
TEST = "Test-28x28_cntk_text.txt"
MODEL = "ConvNet_MNIST"


def load(path, limit=None):
    """(images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int) from a CNTK text file."""
    images, labels = [], []
    with open(path) as f:
        for line in f:
            if limit is not None and len(labels) >= limit:
                break
            _, label_part, feature_part = line.split("|")
            onehot = label_part.split()[1:]
            labels.append(onehot.index("1"))
            images.append(np.array(feature_part.split()[1:], dtype=np.float32))
    if not labels:
        sys.exit(f"{path} holds no images")
    return np.stack(images).reshape(-1, 1, 28, 28) / 255.0, np.array(labels)


# ----------------------------------------------------------------------------- numpy network

def im2col(x, k, pad):
    """(N, C, H, W) -> (N*H*W, C*k*k): every k x k patch of a stride-1 'same' convolution."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, c, k, k, h, w), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + h, j:j + w]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * h * w, c * k * k)


def col2im(cols, shape, k, pad):
    """The adjoint of im2col: sums each patch's gradient back onto the input."""
    n, c, h, w = shape
    cols = cols.reshape(n, h, w, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i:i + h, j:j + w] += cols[:, :, i, j]
    return xp[:, :, pad:pad + h, pad:pad + w]


class Net:
    def __init__(self, rng):
        def he(fan_in, shape):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.p = {
            "c1": he(25, (25, 16)), "b1": np.zeros(16, np.float32),
            "c2": he(400, (400, 32)), "b2": np.zeros(32, np.float32),
            "f1": he(1568, (1568, 128)), "b3": np.zeros(128, np.float32),
            "f2": he(128, (128, 10)), "b4": np.zeros(10, np.float32),
        }
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t = 0

    @staticmethod
    def conv(x, w, b):
        n, _, h, wd = x.shape
        cols = im2col(x, 5, 2)
        out = (cols @ w + b).reshape(n, h, wd, -1).transpose(0, 3, 1, 2)
        return out, cols

    @staticmethod
    def pool(x):
        n, c, h, w = x.shape
        blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
        out = blocks.max(axis=(3, 5))
        mask = blocks == out[:, :, :, None, :, None]
        return out, mask

    def forward(self, x):
        p = self.p
        a1, cols1 = self.conv(x, p["c1"], p["b1"])
        r1 = np.maximum(a1, 0)
        p1, m1 = self.pool(r1)
        a2, cols2 = self.conv(p1, p["c2"], p["b2"])
        r2 = np.maximum(a2, 0)
        p2, m2 = self.pool(r2)
        flat = p2.reshape(len(x), -1)
        a3 = flat @ p["f1"] + p["b3"]
        r3 = np.maximum(a3, 0)
        logits = r3 @ p["f2"] + p["b4"]
        return logits, (x, cols1, a1, m1, p1, cols2, a2, m2, p2, flat, a3, r3)

    def backward(self, dlogits, cache):
        p = self.p
        x, cols1, a1, m1, p1, cols2, a2, m2, p2, flat, a3, r3 = cache
        g = {"f2": r3.T @ dlogits, "b4": dlogits.sum(0)}
        d3 = (dlogits @ p["f2"].T) * (a3 > 0)
        g["f1"], g["b3"] = flat.T @ d3, d3.sum(0)
        dp2 = (d3 @ p["f1"].T).reshape(p2.shape)
        dr2 = (m2 * dp2[:, :, :, None, :, None]).reshape(a2.shape) * (a2 > 0)
        d2 = dr2.transpose(0, 2, 3, 1).reshape(-1, dr2.shape[1])
        g["c2"], g["b2"] = cols2.T @ d2, d2.sum(0)
        dp1 = col2im(d2 @ p["c2"].T, p1.shape, 5, 2)
        dr1 = (m1 * dp1[:, :, :, None, :, None]).reshape(a1.shape) * (a1 > 0)
        d1 = dr1.transpose(0, 2, 3, 1).reshape(-1, dr1.shape[1])
        g["c1"], g["b1"] = cols1.T @ d1, d1.sum(0)
        return g

    def step(self, g, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for k in self.p:
            self.m[k] = b1 * self.m[k] + (1 - b1) * g[k]
            self.v[k] = b2 * self.v[k] + (1 - b2) * g[k] * g[k]
            mhat = self.m[k] / (1 - b1 ** self.t)
            vhat = self.v[k] / (1 - b2 ** self.t)
            self.p[k] -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)

    def predict(self, x, batch=500):
        return np.concatenate([self.forward(x[i:i + batch])[0].argmax(1) for i in range(0, len(x), batch)])


def train_numpy(train, test, epochs, model_dir):
    rng = np.random.default_rng(1)
    net = Net(rng)
    (x, y), (tx, ty) = train, test
    for epoch in range(1, epochs + 1):
        started = time.monotonic()
        order = rng.permutation(len(x))
        total_loss, wrong = 0.0, 0
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            logits, cache = net.forward(x[idx])
            shifted = logits - logits.max(1, keepdims=True)
            probs = np.exp(shifted)
            probs /= probs.sum(1, keepdims=True)
            total_loss += -np.log(probs[np.arange(len(idx)), y[idx]] + 1e-12).sum()
            wrong += int((logits.argmax(1) != y[idx]).sum())
            dlogits = probs
            dlogits[np.arange(len(idx)), y[idx]] -= 1
            net.step(net.backward(dlogits / len(idx), cache))
        test_error = float((net.predict(tx) != ty).mean())
        print(f"Finished Epoch[{epoch} of {epochs}]: [Training] loss = {total_loss / len(x):.6f} * {len(x)}, "
              f"metric = {100 * wrong / len(x):.2f}% * {len(x)} {time.monotonic() - started:.1f}s; "
              f"[Test] error = {100 * test_error:.2f}% * {len(tx)}", flush=True)
    np.savez(os.path.join(model_dir, f"{MODEL}.npz"), **net.p)
    return test_error


# ----------------------------------------------------------------------------- PyTorch on a GPU

def train_torch(torch, train, test, epochs, model_dir):
    nn = torch.nn
    device = torch.device("cuda")
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.tensor(train[0], device=device), torch.tensor(train[1], device=device)
    tx, ty = torch.tensor(test[0], device=device), torch.tensor(test[1], device=device)
    for epoch in range(1, epochs + 1):
        started = time.monotonic()
        order = torch.randperm(len(x), device=device)
        total_loss, wrong = 0.0, 0
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            logits = net(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            wrong += int((logits.argmax(1) != y[idx]).sum())
        with torch.no_grad():
            test_error = float((net(tx).argmax(1) != ty).float().mean())
        print(f"Finished Epoch[{epoch} of {epochs}]: [Training] loss = {total_loss / len(x):.6f} * {len(x)}, "
              f"metric = {100 * wrong / len(x):.2f}% * {len(x)} {time.monotonic() - started:.1f}s; "
              f"[Test] error = {100 * test_error:.2f}% * {len(tx)}", flush=True)
    torch.save(net.state_dict(), os.path.join(model_dir, f"{MODEL}.pt"))
    return test_error


def cuda_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def main():
    parser = argparse.ArgumentParser(description="Train a ConvNet on MNIST (Batch AI CNTK quickstart interface).")
    parser.add_argument("input_dir")
    parser.add_argument("model_dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--fast", action="store_true", help="one epoch on 2,000 images (also CONVNET_FAST=1)")
    args = parser.parse_args()
    fast = args.fast or os.environ.get("CONVNET_FAST") == "1"
    epochs, limit, test_limit = (1, 2000, 1000) if fast else (args.epochs, args.limit, None)

    os.makedirs(args.model_dir, exist_ok=True)
    started = time.monotonic()
    train = load(os.path.join(args.input_dir, TRAIN), limit)
    test = load(os.path.join(args.input_dir, TEST), test_limit)
    torch = cuda_torch()
    engine = f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}" if torch else f"numpy {np.__version__} on the CPU"
    print(f"Training on {len(train[1])} images, testing on {len(test[1])}, {epochs} epoch(s), {engine}", flush=True)
    if torch:
        error = train_torch(torch, train, test, epochs, args.model_dir)
    else:
        error = train_numpy(train, test, epochs, args.model_dir)
    summary = {"test_accuracy": round(1 - error, 4), "test_images": len(test[1]), "train_images": len(train[1]),
               "epochs": epochs, "seconds": round(time.monotonic() - started, 1), "engine": engine}
    with open(os.path.join(args.model_dir, f"{MODEL}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"Final test accuracy {100 * (1 - error):.2f}%; model written to {args.model_dir}", flush=True)


if __name__ == "__main__":
    main()
