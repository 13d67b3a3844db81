#!/usr/bin/python3
"""Known answers for the NAB scoring rules in nab.py."""
import math
import os
import sys
import unittest
from datetime import datetime, timedelta

sys.path.insert(0, os.path.dirname(__file__))
from nab import PROFILES, scaled_sigmoid, score_file  # noqa: E402

T0 = datetime(2020, 1, 1)
TIMES = [T0 + timedelta(minutes=5 * i) for i in range(100)]
W = [[str(TIMES[40]), str(TIMES[49])]]  # one window: rows 40..49
STD = PROFILES["standard"]


def det(*rows):
    d = [False] * 100
    for r in rows:
        d[r] = True
    return d


class ScorerTest(unittest.TestCase):
    def test_sigmoid_shape(self):
        self.assertAlmostEqual(scaled_sigmoid(-1.0), 2 / (1 + math.exp(-5)) - 1)  # 0.9866
        self.assertAlmostEqual(scaled_sigmoid(0.0), 0.0)
        self.assertLess(scaled_sigmoid(0.5), 0)
        self.assertEqual(scaled_sigmoid(3.5), -1.0)

    def test_first_detection_in_a_window_counts_once(self):
        start, _ = score_file(TIMES, det(40), W, 15, STD)
        self.assertAlmostEqual(start, scaled_sigmoid(-1.0))
        late, _ = score_file(TIMES, det(48), W, 15, STD)
        self.assertAlmostEqual(late, scaled_sigmoid(-2 / 10))
        both, _ = score_file(TIMES, det(40, 45, 48), W, 15, STD)
        self.assertAlmostEqual(both, start)

    def test_missed_windows_and_false_positives(self):
        self.assertAlmostEqual(score_file(TIMES, det(), W, 15, STD)[0], -1.0)   # fn_weight 1
        self.assertAlmostEqual(score_file(TIMES, det(), W, 15, PROFILES["reward_low_FN_rate"])[0], -2.0)
        early_fp, _ = score_file(TIMES, det(20, 40), W, 15, STD)  # FP before any window: -fp_weight
        self.assertAlmostEqual(early_fp, scaled_sigmoid(-1.0) - 0.11)
        after, _ = score_file(TIMES, det(40, 60), W, 15, STD)     # FP 11 rows after the window
        self.assertAlmostEqual(after, scaled_sigmoid(-1.0) + 0.11 * scaled_sigmoid(11 / 9))
        self.assertLess(after, scaled_sigmoid(-1.0))

    def test_probation_is_not_scored(self):
        self.assertAlmostEqual(score_file(TIMES, det(5, 40), W, 15, STD)[0], scaled_sigmoid(-1.0))


if __name__ == "__main__":
    unittest.main()
