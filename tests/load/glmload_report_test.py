#!/usr/bin/env python3
"""bench/glmload_report.py over reports glmload wrote (tests/fixtures/glmload: a sweep at 1 and 4
streams and an open loop at 5 requests/s, against the demo model on a CPU). The expected cells are
the fixtures' numbers as read from the JSON, rounded by hand."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REPORT = os.path.join(ROOT, "bench", "glmload_report.py")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "glmload")


def run(*args):
    done = subprocess.run([sys.executable, REPORT, *args], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout


class GlmloadReportTest(unittest.TestCase):
    def test_row_is_the_first_level(self):
        rc, out = run("row", os.path.join(FIXTURES, "sweep_1_4.json"), "cap 64")
        self.assertEqual(rc, 0)
        self.assertEqual(out, "| cap 64 | 353.7 | 4.0 / 6.7 | 2.76 / 3.34 |\n")

    def test_open_row(self):
        rc, out = run("open-row", os.path.join(FIXTURES, "open_rate_5.json"), "5")
        self.assertEqual(rc, 0)
        self.assertEqual(out, "| gRPC open loop, 5 requests/s | 16 / 0 | 64.4 | 59.1 | 3.5 / 5.0 | 1.34 / 3.69 | 0 |\n")

    def test_table_sets_each_level_beside_decode_bench(self):
        with tempfile.TemporaryDirectory() as out:
            os.symlink(os.path.join(FIXTURES, "sweep_1_4.json"), os.path.join(out, "serve_eos_ignored.json"))
            with open(os.path.join(out, "serve_decode_bench.md"), "w") as f:
                f.write("| batch | tok/s |\n|---:|---:|\n| 4 | 1,000 is not a number here |\n| 4 | 800.0 |\n")
            with open(os.path.join(out, "serve_eos.json"), "w") as f:
                f.write("{not json")
            rc, out_text = run("table", out)
        self.assertEqual(rc, 0)
        lines = out_text.splitlines()
        self.assertEqual(len(lines), 5, out_text)
        self.assertEqual(lines[2], "| gRPC, --ignore-eos true | 1 | 353.7 | - | - | 352.0 | - | 4.0 / 6.7 | 2.76 / 3.34 | "
                                   "67 / 0 | - |")
        self.assertEqual(lines[3], "| gRPC, --ignore-eos true | 4 | 731.2 | 800.0 | 91% | 742.0 | 93% | 10.7 / 14.5 | "
                                   "5.07 / 7.32 | 140 / 0 | - |")
        self.assertTrue(lines[4].startswith("| gRPC, --ignore-eos false | - | unreadable "), lines[4])

    def test_table_shows_the_servers_own_split_when_glmload_scraped_it(self):
        # sweep_metrics.json: glmload --metrics-target at 1 and 4 streams (server_window per level).
        with tempfile.TemporaryDirectory() as out:
            os.symlink(os.path.join(FIXTURES, "sweep_metrics.json"), os.path.join(out, "serve_eos.json"))
            rc, out_text = run("table", out)
        self.assertEqual(rc, 0)
        rows = out_text.splitlines()[2:]
        self.assertEqual(len(rows), 2, out_text)
        # conc 1: commit 0.0308 + executor_host 2.7515 + schedule 0.0008 ms; device_wait 0 (a CPU)
        self.assertTrue(rows[0].endswith("| 47 / 0 | 2.783 / 0.000 |"), rows[0])
        self.assertTrue(rows[1].endswith("| 96 / 0 | 5.095 / 0.000 |"), rows[1])

    def test_oom_storm_fails_without_oom_events_or_with_a_lost_request(self):
        with tempfile.TemporaryDirectory() as out:
            metrics = os.path.join(out, "metrics.txt")
            with open(metrics, "w") as f:
                f.write('glmserve_oom_events_total 0\nglmserve_engine_restarts_total{reason="oom"} 2\n')
            report = os.path.join(out, "storm.json")  # the sweep's report as a storm of 256 requests
            with open(os.path.join(FIXTURES, "sweep_1_4.json")) as f:
                storm = json.load(f)
            storm["config"]["requests"] = 256
            with open(report, "w") as f:
                json.dump(storm, f)
            rc, text = run("oom", report, metrics, "0")
        self.assertEqual(rc, 1)  # 67 of 256 answered and no OOM seen
        self.assertIn("| 256 | 67 | 0 | 189 | 0 | 2 | 0 |", text)

    def test_oom_storm_passes_when_every_request_sent_is_ok_and_ooms_seen(self):
        with tempfile.TemporaryDirectory() as out:
            metrics = os.path.join(out, "metrics.txt")
            with open(metrics, "w") as f:
                f.write("glmserve_oom_events_total 5\n")
            report = os.path.join(out, "storm.json")
            with open(os.path.join(FIXTURES, "sweep_1_4.json")) as f:
                storm = json.load(f)
            storm["config"]["requests"] = 67  # the first level's 67 answered, as a storm of 67
            with open(report, "w") as f:
                json.dump(storm, f)
            rc, text = run("oom", report, metrics, "0")
        self.assertEqual(rc, 0, text)
        self.assertIn("| 67 | 67 | 0 | 0 | 5 | 0 | 0 |", text)

    def test_phases_per_step_attempt(self):
        scrape = """# TYPE glmserve_step_phase_seconds_total counter
glmserve_step_phase_seconds_total{phase="commit"} 0.004
glmserve_step_phase_seconds_total{phase="device_wait"} 2.4
glmserve_step_phase_seconds_total{phase="executor_host"} 0.3
glmserve_step_phase_seconds_total{phase="schedule"} 8e-05
glmserve_batch_size_bucket{le="+Inf"} 400
glmserve_batch_size_count 400
glmserve_batch_size_sum 25600
"""
        with tempfile.TemporaryDirectory() as out:
            path = os.path.join(out, "metrics.txt")
            with open(path, "w") as f:
                f.write(scrape)
            rc, text = run("phases", path)
        self.assertEqual(rc, 0)
        # 400 attempts: 0.08 / 300 / 2400 / 4 ms over 400; host = 0.30408 of 2.70408 s
        self.assertEqual(text.splitlines()[2], "| 400 | 0.000 | 0.750 | 6.000 | 0.010 | 11.2% | - | - |")
        # With the GPU's own timing: 2.32 s busy, 0.08 s idle over the same 400 attempts.
        with tempfile.TemporaryDirectory() as out:
            path = os.path.join(out, "metrics.txt")
            with open(path, "w") as f:
                f.write(scrape + 'glmserve_device_seconds_total{state="busy"} 2.32\n'
                        'glmserve_device_seconds_total{state="idle"} 0.08\n')
            rc, text = run("phases", path)
        self.assertEqual(rc, 0)
        self.assertEqual(text.splitlines()[2], "| 400 | 0.000 | 0.750 | 6.000 | 0.010 | 11.2% | 5.800 | 3.3% |")

    def test_usage_errors_exit_2(self):
        self.assertEqual(run("row")[0], 2)
        self.assertEqual(run("nonsense", "x")[0], 2)


if __name__ == "__main__":
    unittest.main()
