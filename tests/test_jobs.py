"""Background jobs: a quantization runs to the end, cancels, or fails with a message."""

from __future__ import annotations

import threading

import torch

import septq_core as sq
from septq_core.jobs import Job

CFG = sq.QuantConfig(method="septq", bits=3, calib="demo", nsamples=4, seqlen=64)


def test_job_runs_quantization_to_the_end(tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    job = Job("septq").start(sq.quantize_model, lm, CFG)
    assert job.wait(120) == "done"
    assert isinstance(job.result, sq.QuantRun)
    assert job.done == job.total == 2 * sum(len(g) for g in lm.groups)
    assert job.elapsed > 0 and job.eta is None


def test_job_cancel(tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    gate = threading.Event()

    def slow_quantize(*args, progress, cancel, **kwargs):
        def tick(done, total, msg):
            progress(done, total, msg)
            gate.set()
            cancel.wait(5)  # hold until the user presses cancel
        return sq.quantize_model(*args, progress=tick, cancel=cancel, **kwargs)

    job = Job("septq").start(slow_quantize, lm, CFG)
    assert gate.wait(60)
    job.cancel.set()
    assert job.wait(60) == "cancelled"
    assert job.result is None and job.done == 1


def test_job_failure_is_a_message(tiny_model_dir):
    lm = sq.load_model(str(tiny_model_dir("llama")))
    job = Job("bad").start(sq.quantize_model, lm, CFG.replace(calib="missing-file.txt"))
    assert job.wait(60) == "failed"
    assert "missing-file.txt" in job.error and "does not exist" in job.error


def test_two_jobs_at_once_each_equal_a_run_alone(tiny_model_dir):
    """Two browser tabs quantizing the one shared model at the same time."""
    lm = sq.load_model(str(tiny_model_dir("llama")))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    configs = [CFG, CFG.replace(method="gptq", bits=2, seed=1)]
    jobs = [Job(c.label).start(sq.quantize_model, lm, c) for c in configs]
    assert [j.wait(180) for j in jobs] == ["done", "done"]
    for job, cfg in zip(jobs, configs):
        alone = sq.quantize_model(lm, cfg)
        for (name, a), b in zip(alone.model.state_dict().items(), job.result.model.state_dict().values()):
            assert torch.equal(a, b), (cfg.label, name)
        assert all(torch.equal(alone.masks[k], job.result.masks[k]) for k in alone.masks)
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


def test_hooked_pass_does_not_disturb_another_sessions_forward(tiny_model_dir):
    """fp_hessians puts hooks on the shared model; a perplexity run from another thread
    at the same time neither trips them nor feeds them."""
    lm = sq.load_model(str(tiny_model_dir("llama")))
    calib = sq.calibration_windows(lm.tokenizer, "demo", 8, 64, 0)
    H_alone = sq.fp_hessians(lm, calib)
    ppl_alone = sq.perplexity(lm.model, lm.tokenizer, "demo", seqlen=64, max_windows=6).value
    stop, seen, errors = threading.Event(), [], []

    def other_session():
        try:
            while not stop.is_set():
                seen.append(sq.perplexity(lm.model, lm.tokenizer, "demo", seqlen=64, max_windows=6).value)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=other_session)
    thread.start()
    try:
        results = [sq.fp_hessians(lm, calib) for _ in range(3)]
    finally:
        stop.set()
        thread.join(60)
    assert not errors and seen and all(p == ppl_alone for p in seen)
    for H in results:
        assert all(torch.equal(H[k], H_alone[k]) for k in H_alone)
