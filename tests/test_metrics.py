"""Image-text recall@K (issue 3): exactness against references, pessimistic ties, bad input, evaluate module."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusers_edge.metrics import (
    image_text_recall_path,
    retrieval_recall,
    retrieval_recall_from_embeddings,
)

KS = (1, 2, 5, 10)


def blip_style_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward per-query argsort ranks (BLIP itm_eval style, no truncation); exact only without ties."""
    n_images, n_texts = similarity.shape
    i2t = np.array(
        [
            min(np.where(np.argsort(-similarity[i]) == j)[0][0] for j in np.where(text_to_image == i)[0])
            for i in range(n_images)
        ]
    )
    t2i = np.array([np.where(np.argsort(-similarity[:, j]) == text_to_image[j])[0][0] for j in range(n_texts)])
    return i2t, t2i


def expected_dict(i2t: np.ndarray, t2i: np.ndarray, ks=KS) -> dict[str, float]:
    out = {f"i2t_R@{k}": 100 * np.mean(i2t < k) for k in ks}
    out |= {f"t2i_R@{k}": 100 * np.mean(t2i < k) for k in ks}
    out["i2t_mean"] = np.mean([out[f"i2t_R@{k}"] for k in ks])
    out["t2i_mean"] = np.mean([out[f"t2i_R@{k}"] for k in ks])
    out["r_mean"] = np.mean([out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks])
    out["i2t_median_rank"] = np.floor(np.median(i2t)) + 1  # VSE++ / open_clip: floor(median 0-based) + 1
    out["t2i_median_rank"] = np.floor(np.median(t2i)) + 1
    out["i2t_mean_rank"] = np.mean(i2t + 1)
    out["t2i_mean_rank"] = np.mean(t2i + 1)
    return out


