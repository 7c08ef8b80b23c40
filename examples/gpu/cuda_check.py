#!/usr/bin/env python3
"""A Batch AI job that checks its GPUs and trains on them, with nothing but Python 3 and the
NVIDIA driver (libcuda through ctypes; no CUDA toolkit, no framework, no download).

1. It sees exactly the GPUs it was given: the CUDA driver enumerates as many devices as
   $AZ_BATCHAI_NUM_GPUS, and their UUIDs are those nvidia-smi lists for the indices in
   $CUDA_VISIBLE_DEVICES (in that order, as CUDA_DEVICE_ORDER=PCI_BUS_ID promises).
2. It runs gradient-descent steps of a linear regression on GPU 0: a PTX kernel (JIT-compiled by
   the driver for whatever GPU this is) computes the gradient sums with atomics, the host updates
   the weights, and the loss must fall by orders of magnitude to the known weights.

Exit status 0 when both hold; the reason otherwise. scripts/gpu-check.sh runs it as a job.
"""

import ctypes
import os
import random
import subprocess
import sys

STEPS = 300
N = 4096
TRUE_W, TRUE_B = 3.0, 2.0
LEARNING_RATE = 0.5

# out[0] += err * x, out[1] += err, out[2] += err * err, with err = w * x + b - y.
PTX = rb"""
.version 6.0
.target sm_50
.address_size 64

.visible .entry grad(
    .param .u64 px,
    .param .u64 py,
    .param .u32 pn,
    .param .f32 pw,
    .param .f32 pb,
    .param .u64 pout)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<10>;

    ld.param.u64 %rd1, [px];
    ld.param.u64 %rd2, [py];
    ld.param.u32 %r1, [pn];
    ld.param.f32 %f1, [pw];
    ld.param.f32 %f2, [pb];
    ld.param.u64 %rd3, [pout];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.u32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd4, %rd1;
    cvta.to.global.u64 %rd5, %rd2;
    cvta.to.global.u64 %rd6, %rd3;
    mul.wide.u32 %rd7, %r5, 4;
    add.u64 %rd4, %rd4, %rd7;
    add.u64 %rd5, %rd5, %rd7;
    ld.global.f32 %f3, [%rd4];
    ld.global.f32 %f4, [%rd5];
    fma.rn.f32 %f5, %f1, %f3, %f2;
    sub.f32 %f6, %f5, %f4;
    mul.f32 %f7, %f6, %f3;
    mul.f32 %f8, %f6, %f6;
    atom.global.add.f32 %f9, [%rd6], %f7;
    atom.global.add.f32 %f9, [%rd6+4], %f6;
    atom.global.add.f32 %f9, [%rd6+8], %f8;
DONE:
    ret;
}
"""


def fail(message):
    print(f"gpu-check: FAILED: {message}", flush=True)
    sys.exit(1)


