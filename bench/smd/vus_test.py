"""Known-answer tests for vus.py; every expected value is worked out by hand
in the comments from the definition in vus.py's docstring (TSB-AD
RangeAUC_volume_opt / find_length_rank).

Run: /usr/bin/python3 bench/smd/vus_test.py
"""

import os
import sys
import unittest
from math import sqrt

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vus  # noqa: E402

R = sqrt(0.5)  # buffer weight at distance 1 for window 2: sqrt(1 - 1/2)

# The running example: 12 points, one anomaly segment [5, 6] (P = 2).
LABELS12 = np.zeros(12, int)
LABELS12[5:7] = 1


class BufferedLabels(unittest.TestCase):
    def test_window_0_and_1_add_nothing(self):
        # h = w // 2 = 0 for w = 0 and w = 1.
        for w in (0, 1):
            np.testing.assert_array_equal(vus.buffered_labels(LABELS12, w), LABELS12)

    def test_window_2_3_4(self):
        # w=2: h=1, points 4 and 7 get sqrt(1 - 1/2).
        # w=3: h=1, points 4 and 7 get sqrt(1 - 1/3).
        # w=4: h=2, points 4, 7 get sqrt(1 - 1/4); points 3, 8 get sqrt(1 - 2/4).
        expect = {2: {4: R, 7: R},
                  3: {4: sqrt(2 / 3), 7: sqrt(2 / 3)},
                  4: {4: sqrt(.75), 7: sqrt(.75), 3: R, 8: R}}
        for w, buf in expect.items():
            want = LABELS12.astype(float)
            for i, v in buf.items():
                want[i] = v
            np.testing.assert_allclose(vus.buffered_labels(LABELS12, w), want, rtol=0, atol=1e-12)

    def test_clipped_at_series_edge(self):
        # anomaly at 0, n=5, w=4: right side 1 -> sqrt(.75), 2 -> sqrt(.5); no left side.
        got = vus.buffered_labels([1, 0, 0, 0, 0], 4)
        np.testing.assert_allclose(got, [1, sqrt(.75), R, 0, 0], atol=1e-12)

    def test_overlapping_buffers_add_then_clip_to_1(self):
        # anomalies at 2 and 5, n=8, w=4 (h=2): point 3 gets sqrt(.75) from
        # the left segment + sqrt(.5) from the right one = 1.57 -> 1; same for 4.
        lab = [0, 0, 1, 0, 0, 1, 0, 0]
        got = vus.buffered_labels(lab, 4)
        np.testing.assert_allclose(got, [R, sqrt(.75), 1, 1, 1, 1, sqrt(.75), R], atol=1e-12)

    def test_merged_extents(self):
        # segments [2,2] and [5,5], n=8.  w=2 (h=1): widened [1,3] and [4,6];
        # 3 < 4 so they stay separate (adjacent is not merged).  w=4 (h=2):
        # [0,4] and [3,7] overlap -> one extent [0,7].
        s, e = np.array([2, 5]), np.array([2, 5])
        self.assertEqual([list(x) for x in vus._merged_extents(s, e, 2, 8)], [[1, 4], [3, 6]])
        self.assertEqual([list(x) for x in vus._merged_extents(s, e, 4, 8)], [[0], [7]])
        # segments [2,2] and [4,4], w=2: widened [1,3] and [3,5] share point 3
        # (3 < 3 is false) -> merged [1,5].
        s, e = np.array([2, 4]), np.array([2, 4])
        self.assertEqual([list(x) for x in vus._merged_extents(s, e, 2, 8)], [[1], [5]])