def assert_same(result: dict, expected: dict) -> None:
    assert list(result) == list(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


def five_per_image(n_images: int) -> np.ndarray:
    return np.repeat(np.arange(n_images), 5)


def uneven(n_images: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t2i = np.repeat(np.arange(n_images), rng.integers(1, 8, n_images))
    return rng.permutation(t2i)


@pytest.mark.parametrize("text_to_image", [five_per_image(40), uneven(35, 1)], ids=["5-per-image", "uneven"])
def test_matches_reference_without_ties(text_to_image):
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((text_to_image.max() + 1, len(text_to_image)))
    sim[text_to_image, np.arange(len(text_to_image))] += 1.5  # realistic: recall well above chance
    expected = expected_dict(*blip_style_ranks(sim, text_to_image))
    assert 0 < expected["i2t_R@1"] < 100 and 0 < expected["t2i_R@1"] < 100
    for chunk_size in (None, 1, 7):
        assert_same(retrieval_recall(sim, text_to_image, KS, chunk_size=chunk_size), expected)
    assert_same(retrieval_recall(torch.from_numpy(sim).float(), torch.from_numpy(text_to_image), KS), expected)


def test_embeddings_path_equals_similarity_path():
    rng = np.random.default_rng(3)
    t2i = uneven(30, 4)
    img = rng.standard_normal((30, 16)).astype(np.float32)
    txt = (img[t2i] + 2 * rng.standard_normal((len(t2i), 16))).astype(np.float32)
    sim = F.normalize(torch.from_numpy(img), dim=1) @ F.normalize(torch.from_numpy(txt), dim=1).T
    expected = retrieval_recall(sim, t2i, KS, ir_recall=True)
    assert 0 < expected["i2t_R@1"] < 100
    for chunk_size in (None, 1, 4):
        got = retrieval_recall_from_embeddings(img, txt, t2i, KS, chunk_size=chunk_size, ir_recall=True)
        assert_same(got, expected)
    raw = retrieval_recall_from_embeddings(torch.from_numpy(img), torch.from_numpy(txt), t2i, KS, normalize=False)
    assert_same(raw, retrieval_recall(torch.from_numpy(img) @ torch.from_numpy(txt).T, t2i, KS))


def test_ties_are_pessimistic_by_hand():
    # 3 images, 4 texts: texts 0, 1 -> image 0, text 2 -> image 1, text 3 -> image 2
    sim = np.array(
        [
            [0.5, 0.2, 0.5, 0.1],  # image 0: best true text 0.5 ties with non-matching text 2 -> rank 1
            [0.3, 0.3, 0.3, 0.3],  # image 1: its text (0.3) ties with 3 non-matching texts -> rank 3
            [0.0, 0.9, 0.2, 0.4],  # image 2: text 3 (0.4) is below text 1 (0.9) only -> rank 1
        ]
    )
    t2i = [0, 0, 1, 2]
    # text queries (columns): text 0: 0.5 vs 0.3, 0.0 -> 0; text 1: 0.2 vs 0.3, 0.9 -> 2;
    # text 2: 0.3 vs 0.5 (ahead), 0.2 -> 1; text 3: 0.4 vs 0.1, 0.3 -> 0
    result = retrieval_recall(sim, t2i, ks=(1, 2, 3, 4))
    assert_same(result, expected_dict(np.array([1, 3, 1]), np.array([0, 2, 1, 0]), ks=(1, 2, 3, 4)))
    assert result["i2t_R@1"] == 0.0  # an optimistic tie-break would have put image 0 (and image 1) first
    # an exact tie between two true texts of the same image is not a competitor
    assert retrieval_recall(np.array([[0.7, 0.7, 0.1], [0.0, 0.1, 0.9]]), [0, 0, 1], ks=(1,))["i2t_R@1"] == 100.0


def test_ties_never_inflate_recall():
    rng = np.random.default_rng(5)
    t2i = uneven(25, 6)
    sim = rng.integers(0, 4, (25, len(t2i))).astype(np.float64)  # many ties
    pessimistic = retrieval_recall(sim, t2i, KS)
    for seed in range(3):  # any tie-break order of a per-query argsort can only do as well or better
        jitter = np.random.default_rng(seed).uniform(0, 1e-3, sim.shape)
        broken = retrieval_recall(sim + jitter, t2i, KS)
        for key in pessimistic:
            if "_R@" in key:
                assert pessimistic[key] <= broken[key], key
    # and the pessimistic rank is the worst any order gives: jitter that favours non-matching candidates
    worst = sim + 1e-3
    worst[np.asarray(t2i), np.arange(len(t2i))] -= 1e-3
    assert_same(retrieval_recall(worst, t2i, KS), pessimistic)


def test_constant_scores_rank_every_query_last():
    t2i = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])  # 4 images, 10 texts
    sim = np.full((4, 10), 0.25)
    result = retrieval_recall(sim, t2i, ks=(1, 5, 6, 8, 10))
    # image i is ranked after all 10 - count_i non-matching texts; each text after the 3 other images
    i2t = np.array([7, 9, 8, 6])
    assert_same(result, expected_dict(i2t, np.full(10, 3), ks=(1, 5, 6, 8, 10)))
    assert result["i2t_R@1"] == 0.0 and result["t2i_R@1"] == 0.0  # an optimistic order would give 100
    # collapsed embeddings (every vector equal) give the same through the embeddings path
    same = torch.ones(4, 3), torch.ones(10, 3)
    assert_same(retrieval_recall_from_embeddings(*same, t2i, ks=(1, 5, 6, 8, 10)), result)


def test_duplicate_images_tie_in_embeddings_path():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 are identical
    txt = torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.1, 1.0]])
    result = retrieval_recall_from_embeddings(img, txt, [0, 1, 2], ks=(1, 2))
    # texts 0 and 1 each tie with the duplicate image: rank 1; images 0/1 score texts 0 and 1 alike (normalised)
    assert result["t2i_R@1"] == pytest.approx(100 / 3)
    assert result["t2i_R@2"] == 100.0


def test_k_larger_than_candidates_gives_100():
    sim = np.array([[0.1, 0.9], [0.8, 0.2]])
    result = retrieval_recall(sim, [0, 1], ks=(1, 3, 1000))
    assert result["i2t_R@1"] == 0.0 and result["i2t_R@3"] == 100.0 and result["t2i_R@1000"] == 100.0


