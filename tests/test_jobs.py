"""Background jobs: a quantization runs to the end, cancels, or fails with a message."""

from __future__ import annotations

import threading

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