class Thresholds(unittest.TestCase):
    def test_indices(self):
        # n=1000: floor(k * 999/249): k=1 -> 4.01 -> 4, k=2 -> 8, k=3 -> 12,
        # k=124 -> 497.49 -> 497, k=249 -> 999 exactly.
        idx = vus.threshold_indices(1000)
        self.assertEqual(len(idx), 250)
        self.assertEqual(list(idx[:4]), [0, 4, 8, 12])
        self.assertEqual(idx[124], 497)
        self.assertEqual(idx[-1], 999)
        # n=5: floor(k * 4/249) is 0 for k <= 62 (62*4/249 = 0.996), so 63 zeros.
        self.assertEqual(int(np.sum(vus.threshold_indices(5) == 0)), 63)

    def test_only_250_thresholds_are_visited(self):
        # n=499, score decreasing with position, single anomaly at position 1.
        # linspace(0, 498, 250) = 0, 2, 4, ...: the predicted sets are
        # {0}, {0,1,2}, {0..4}, ...  Window 0:
        #   {0}:     TP=0 -> TPR 0, precision 0
        #   {0,1,2}: TPR 1, precision 1/3   -> AP = 1 * 1/3.
        # (All thresholds would visit {0,1} with precision 1/2 and give 1/2.)
        lab = np.zeros(499, int)
        lab[1] = 1
        score = np.arange(499)[::-1].astype(float)
        self.assertAlmostEqual(vus.vus_pr(lab, score, 0), 1 / 3, places=12)


class RangeCurveAtOneThreshold(unittest.TestCase):
    # score is 1 at {4, 5, 9}, 0 elsewhere; n=12 so the first thresholds are 1
    # (predicted {4,5,9}) and the last one is 0 (everything predicted).
    score = np.zeros(12)
    score[[4, 5, 9]] = 1

    def test_window_2(self):
        # weights: 1 at 5,6; R at 4,7.  At threshold 1, pred = {4, 5, 9}:
        #   TP = 1 (pt 5) + R (pt 4) = 1.70711;  buffer credit B = R
        #   P_new = P + B/2 = 2 + R/2 = 2.35355
        #   recall = TP / P_new = 0.72533; extent [4,7] holds pt 4 -> existence 1
        #   TPR = 0.72533;  precision = TP / 3 = 0.56904
        #   FPR = (3 - TP) / (12 - P_new) = 1.29289 / 9.64645 = 0.13403
        tpr, fpr, prec, thr = vus.range_curves(LABELS12, self.score, 2)
        self.assertEqual(thr[0], 1.0)
        tp, p_new = 1 + R, 2 + R / 2
        self.assertAlmostEqual(tpr[0], tp / p_new, places=12)          # 0.72533
        self.assertAlmostEqual(prec[0], tp / 3, places=12)             # 0.56904
        self.assertAlmostEqual(fpr[0], (3 - tp) / (12 - p_new), places=12)  # 0.13403
        # Last threshold, everything predicted: TP = 2 + 2R = 3.41421,
        # P_new = 2 + R, recall = min(3.41421 / 2.70711, 1) = 1 -> TPR 1;
        # precision = 3.41421/12 = 0.28452; FPR = 8.58579/9.29289 = 0.92391.
        self.assertAlmostEqual(tpr[-1], 1.0, places=12)
        self.assertAlmostEqual(prec[-1], (2 + 2 * R) / 12, places=12)
        self.assertAlmostEqual(fpr[-1], (10 - 2 * R) / (10 - R), places=12)

    def test_window_0(self):
        # threshold 1: TP = 1, P_new = 2, recall .5, existence 1 -> TPR .5;
        # precision 1/3; FPR = 2 / 10 = .2
        tpr, fpr, prec, _ = vus.range_curves(LABELS12, self.score, 0)
        self.assertAlmostEqual(tpr[0], 0.5, places=12)
        self.assertAlmostEqual(prec[0], 1 / 3, places=12)
        self.assertAlmostEqual(fpr[0], 0.2, places=12)

    def test_vus_pr_and_roc(self):
        # AP telescopes to TPR_1 * prec_1 + (1 - TPR_1) * prec_last.
        # w=0 and w=1: .5 * 1/3 + .5 * 2/12 = 0.25
        # w=2: 0.72533 * 0.56904 + 0.27467 * 0.28452 = 0.49089
        # VUS-PR(sliding_window=2) = (0.25 + 0.25 + 0.49089) / 3 = 0.33030
        t1 = (1 + R) / (2 + R / 2)
        ap2 = t1 * (1 + R) / 3 + (1 - t1) * (2 + 2 * R) / 12
        self.assertAlmostEqual(vus.vus_pr(LABELS12, self.score, 0), 0.25, places=12)
        self.assertAlmostEqual(vus.vus_pr(LABELS12, self.score, 2), (0.5 + ap2) / 3, places=12)
        # ROC, w=0: (0,0) -> (.2,.5) -> (1,1) -> (1,1): .2*.25 + .8*.75 = 0.65
        self.assertAlmostEqual(vus.vus_roc(LABELS12, self.score, 0), 0.65, places=12)