def test_ir_recall_is_a_different_quantity():
    # image 0 has texts 0, 1, 2; only text 0 is in its top 1: hit@1 = 1, IR recall@1 = 1/3
    sim = np.array([[0.9, 0.5, 0.4, 0.6], [0.1, 0.2, 0.3, 0.8]])
    result = retrieval_recall(sim, [0, 0, 0, 1], ks=(1, 2, 4), ir_recall=True)
    assert result["i2t_R@1"] == 100.0
    # image 0: true texts at positions 0, 2, 3 (text 3 scores 0.6); image 1: its text at position 0
    assert result["i2t_IRrecall@1"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert result["i2t_IRrecall@2"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert result["i2t_IRrecall@4"] == 100.0
    assert result["t2i_IRrecall@1"] == result["t2i_R@1"]
    assert "i2t_IRrecall@1" not in retrieval_recall(sim, [0, 0, 0, 1], ks=(1,))


def test_ir_recall_matches_brute_force_with_ties():
    rng = np.random.default_rng(8)
    t2i = uneven(12, 9)
    sim = rng.integers(0, 3, (12, len(t2i))).astype(np.float64)
    result = retrieval_recall(sim, t2i, KS, ir_recall=True, chunk_size=5)
    for k in KS:
        fractions = []
        for i in range(12):
            true = t2i == i
            # pessimistic order: by score, non-matching before true texts on equal scores
            order = np.lexsort((true[:], -sim[i]))
            fractions.append(true[order[:k]].sum() / true.sum())
        assert result[f"i2t_IRrecall@{k}"] == pytest.approx(100 * np.mean(fractions)), k


@pytest.mark.parametrize(
    ("similarity", "text_to_image", "ks", "message"),
    [
        (np.ones((2, 3)), [0, 1], (1,), "shape mismatch"),
        (np.ones((2, 3)), [0, 1, 2], (1,), r"text_to_image\[2\] = 2 is out of range"),
        (np.ones((2, 3)), [0, 1, -1], (1,), "out of range"),
        (np.ones((3, 3)), [0, 1, 1], (1,), "image 2 has no text"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), [0, 1], (1,), r"similarity\[0, 1\] is nan"),
        (np.array([[0.1, 0.2], [np.inf, 0.3]]), [0, 1], (1,), r"similarity\[1, 0\] is inf"),
        (np.ones((0, 3)), [], (1,), "empty"),
        (np.ones((2, 2)), [0, 1], (0,), "K must be >= 1"),
        (np.ones((2, 2)), [0, 1], (), "ks is empty"),
        (np.ones((2, 2)), [0.0, 1.0], (1,), "integer image indices"),
        (np.ones(4), [0, 1], (1,), "shape"),
    ],
)
def test_bad_input_raises(similarity, text_to_image, ks, message):
    with pytest.raises(ValueError, match=message):
        retrieval_recall(similarity, text_to_image, ks)


def test_bad_embeddings_raise():
    img, txt = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="dimension 4 but text_embeds has 5"):
        retrieval_recall_from_embeddings(img, torch.randn(3, 5), [0, 1, 1])
    with pytest.raises(ValueError, match=r"text_embeds\[1\] is a zero vector"):
        retrieval_recall_from_embeddings(img, torch.cat([txt[:1], torch.zeros(1, 4), txt[2:]]), [0, 1, 1])
    with pytest.raises(ValueError, match=r"image_embeds\[1, 2\] is nan"):
        retrieval_recall_from_embeddings(torch.tensor([[1.0, 0, 0, 0], [0, 0, float("nan"), 0]]), txt, [0, 1, 1])
    with pytest.raises(ValueError, match="image 1 has no text"):
        retrieval_recall_from_embeddings(img, txt, [0, 0, 0])
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_recall_from_embeddings(img, txt, [0, 1, 1], chunk_size=0)


@pytest.mark.slow
def test_import_does_not_load_evaluate():
    code = "import sys, diffusers_edge.metrics as m; m.retrieval_recall; print('evaluate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_metric_folder_holds_module_and_card():
    folder = Path(image_text_recall_path())
    assert (folder / "image_text_recall.py").is_file()
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "i2t_R@" in card and "txt_r1" in card


@pytest.fixture(scope="module")
def loaded_metric():
    evaluate = pytest.importorskip("evaluate")
    return evaluate.load(image_text_recall_path(), keep_in_memory=True)


