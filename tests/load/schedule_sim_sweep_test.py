"""bench/schedule_sim_sweep.py against the real schedule_sim (argv[1]): a load whose figures follow by hand,
the table's order and percentages, and a failing run reported with schedule_sim's message."""
import os
import subprocess
import sys
import unittest

SWEEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "schedule_sim_sweep.py")
sys.path.insert(0, os.path.dirname(SWEEP))
import schedule_sim_sweep  # noqa: E402

SIM = None
# Every step 10 ms whatever it holds; one stream of 4-token prompts, 5 tokens each, no client delay: a
# request takes 5 steps (50 ms), so 2 s give 40 requests, 200 tokens, the last at 2.0 s: 100 tok/s.
FLAT = ("--decode-ms 1:10 --prompt-token-us 64:0 --prefill-only-token-us 0 --prompt-len 4 --new-tokens 5 "
        "--client-delay-ms 0 --warmup 0s")


def sweep(*args):
    return subprocess.run([sys.executable, SWEEP, "--sim", SIM, *args], capture_output=True, text=True)


class ScheduleSimSweepTest(unittest.TestCase):
    def test_a_row_is_parsed(self):
        row = schedule_sim_sweep.parse_row("| 64 streams | 6884.0 | 7156.2 | 21.0 / 340.7 | 7.91 / 10.66 | 860 | 1828 |")
        self.assertEqual(row, {"tok_s": 6884.0, "steady_tok_s": 7156.2, "ttft_p99": 340.7, "itl_p50": 7.91,
                               "itl_p99": 10.66})
        with self.assertRaises(ValueError):
            schedule_sim_sweep.parse_row("| load | tok/s |")

    def test_figures_follow_the_steps_averaged_and_the_best_comes_first(self):
        # Over 2.975 s the request sent at 2.95 s finishes at 3.0 s: 300 tokens over 3 s over the level,
        # but only 297 by 2.975 s; over 2 s, 200 in 2 s both ways. Means: 100 and (100 + 297 / 2.975) / 2.
        # Twice the step time halves every rate: that set, given first, must come second. The slower set is
        # a single --flag=value word, so it goes after `--`.
        done = sweep("--decode-bench", "200", "--concurrency", "1", "--durations", "2,2.975", "--sim-args", FLAT,
                     "--", "--decode-ms=1:20", "")
        self.assertEqual(done.returncode, 0, done.stderr)
        rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
        self.assertEqual(len(rows), 2, done.stdout)
        steady = (100 + 297 / 2.975) / 2
        self.assertTrue(rows[0].startswith(f"| defaults | 100.0 (50.0%) | {steady:.1f} ({steady / 2:.1f}%) |"), rows[0])
        self.assertTrue(rows[1].startswith("| --decode-ms=1:20 | 50.0 (25.0%) |"), rows[1])

    def test_the_card_model_and_the_curves_over_it_in_either_order(self):
        def level(*flags):
            done = subprocess.run([SIM, "--concurrency", "64", "--duration", "3s", *flags], capture_output=True,
                                  text=True)
            self.assertEqual(done.returncode, 0, done.stderr)
            return done.stdout.strip().splitlines()[-1]
        self.assertNotEqual(level("--card", "h100"), level("--card", "h200"))
        self.assertEqual(level("--card", "h200"), level())  # the default
        # A curve given beside --card replaces the card's, before or after it.
        curve = ["--decode-ms", "1:7,64:8"]
        self.assertEqual(level("--card", "h100", *curve), level(*curve, "--card", "h100"))
        self.assertNotEqual(level("--card", "h100", *curve), level("--card", "h100"))

    def test_an_unknown_card_is_refused_naming_the_flag(self):
        done = subprocess.run([SIM, "--card", "h300"], capture_output=True, text=True)
        self.assertEqual(done.returncode, 2)
        self.assertIn("--card: 'h300' is not h200|h100", done.stderr)

    def test_open_loop_is_refused(self):
        done = sweep("--decode-bench", "100", "--sim-args=--rates 5", "")
        self.assertEqual(done.returncode, 2)
        self.assertIn("--rates", done.stderr)

    def test_a_failing_run_says_why(self):
        done = sweep("--decode-bench", "100", "--durations", "2", "--no-such-flag 1")
        self.assertEqual(done.returncode, 1)
        self.assertIn("--no-such-flag", done.stderr)
        self.assertEqual(sweep("--decode-bench", "0", "").returncode, 2)


if __name__ == "__main__":
    SIM = sys.argv.pop(1)
    unittest.main()
