"""Coreset baselines: exact budgets, determinism, hand-checked herding / k-center picks, embedding spaces."""

import math

import pytest
import torch

from diffusers_edge.data.format import validate_normalized
from diffusers_edge.selection import kcenter_greedy
from diffusers_edge.selection.algorithms import count_forgetting_events, forgetting_scores, herding
from diffusers_edge.selection.coreset import PoolEmbeddings, embed_pool, select_coreset
from diffusers_edge.shapes.dataset import load_captioned_shapes


@pytest.fixture(scope="module")
def pool():
    return load_captioned_shapes(seed=5, num_train=24, num_val=0, num_test=0)["train"]


def test_herding_adds_the_point_nearest_to_the_residual():
    # mean = (3.5, 1). Step 1: residual (3.5, 1) -> B (squared distance 1.25; A 13.25, C 16.25, D 42.25).
    # Step 2: residual 2*(3.5, 1) - B = (3, 2) -> C (10; A 13, D 50).
    # Step 3: residual 3*(3.5, 1) - B - C = (6.5, 0) -> A (42.25) vs D (13.25): D is nearer, so D.
    points = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [10.0, 1.0]])
    assert herding(points, 4) == [1, 2, 3, 0]
    # the inverted rule (farthest from the residual) would start with D; canonical herding never does here
    assert herding(points, 1) == [1]
    with pytest.raises(ValueError, match="pool of 4"):
        herding(points, 5)


def test_herding_running_mean_converges_to_the_mean():
    points = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    picks = herding(points, 20)
    assert len(set(picks)) == 20
    herd_error = (points[picks].mean(0) - points.mean(0)).norm()
    first_error = (points[:20].mean(0) - points.mean(0)).norm()
    assert herd_error < 0.2 * first_error


def test_kcenter_is_farthest_first_from_the_seeded_start():
    # seed 1 starts at index 2 (np.random.default_rng(1).integers(5) == 2), C = (5, 0).
    # Squared distances to {C}: A 25, B 16, D 16, E 34 -> E. To {C, E}: A 9, B 10, D 16 -> D.
    # To {C, E, D}: A 9, B 10 -> B. A is left last.
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [5.0, 4.0], [0.0, 3.0]])
    assert kcenter_greedy(points, 5, seed=1) == [2, 4, 3, 1, 0]


def test_count_forgetting_events_by_hand():
    history = torch.tensor(
        [[1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 1, 0]],
        dtype=torch.bool,
    )
    # column 0: 1->0 twice; column 1: never learned; column 2: one 1->0; column 3: one 1->0 at the end
    assert count_forgetting_events(history).tolist() == [2.0, math.inf, 1.0, 1.0]


def test_forgetting_scores_are_deterministic_and_finite_on_learnable_pairs():
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(40, 6, generator=generator)
    image, text = shared + 0.05 * torch.randn(40, 6, generator=generator), shared
    first = forgetting_scores(image, text, epochs=15, batch_size=8, lr=0.05, seed=3)
    assert torch.equal(first, forgetting_scores(image, text, epochs=15, batch_size=8, lr=0.05, seed=3))
    assert torch.isfinite(first).all() and first.shape == (40,)


def _confusable_and_clean(dim=24):
    """8 confusable pairs (4 pictures, each shown twice with two unrelated captions) then 16 clean pairs (the text
    embedding equals the image embedding, all orthogonal). L2-normalised, like CLIP embeddings."""
    generator = torch.Generator().manual_seed(0)
    pictures = torch.randn(4, dim, generator=generator).repeat_interleave(2, 0)
    captions = torch.randn(8, dim, generator=generator)
    clean = torch.eye(dim)[:16]
    image, text = torch.cat([pictures, clean]), torch.cat([captions, clean])
    return torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1)


def test_confusable_pairs_are_forgotten_more_than_clean_ones():
    image, text = _confusable_and_clean()
    scores = forgetting_scores(image, text, epochs=10, batch_size=128, lr=0.05, seed=0)
    # a clean pair, once retrieved, stays retrieved; a picture shown with two captions keeps losing one of them
    assert scores[8:].tolist() == [0.0] * 16
    assert (scores[:8] >= 1).all()