class Cuda:
    """The few driver API calls needed, each checked."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            fail(f"cannot load the NVIDIA driver's libcuda.so.1: {e}")

    def __call__(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(text))
            fail(f"{name} returned {status} ({(text.value or b'?').decode()})")


def uuid_text(raw):
    h = bytes(raw).hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def smi_uuids():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return {int(i): u.strip() for i, u in (line.split(",") for line in out.strip().splitlines())}


def check_visible(cuda):
    given = int(os.environ.get("AZ_BATCHAI_NUM_GPUS", "-1"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    order = os.environ.get("CUDA_DEVICE_ORDER")
    print(f"AZ_BATCHAI_NUM_GPUS={given} CUDA_VISIBLE_DEVICES={visible} CUDA_DEVICE_ORDER={order}", flush=True)
    if visible is None or order != "PCI_BUS_ID":
        fail("the agent did not set CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER=PCI_BUS_ID")
    indices = [int(i) for i in visible.split(",") if i]
    if len(indices) != given:
        fail(f"{len(indices)} devices visible but AZ_BATCHAI_NUM_GPUS={given}")
    cuda("cuInit", 0)
    count = ctypes.c_int()
    cuda("cuDeviceGetCount", ctypes.byref(count))
    if count.value != given:
        fail(f"CUDA enumerates {count.value} devices, the job was given {given}")
    smi = smi_uuids()
    expected = [smi[i] for i in indices]
    seen = []
    for ordinal in range(count.value):
        device = ctypes.c_int()
        cuda("cuDeviceGet", ctypes.byref(device), ordinal)
        raw = (ctypes.c_ubyte * 16)()
        cuda("cuDeviceGetUuid", raw, device)
        seen.append(uuid_text(raw))
    print(f"CUDA devices: {seen}", flush=True)
    if seen != expected:
        fail(f"CUDA sees {seen}, nvidia-smi says indices {indices} are {expected}")
    print(f"gpu-check: sees exactly its {given} GPU(s)", flush=True)


def train(cuda):
    device = ctypes.c_int()
    cuda("cuDeviceGet", ctypes.byref(device), 0)
    ctx = ctypes.c_void_p()
    cuda("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), device)
    cuda("cuCtxSetCurrent", ctx)
    module = ctypes.c_void_p()
    cuda("cuModuleLoadData", ctypes.byref(module), ctypes.c_char_p(PTX + b"\0"))
    kernel = ctypes.c_void_p()
    cuda("cuModuleGetFunction", ctypes.byref(kernel), module, b"grad")

    rng = random.Random(42)
    xs = [rng.random() for _ in range(N)]
    host_x = (ctypes.c_float * N)(*xs)
    host_y = (ctypes.c_float * N)(*[TRUE_W * x + TRUE_B for x in xs])
    size = ctypes.sizeof(host_x)
    dx, dy, dout = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
    for ptr, nbytes in ((dx, size), (dy, size), (dout, 12)):
        cuda("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(nbytes))
    cuda("cuMemcpyHtoD_v2", dx, host_x, ctypes.c_size_t(size))
    cuda("cuMemcpyHtoD_v2", dy, host_y, ctypes.c_size_t(size))

    w, b = 0.0, 0.0
    out = (ctypes.c_float * 3)()
    threads = 256
    blocks = (N + threads - 1) // threads
    losses = []
    for step in range(STEPS):
        cuda("cuMemsetD32_v2", dout, 0, ctypes.c_size_t(3))
        args = [ctypes.c_uint64(dx.value), ctypes.c_uint64(dy.value), ctypes.c_uint32(N),
                ctypes.c_float(w), ctypes.c_float(b), ctypes.c_uint64(dout.value)]
        params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args])
        cuda("cuLaunchKernel", kernel, blocks, 1, 1, threads, 1, 1, 0, None, params, None)
        cuda("cuCtxSynchronize")
        cuda("cuMemcpyDtoH_v2", out, dout, ctypes.c_size_t(12))
        loss = out[2] / N
        losses.append(loss)
        w -= LEARNING_RATE * 2.0 * out[0] / N
        b -= LEARNING_RATE * 2.0 * out[1] / N
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step:3d}: loss {loss:.6f}  w {w:.4f}  b {b:.4f}", flush=True)
    for ptr in (dx, dy, dout):
        cuda("cuMemFree_v2", ptr)
    if not (losses[-1] < losses[0] / 1000 and abs(w - TRUE_W) < 0.05 and abs(b - TRUE_B) < 0.05):
        fail(f"training did not converge: loss {losses[0]:.4f} -> {losses[-1]:.6f}, w {w:.4f}, b {b:.4f}")
    print(f"gpu-check: {STEPS} training steps on GPU 0, loss {losses[0]:.4f} -> {losses[-1]:.2e}", flush=True)


def main():
    cuda = Cuda()
    check_visible(cuda)
    train(cuda)
    print("gpu-check: OK", flush=True)


if __name__ == "__main__":
    main()
