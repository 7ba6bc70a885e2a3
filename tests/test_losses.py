"""The EDGE losses against values computed by hand."""

import math

import pytest
import torch

from diffusers_edge.losses import bidirectional_contrastive_loss, caption_group_ids, diversity_loss


def _log1p_exp(x: float) -> float:
    return math.log(1 + math.exp(x))


def test_contrastive_loss_matches_hand_computation():
    # cosine logits / 0.5: [[2, 0], [1.2, 1.6]] (row 1 of the images normalises to [0.6, 0.8])
    image = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    image_to_text = (_log1p_exp(-2.0) + _log1p_exp(1.2 - 1.6)) / 2
    text_to_image = (_log1p_exp(1.2 - 2.0) + _log1p_exp(0.0 - 1.6)) / 2
    expected = (image_to_text + text_to_image) / 2
    loss = bidirectional_contrastive_loss(image, text, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.298736, abs=1e-6)


def test_contrastive_loss_default_temperature_is_edge_value():
    image, text = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), torch.randn(5, 8)
    assert bidirectional_contrastive_loss(image, text).item() == pytest.approx(
        bidirectional_contrastive_loss(image, text, temperature=0.1).item()
    )


def test_contrastive_loss_is_symmetric_in_modalities_and_scale_free():
    gen = torch.Generator().manual_seed(1)
    image, text = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    loss = bidirectional_contrastive_loss(image, text)
    assert bidirectional_contrastive_loss(text, image).item() == pytest.approx(loss.item(), rel=1e-6)
    assert bidirectional_contrastive_loss(3 * image, 0.5 * text).item() == pytest.approx(loss.item(), rel=1e-5)


def test_contrastive_loss_batch_of_one_is_zero_with_gradient():
    image = torch.randn(1, 4, requires_grad=True)
    loss = bidirectional_contrastive_loss(image, torch.randn(1, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(image.grad, torch.zeros_like(image))


def test_duplicate_captions_are_not_false_negatives():
    image = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    text = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # rows 0 and 1: same caption
    groups = caption_group_ids(["a red circle", "A red circle ", "a blue square"])
    assert groups.tolist() == [0, 0, 1]
    loss = bidirectional_contrastive_loss(image, text, temperature=1.0, caption_groups=groups)
    s = 1 / math.sqrt(2)  # cos(image_0, text_0) = cos(image_1, text_1)
    # image 0 scores its caption (s) against the square caption only (0); same for image 1;
    # image 2 scores 1 against the two red-circle captions (0, 0), each kept once per row.
    i2t = (2 * _log1p_exp(-s) + math.log(1 + 2 * math.exp(-1))) / 3
    # text 0 vs image 0 (s) and image 2 (0); text 1 likewise; text 2 vs images 0, 1 at 0: as row 2 above.
    t2i = (2 * _log1p_exp(-s) + math.log(1 + 2 * math.exp(-1))) / 3
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    plain = bidirectional_contrastive_loss(image, text, temperature=1.0)
    assert plain.item() > loss.item()  # the false negative costs loss without grouping


def test_all_captions_equal_gives_zero_contrastive_loss_and_no_nan():
    image = torch.randn(4, 5, requires_grad=True)
    text = torch.ones(4, 5)
    loss = bidirectional_contrastive_loss(image, text, caption_groups=torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(image.grad).all()


def test_diversity_loss_matches_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # joint rows: [1,0,1,0]/sqrt2, [0,1,1,0]/sqrt2, [1,0,0,1]/sqrt2 -> similarities 1/2, 1/2, 0 (each twice) / 6
    assert diversity_loss(image, text).item() == pytest.approx(2 * (0.5 + 0.5 + 0.0) / 6, rel=1e-6)


def test_diversity_loss_extremes_and_batch_of_one():
    same = torch.ones(3, 4)
    assert diversity_loss(same, same).item() == pytest.approx(1.0, rel=1e-6)
    single = torch.randn(1, 4, requires_grad=True)
    loss = diversity_loss(single, torch.randn(1, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(single.grad, torch.zeros_like(single))


def test_diversity_gradient_pushes_duplicate_caption_images_apart():
    image = torch.tensor([[1.0, 0.1], [1.0, -0.1]], requires_grad=True)
    text = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    diversity_loss(image, text).backward()
    step = image - 0.1 * image.grad
    before = torch.nn.functional.cosine_similarity(image[0], image[1], dim=0)
    after = torch.nn.functional.cosine_similarity(step[0], step[1], dim=0)
    assert after < before


@pytest.mark.parametrize("loss_fn", [bidirectional_contrastive_loss, diversity_loss])
def test_losses_reject_mismatched_embeddings(loss_fn):
    with pytest.raises(ValueError, match="differ in shape"):
        loss_fn(torch.randn(2, 512), torch.randn(2, 768))
    with pytest.raises(ValueError, match="2-D"):
        loss_fn(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="empty batch"):
        loss_fn(torch.randn(0, 4), torch.randn(0, 4))


def test_contrastive_loss_rejects_bad_temperature_and_groups():
    with pytest.raises(ValueError, match="temperature"):
        bidirectional_contrastive_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="caption_groups"):
        bidirectional_contrastive_loss(torch.randn(2, 3), torch.randn(2, 3), caption_groups=torch.zeros(3))