def test_forgetting_coreset_takes_the_most_forgotten_pairs_first(pool):
    image, text = _confusable_and_clean()
    embeddings = PoolEmbeddings(image, [row.expand(5, -1) for row in text])  # 5 captions per shapes image
    coreset = select_coreset(pool, "forgetting", 8, seed=0, embeddings=embeddings, forgetting_epochs=100)
    assert set(coreset["image_id"]) == set(pool["image_id"][:8])
    scores = forgetting_scores(image, text, epochs=100, seed=0)  # the run select_coreset makes
    order = [pool["image_id"].index(i) for i in coreset["image_id"]]
    assert [float(scores[i]) for i in order] == sorted((float(scores[i]) for i in order), reverse=True)


@pytest.mark.parametrize("method", ["random", "herding", "kcenter", "forgetting"])
@pytest.mark.parametrize("captions_per_image", [1, 2, None])
def test_every_method_returns_exactly_the_budget_deterministically(pool, tiny_clip_path, method, captions_per_image):
    kwargs = {"captions_per_image": captions_per_image, "clip_model": tiny_clip_path, "forgetting_epochs": 3}
    coreset = select_coreset(pool, method, 13, seed=4, **kwargs)
    again = select_coreset(pool, method, 13, seed=4, **kwargs)
    validate_normalized(coreset)
    assert sum(len(c) for c in coreset["captions"]) == 13
    assert coreset["image_id"] == again["image_id"] and coreset["captions"] == again["captions"]
    expected_rows = {1: 13, 2: 7, None: 3}[captions_per_image]  # shapes images have 5 captions each
    assert coreset.num_rows == expected_rows
    originals = dict(zip(pool["image_id"], pool["captions"]))
    for image_id, captions in zip(coreset["image_id"], coreset["captions"]):
        assert set(captions) <= set(originals[image_id])
    assert set(coreset.column_names) == set(pool.column_names)


def test_random_changes_with_the_seed(pool):
    first, second = (select_coreset(pool, "random", 10, seed=seed)["image_id"] for seed in (0, 1))
    assert first != second


@pytest.mark.parametrize("space", ["image", "text", "joint"])
def test_herding_and_kcenter_use_the_stated_embedding_space(pool, tiny_clip_path, space):
    # the captions select_coreset keeps with seed 2 (the same seeded draw for every method)
    drawn = select_coreset(pool, "random", pool.num_rows, seed=2)
    chosen = dict(zip(drawn["image_id"], drawn["captions"]))
    kept = [[row.index(chosen[i][0])] for i, row in zip(pool["image_id"], pool["captions"])]
    embeddings = embed_pool(pool, tiny_clip_path)
    image, text = embeddings.image, embeddings.text(kept)
    torch.testing.assert_close(text[0], embeddings.captions[0][kept[0][0]])
    torch.testing.assert_close(image.norm(dim=1), torch.ones(len(image)))
    points = {"image": image, "text": text, "joint": torch.cat([image, text], 1)}[space]
    for method, picks in (("herding", herding(points, 6)), ("kcenter", kcenter_greedy(points, 6, seed=2))):
        coreset = select_coreset(pool, method, 6, space=space, clip_model=tiny_clip_path, seed=2)
        assert coreset["image_id"] == [pool["image_id"][i] for i in picks]
        reused = select_coreset(pool, method, 6, space=space, seed=2, embeddings=embeddings, clip_model="/nonexistent")
        assert reused["image_id"] == coreset["image_id"]


def test_full_and_bad_input(pool, tiny_clip_path):
    assert select_coreset(pool, "full") is pool
    with pytest.raises(ValueError, match="exceeds the pool: 24 images .* give 48 pairs"):
        select_coreset(pool, "random", 49, captions_per_image=2)
    with pytest.raises(ValueError, match="num_pairs must be a positive"):
        select_coreset(pool, "random", 0)
    with pytest.raises(ValueError, match="Unknown coreset method 'greedy'"):
        select_coreset(pool, "greedy", 5)
    with pytest.raises(ValueError, match="Unknown embedding space"):
        select_coreset(pool, "herding", 5, space="audio")
    with pytest.raises(ValueError, match="space='joint'"):
        select_coreset(pool, "forgetting", 5, space="image", clip_model=tiny_clip_path)
    with pytest.raises(ValueError, match="captions_per_image"):
        select_coreset(pool, "random", 5, captions_per_image=0)