class WindowZero(unittest.TestCase):
    def test_single_segment_equals_plain_average_precision(self):
        # One segment [3,5]: existence is 1 from the first hit on, so TPR is
        # plain recall and (n <= 250: every score is a threshold) VUS-PR with
        # window 0 is ordinary step AP.  Ranking: .9 (A), .8 (A), .7 (N), .4 (A):
        # AP = 1/3*1 + 1/3*1 + 1/3*3/4 = 11/12.  w=1 adds nothing.
        lab = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
        score = [.1, .2, .3, .9, .4, .8, .7, .0, .05, .15]
        self.assertAlmostEqual(vus.vus_pr(lab, score, 0), 11 / 12, places=12)
        self.assertAlmostEqual(vus.vus_pr(lab, score, 1), 11 / 12, places=12)

    def test_point_anomalies_are_not_plain_average_precision(self):
        # Anomalies at 2 and 7 (two one-point segments); ranking p2, p0, p7.
        # TPR = recall * existence = recall^2 here:
        #   {2}:     TPR 1/2 * 1/2 = 1/4, precision 1
        #   {2,0}:   TPR 1/4,             precision 1/2
        #   {2,0,7}: TPR 1,               precision 2/3
        # VUS-PR = 1/4 * 1 + 3/4 * 2/3 = 0.75   (plain AP would be 5/6).
        lab = [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
        score = [.8, .1, .9, .2, .3, .4, .5, .7, .05, .15]
        self.assertAlmostEqual(vus.vus_pr(lab, score, 0), 0.75, places=12)


class ExtremeScores(unittest.TestCase):
    two_segments = np.array([0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])

    def test_perfect_score_is_1(self):
        # First threshold predicts exactly the anomalies: TP = P, B = 0,
        # recall 1, all extents hit -> TPR 1 with precision 1, for every window.
        for sw in (0, 3, 10):
            self.assertAlmostEqual(vus.vus_pr(self.two_segments, self.two_segments, sw), 1.0, places=12)
        graded = np.where(self.two_segments == 1, 5.0, np.linspace(0, 1, 15))
        self.assertAlmostEqual(vus.vus_pr(self.two_segments, graded, 6), 1.0, places=12)

    def test_constant_score(self):
        # Every threshold predicts everything: TPR 1, AP_w = (P + sum of buffer
        # weights) / n.  Running example: w=0,1: 2/12; w=2: (2 + 2R)/12 = 0.28452.
        # VUS-PR(2) = (2/12 + 2/12 + 0.28452) / 3 = 0.20595.
        const = np.full(12, 0.3)
        self.assertAlmostEqual(vus.vus_pr(LABELS12, const, 0), 2 / 12, places=12)
        self.assertAlmostEqual(vus.vus_pr(LABELS12, const, 2), (4 / 12 + (2 + 2 * R) / 12) / 3, places=12)
        # VUS-ROC: w=0,1: (0,0)->(1,1): 0.5.  w=2: FPR = (12 - TP)/(12 - P_new)
        # = 0.92391 < 1, so (0,0)->(.92391,1)->(1,1) = .92391/2 + .07609 = 0.53805.
        f = (10 - 2 * R) / (10 - R)
        self.assertAlmostEqual(vus.vus_roc(LABELS12, const, 2), (1 + f / 2 + (1 - f)) / 3, places=12)

    def test_reversed_score(self):
        # Anomalies score lowest.  w=0: the first threshold predicts the 10
        # normals (TP 0 -> TPR 0), then everything: AP = 1 * 2/12 = 1/6.
        # w=2: first threshold catches buffer pts 4, 7: TP = 2R, P_new = 2 + R,
        # TPR = 2R/(2+R) = 0.52241 (extent [4,7] is hit), precision 2R/10;
        # then everything: AP_2 = .52241*.14142 + .47759*.28452 = 0.20976.
        # VUS-PR(2) = (1/6 + 1/6 + 0.20976) / 3 = 0.18103.
        rev = 1.0 - LABELS12
        self.assertAlmostEqual(vus.vus_pr(LABELS12, rev, 0), 1 / 6, places=12)
        t1 = 2 * R / (2 + R)
        ap2 = t1 * 2 * R / 10 + (1 - t1) * (2 + 2 * R) / 12
        self.assertAlmostEqual(vus.vus_pr(LABELS12, rev, 2), (2 / 6 + ap2) / 3, places=12)

    def test_monotone_transform_invariant(self):
        rng = np.random.default_rng(0)
        score = rng.random(300)
        lab = (np.arange(300) % 50 < 4).astype(int)
        self.assertAlmostEqual(vus.vus_pr(lab, score, 7), vus.vus_pr(lab, np.exp(3 * score) - 9, 7), places=12)


class Inputs(unittest.TestCase):
    def test_rejects_bad_input(self):
        with self.assertRaises(ValueError):
            vus.vus_pr([0, 0, 0], [1, 2, 3], 1)  # no anomaly
        with self.assertRaises(ValueError):
            vus.vus_pr([0, 1, 0], [1, 2], 1)  # length mismatch
        with self.assertRaises(ValueError):
            vus.vus_pr([0, 1, 0], [1, np.nan, 3], 1)

    def test_24k_points_is_fast(self):
        import time
        rng = np.random.default_rng(1)
        lab = np.zeros(24000, int)
        for s in rng.choice(23000, 25, replace=False):
            lab[s:s + 60] = 1
        t = time.time()
        vus.vus_pr(lab, rng.random(24000) + lab, 125)
        self.assertLess(time.time() - t, 5.0)


class FindLengthRank(unittest.TestCase):
    @staticmethod
    def sine(period, n=3000):
        return np.sin(2 * np.pi * np.arange(n) / period)

    def test_sine_period(self):
        # Unadjusted ACF of a sine ~ (1 - k/n) cos(2 pi k / p): its highest
        # local maximum over lags >= 3 is lag p, which is returned.
        for p in (24, 50, 100):
            self.assertEqual(vus.find_length_rank(self.sine(p)), p)
        # rank 2: the next-highest peak at a longer lag: 2p.
        self.assertEqual(vus.find_length_rank(self.sine(50), rank=2), 100)
        self.assertEqual(vus.find_length_rank(self.sine(50), rank=0), 1)

    def test_fallbacks(self):
        # peak at lag p sits at index p - 3 of acf[3:]; index < 3 or > 300 -> 125.
        self.assertEqual(vus.find_length_rank(self.sine(6)), 6)       # index 3: kept
        self.assertEqual(vus.find_length_rank(self.sine(5)), 125)     # index 2
        self.assertEqual(vus.find_length_rank(self.sine(350, 5000)), 125)  # index 347
        self.assertEqual(vus.find_length_rank(np.ones(500)), 125)     # no ACF

    def test_first_column_and_first_20000_points(self):
        two_channels = np.column_stack([self.sine(30), self.sine(80)])
        self.assertEqual(vus.find_length_rank(two_channels), 30)
        # Only the first 20,000 points count: period 40 there, period 70 after.
        x = np.concatenate([self.sine(40, 20000), self.sine(70, 60000)])
        self.assertEqual(vus.find_length_rank(x), 40)
        self.assertEqual(vus.find_length_rank(x[20000:]), 70)


if __name__ == "__main__":
    unittest.main(verbosity=2)
