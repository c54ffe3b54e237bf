"""cramming_simple/sweep/launch.py: the local launcher."""

from __future__ import annotations


def test_the_local_launcher_runs_jobs_in_order_and_skips_what_depends_on_a_failure(tmp_path, caplog):
    from cramming_simple.sweep.launch import run_local
    from cramming_simple.sweep.plan import Job

    ran = []

    class Fake(Job):
        def __call__(self, log=None):
            ran.append(self.name)
            if self.name == "b-smoke-s0":
                raise RuntimeError("b-smoke-s0: `cramming-simple pretrain ...` exited with 3")
            return 0

    jobs = [
        Fake("pretrain", "a-smoke-s0", [], tmp_path),
        Fake("pretrain", "b-smoke-s0", [], tmp_path),
        Fake("glue", "a-smoke-s0/rte", [], tmp_path, ["a-smoke-s0"]),
        Fake("glue", "b-smoke-s0/rte", [], tmp_path, ["b-smoke-s0"]),
        Fake("report", "report", [], tmp_path, ["a-smoke-s0", "b-smoke-s0", "a-smoke-s0/rte", "b-smoke-s0/rte"]),
    ]
    assert run_local(jobs) == 1
    assert ran == ["a-smoke-s0", "b-smoke-s0", "a-smoke-s0/rte", "report"]  # the report shows what is missing
    assert "b-smoke-s0/rte: not run, it depends on b-smoke-s0" in caplog.text and "exited with 3" in caplog.text
