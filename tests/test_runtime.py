"""One GPU each for experiments run at once (photoid.runtime.claim_gpu, PHOTOID_GPU=claim): processes
claim distinct GPUs, one more waits for a GPU to be freed, and a killed process frees its GPU; and
which forward passes run in bf16 (photoid.runtime.autocast)."""

from __future__ import annotations

import subprocess
import sys
import time

from photoid import runtime

CLAIM = ("import sys, time\n"
         "from photoid.runtime import claim_gpu\n"
         "print('claimed', claim_gpu(2, sys.argv[1], wait_s=float(sys.argv[2]), poll_s=0.1), flush=True)\n"
         "time.sleep(float(sys.argv[3]))\n")


def _claim(lock_dir, wait_s: float, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(lock_dir), str(wait_s), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _claimed(proc: subprocess.Popen) -> int:
    for line in proc.stdout:
        if line.startswith("claimed"):
            return int(line.split()[1])
    raise AssertionError(f"no GPU claimed (exit {proc.wait()})")


def test_processes_claim_distinct_gpus_and_one_more_waits_for_a_freed_one(tmp_path):
    first, second = _claim(tmp_path, 5, 60), _claim(tmp_path, 5, 2)
    try:
        assert {_claimed(first), _claimed(second)} == {0, 1}
        t0 = time.monotonic()
        third = _claim(tmp_path, 60, 0)
        out, _ = third.communicate(timeout=60)
        assert "waiting for a free GPU: all 2 are claimed" in out
        assert out.strip().endswith("claimed 1") or out.strip().endswith("claimed 0")
        assert time.monotonic() - t0 > 0.5  # it got the GPU the second process held, once that one ended
    finally:
        first.kill()
        second.kill()


def test_a_killed_process_frees_its_gpu_and_a_claim_that_waits_too_long_says_why(tmp_path):
    holders = [_claim(tmp_path, 5, 60) for _ in range(2)]
    try:
        assert sorted(_claimed(h) for h in holders) == [0, 1]
        late = _claim(tmp_path, 0.3, 0)
        out, _ = late.communicate(timeout=60)
        assert late.returncode != 0 and "all 2 GPUs are claimed by other photoid processes" in out
        holders[0].kill()  # kill -9: the system drops its lock
        holders[0].wait()
        again = _claim(tmp_path, 5, 0)
        assert _claimed(again) in (0, 1)
        again.wait(timeout=60)
    finally:
        for h in holders:
            h.kill()


def _matmul_dtype(device_type: str = "cpu", training: bool = False):
    import torch

    a = torch.ones(4, 4)
    with runtime.autocast(torch.device(device_type), training):
        return (a @ a).dtype


def test_embedding_on_the_cpu_runs_in_bf16_only_where_the_cpu_computes_it_natively_and_training_never(monkeypatch):
    import torch

    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    for amx, avx512_bf16, expected in [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                       (False, False, torch.float32)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert _matmul_dtype() == expected
        assert _matmul_dtype(training=True) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")  # the user's way back to float32
    assert _matmul_dtype() == torch.float32
