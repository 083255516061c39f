"""LRU's diagonal linear recurrence x_t = lambda x_{t-1} + b_t, forward + backward, three ways:
the step loop, a log2(T)-step Hillis-Steele scan, and the cell's chunked scan.

    python scripts/bench_lru_scan.py [B] [T] [N] [threads]
"""

from __future__ import annotations

import sys
import time

import torch

from bpttlab.cells.lru import chunked_scan


def step_loop(log_lambda, b, x0):
    lam, x, states = torch.exp(log_lambda), x0, []
    for b_t in b.unbind(1):
        x = lam * x + b_t
        states.append(x)
    return torch.stack(states, 1)


def hillis_steele(log_lambda, b, x0):
    """After the pass with shift s, b_t holds sum over the last 2s inputs of lambda^(t-i) b_i."""
    b = torch.cat([b[:, :1] + torch.exp(log_lambda) * x0[:, None], b[:, 1:]], 1)
    shift = 1
    while shift < b.shape[1]:
        b = torch.cat(
            [b[:, :shift], b[:, shift:] + torch.exp(shift * log_lambda) * b[:, :-shift]], 1
        )
        shift *= 2
    return b


def main(batch=64, steps=1000, n=128, threads=2):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nu_log = torch.log(-torch.log(torch.empty(n).uniform_(0.9, 0.999))).requires_grad_()
    theta_log = torch.log(torch.empty(n).uniform_(0, 6.28)).requires_grad_()
    b = torch.randn(batch, steps, n, dtype=torch.complex64, requires_grad=True)
    x0 = torch.randn(batch, n, dtype=torch.complex64)
    log_lambda = lambda: torch.complex(-torch.exp(nu_log), torch.exp(theta_log))  # noqa: E731
    reference = step_loop(log_lambda().cdouble(), b.detach().cdouble(), x0.cdouble())
    scans = {"step loop": step_loop, "hillis-steele": hillis_steele, "chunked": chunked_scan}
    times = {name: [] for name in scans}
    for _ in range(5):  # interleaved, best of 5: the machine may be shared
        for name, scan in scans.items():
            start = time.perf_counter()
            states = scan(log_lambda(), b, x0)
            torch.view_as_real(states).sum().backward()
            times[name].append(time.perf_counter() - start)
    for name, scan in scans.items():
        error = (scan(log_lambda(), b, x0).detach().cdouble() - reference).abs().max()
        print(
            f"B={batch} T={steps} N={n} float32 fwd+bwd {name:14s} {1000 * min(times[name]):7.0f} ms "
            f"(best of 5)  max error vs float64 loop {error / reference.abs().max():.1e} of the "
            "largest state"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