def _coco_like(seed: int = 11):
    rng = np.random.default_rng(seed)
    t2i = uneven(30, seed)
    sim = rng.standard_normal((30, len(t2i))).astype(np.float32)
    sim[t2i, np.arange(len(t2i))] += 1.0
    return sim, t2i


def test_evaluate_load_matches_core(loaded_metric):
    sim, t2i = _coco_like()
    expected = retrieval_recall(sim, t2i, KS, ir_recall=True)
    got = loaded_metric.compute(predictions=sim.T, references=t2i, ks=list(KS), ir_recall=True)
    assert got == expected
    assert loaded_metric.compute(predictions=sim.T.tolist(), references=t2i.tolist()) == retrieval_recall(sim, t2i)


def test_evaluate_add_batch_streams_text_queries(loaded_metric):
    sim, t2i = _coco_like(12)
    for start in range(0, len(t2i), 16):
        loaded_metric.add_batch(predictions=sim.T[start : start + 16], references=t2i[start : start + 16])
    assert loaded_metric.compute(ks=[1, 5]) == retrieval_recall(sim, t2i, ks=(1, 5))


def test_evaluate_class_import_and_errors():
    pytest.importorskip("evaluate")
    from diffusers_edge.metrics import ImageTextRecall
    from diffusers_edge.metrics.image_text_recall.image_text_recall import ImageTextRecall as Direct

    assert ImageTextRecall is Direct
    metric = ImageTextRecall(keep_in_memory=True)
    assert "txt_r{k}" in metric.info.description and "BLIP" in metric.info.citation
    assert metric.compute(predictions=[[0.9, 0.2], [0.1, 0.7], [0.8, 0.3]], references=[0, 1, 0], ks=[1]) == {
        "i2t_R@1": 100.0,
        "t2i_R@1": 100.0,
        "i2t_mean": 100.0,
        "t2i_mean": 100.0,
        "r_mean": 100.0,
        "i2t_median_rank": 1.0,
        "t2i_median_rank": 1.0,
        "i2t_mean_rank": 1.0,
        "t2i_mean_rank": 1.0,
    }
    with pytest.raises(ValueError, match="every prediction row must score all images"):
        metric.compute(predictions=[[0.9, 0.2], [0.1]], references=[0, 1])
    with pytest.raises(ValueError, match="image 1 has no text"):
        metric.compute(predictions=[[0.9, 0.2], [0.1, 0.7]], references=[0, 0])


def test_half_and_integer_scores_match_float64():
    rng = np.random.default_rng(13)
    t2i = uneven(20, 14)
    sim = rng.integers(-40, 40, (20, len(t2i)))  # exactly representable in float16
    expected = retrieval_recall(sim.astype(np.float64), t2i, KS)
    assert retrieval_recall(sim, t2i, KS) == expected
    assert retrieval_recall(torch.from_numpy(sim).half() * 100, t2i, KS) == expected  # sums exceed 65504


def test_median_rank_is_floor_of_the_median_plus_one():
    # 4 images, one text each; text j's true image j scores 5, the j images before it 6, the rest 0: 0-based
    # ranks 0, 1, 2, 3. numpy's median of the 1-based ranks is 2.5; VSE++ and open_clip report floor(1.5) + 1 = 2.
    similarity = np.array([[5.0 if i == j else 6.0 if i < j else 0.0 for j in range(4)] for i in range(4)])
    _, t2i = blip_style_ranks(similarity, np.arange(4))
    assert t2i.tolist() == [0, 1, 2, 3] and np.median(t2i + 1) == 2.5
    assert retrieval_recall(similarity, [0, 1, 2, 3], ks=(1,))["t2i_median_rank"] == 2.0


def test_metric_card_front_matter_names_only_files_that_exist():
    from huggingface_hub import RepoCard

    from diffusers_edge.metrics import image_text_recall_path

    folder = Path(image_text_recall_path())
    data = RepoCard.load(folder / "README.md").data.to_dict()  # huggingface_hub's own parser
    assert data["title"] == "Image-Text Recall" and "metric" in data["tags"]
    assert "app_file" not in data or (folder / data["app_file"]).is_file()
