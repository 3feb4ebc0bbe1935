"""Each Table-1 metric against a hand computation or an independent implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from progemu.evaluate.baselines import TfidfRetriever
from progemu.evaluate.classification import label_matrix, macro_scores, per_label_scores, pooled_scores
from progemu.evaluate.clip_score import clip_i, cosine_rows
from progemu.evaluate.fid import fid_from_features, frechet_distance, gaussian_statistics
from progemu.evaluate.fidelity import classifier_fidelity
from progemu.evaluate.text_metrics import TextScorer, normalize_text


# ---- FID --------------------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # commuting (diagonal) covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (s1 - s2)^2 on the std devs
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(5.0 + 1 + 1 + 4)


def test_frechet_distance_of_full_covariances_matches_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    s1, s2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    # independent route: tr((S1 S2)^1/2) = sum of sqrt of eigenvalues of S1^1/2 S2 S1^1/2
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    trace_root = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_samples_converges_to_the_gaussians_distance():
    rng = np.random.default_rng(1)
    x = rng.normal([0, 0], [1, 2], size=(100_000, 2))
    y = rng.normal([3, 0], [2, 2], size=(100_000, 2))
    assert fid_from_features(x, y) == pytest.approx(9.0 + 1.0, rel=0.02)
    mu, sigma = gaussian_statistics(x)
    assert sigma.shape == (2, 2) and mu == pytest.approx([0, 0], abs=0.02)


def test_fid_agrees_with_torchmetrics_implementation():
    import torch
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 8)), rng.standard_normal((60, 8)) * 1.5 + 0.5
    (mu1, s1), (mu2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    reference = float(_compute_fid(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2)))
    assert fid_from_features(x, y) == pytest.approx(reference, rel=1e-6)


def test_trace_of_sqrtm_route_gives_the_same_fid():
    from scipy import linalg

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((20, 30)), rng.standard_normal((25, 30)) + 0.2  # N < D: singular covariances
    (mu1, s1), (mu2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    root = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-6)


def test_fid_rejects_too_few_samples():
    with pytest.raises(ValueError, match="N >= 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))


# ---- AUROC / F1 -------------------------------------------------------------------------------
def test_auroc_f1_against_hand_computed_values_and_one_class_label_is_skipped():
    names = ("A", "B", "C")
    labels = [{"A": 1.0, "B": 1.0, "C": -1.0}, {"A": 0.0, "B": 1.0, "C": 1.0}, {"A": 1.0, "B": None, "C": 0.0},
              {"A": 0.0, "B": 1.0, "C": -100}]
    targets = label_matrix(labels, names)
    assert np.isnan(targets[0, 2]) and np.isnan(targets[2, 1]) and np.isnan(targets[3, 2])  # uncertain/missing out
    scores = np.array([[0.9, 0.8, 0.1], [0.6, 0.3, 0.7], [0.4, 0.5, 0.2], [0.2, 0.9, 0.5]])
    per = per_label_scores(scores, targets, names)
    # A: positives {0.9, 0.4}, negatives {0.6, 0.2}: pairs won 0.9>0.6, 0.9>0.2, 0.4>0.2, lost 0.4<0.6 -> 3/4
    assert per["A"]["AUROC"] == pytest.approx(0.75)
    # A at 0.5: predicted positive {0.9, 0.6}: TP 1, FP 1, FN 1 -> F1 = 2/(2+1+1) = 0.5
    assert per["A"]["F1"] == pytest.approx(0.5)
    assert per["B"]["AUROC"] is None and per["B"]["n"] == 3 and per["B"]["positives"] == 3  # one class: skipped
    # C: kept rows 1 (pos, 0.7) and 2 (neg, 0.2) -> AUROC 1, F1 1
    assert per["C"]["AUROC"] == pytest.approx(1.0) and per["C"]["F1"] == pytest.approx(1.0)
    macro = macro_scores(per)
    assert macro == {"AUROC": pytest.approx(0.875), "F1": pytest.approx(0.75), "labels": 2}


def test_auroc_ties_count_half_and_all_skipped_gives_none():
    per = per_label_scores(np.array([[0.5], [0.5], [0.1]]), np.array([[1.0], [0.0], [0.0]]), ("A",))
    assert per["A"]["AUROC"] == pytest.approx((0.5 + 1.0) / 2)
    assert macro_scores(per_label_scores(np.ones((2, 1)), np.ones((2, 1)), ("A",)))["AUROC"] is None


def test_pooled_scores_with_mask():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    targets = np.array([[1.0, 0.0], [0.0, 0.0]])
    mask = np.array([[True, False], [True, True]])
    pooled = pooled_scores(scores, targets, mask)
    # kept: (0.9, 1), (0.2, 0), (0.8, 0): AUROC 1; at 0.5: TP 1, FP 1 -> F1 2/3
    assert pooled["n"] == 3 and pooled["AUROC"] == pytest.approx(1.0) and pooled["F1"] == pytest.approx(2 / 3)


def test_classifier_fidelity_counts_direction_of_true_changes():
    prior_t = np.array([[0.0, 1.0], [1.0, np.nan]])
    follow_t = np.array([[1.0, 1.0], [0.0, 1.0]])
    prior_p = np.array([[0.2, 0.9], [0.8, 0.1]])
    cf_p = np.array([[0.7, 0.9], [0.85, 0.9]])  # first change right (up), second wrong (went up, should go down)
    assert classifier_fidelity(prior_p, cf_p, prior_t, follow_t) == {"score": 0.5, "n": 2}
    assert classifier_fidelity(prior_p, prior_p, prior_t, follow_t)["score"] == 0.0  # copy-prior moves nothing


# ---- CLIP-I -----------------------------------------------------------------------------------
def test_clip_i_is_100_times_mean_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-1.0, 1.0]])
    assert cosine_rows(a, b) == pytest.approx([1.0, 0.0])
    assert clip_i(a, b) == pytest.approx(50.0)
    assert clip_i(np.zeros((0, 2)), np.zeros((0, 2))) is None


# ---- text -------------------------------------------------------------------------------------
def test_normalize_text_lowercases_and_drops_punctuation():
    assert normalize_text("Mild effusion, (left) base.  New!") == "mild effusion left base new"
    assert normalize_text("") == ""


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


CANDIDATES = ["there is a new small left pleural effusion", "the heart size is mildly enlarged today",
              "no pneumothorax is seen in the right apex"]
REFERENCES = ["a small left pleural effusion is new", "the heart size is enlarged compared with prior",
              "there is no right apical pneumothorax"]


@pytest.fixture(scope="module")
def scorer():
    with TextScorer(meteor=True) as text_scorer:
        yield text_scorer


def test_bleu3_matches_nltk_corpus_bleu(scorer):
    from nltk.translate.bleu_score import corpus_bleu

    scores = scorer.score(CANDIDATES, REFERENCES)
    expected = corpus_bleu([[r.split()] for r in REFERENCES], [c.split() for c in CANDIDATES], weights=(1 / 3,) * 3)
    assert scores["BLEU-3"] == pytest.approx(expected, rel=1e-6)
    assert 0 < scores["BLEU-3"] < 1


def test_rouge_l_matches_hand_computation_with_beta_1_2(scorer):
    beta = 1.2
    expected = []
    for c, r in zip(CANDIDATES, REFERENCES):
        c, r = c.split(), r.split()
        lcs = _lcs(c, r)
        p, rec = lcs / len(c), lcs / len(r)
        expected.append((1 + beta**2) * p * rec / (rec + beta**2 * p))
    # first pair by hand: LCS "a small left pleural effusion" = 5, P = 5/8, R = 5/7
    assert _lcs(CANDIDATES[0].split(), REFERENCES[0].split()) == 5
    assert scorer.score(CANDIDATES, REFERENCES)["ROUGE-L"] == pytest.approx(np.mean(expected), rel=1e-9)


def test_meteor_in_unit_interval_and_orders_good_over_bad(scorer):
    reference = ["the left pleural effusion has increased in size"]
    good = scorer.score(["the left pleural effusion has grown larger"], reference)["METEOR"]
    bad = scorer.score(["cardiac silhouette is normal"], reference)["METEOR"]
    perfect = scorer.score(reference, reference)["METEOR"]
    assert 0.0 <= bad < good < perfect <= 1.0


def test_empty_candidate_scores_zero_and_empty_reference_is_skipped(scorer):
    scores = scorer.score(["", "a small effusion"], ["a small effusion", ""])
    assert scores["BLEU-3"] == pytest.approx(0.0, abs=1e-6) and scores["ROUGE-L"] == 0.0
    assert scorer.score(["x"], [""]) == {"BLEU-3": None, "METEOR": None, "ROUGE-L": None}
    with pytest.raises(ValueError, match="candidates"):
        scorer.score(["a"], [])


# ---- retrieval baseline -------------------------------------------------------------------------
def test_tfidf_retriever_matches_hand_computed_cosine():
    retriever = TfidfRetriever(["left effusion", "right effusion"])
    # idf: left/right/bigrams ln(3/2)+1, effusion ln(3/3)+1 = 1
    idf = math.log(1.5) + 1
    doc = np.array([idf, 1.0, idf])  # left, effusion, "left effusion"
    # "effusion on the left": known terms left + effusion; its bigrams are unseen (weight 0)
    query = np.array([idf, 1.0, 0.0])
    expected = doc @ query / (np.linalg.norm(doc) * np.linalg.norm(query))
    sims = retriever.similarities("effusion on the left")
    assert sims[0] > sims[1]
    assert sims[0] == pytest.approx(expected, rel=1e-9)
    assert retriever.similarities("left effusion")[0] == pytest.approx(1.0)
    assert retriever.nearest("RIGHT-sided effusion") == 1
