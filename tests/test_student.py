"""The retrieval student and its trainer, on tiny timm and BERT configs built locally."""

import dataclasses
import math
import re
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusers_edge.data.format import NORMALIZED_FEATURES
from diffusers_edge.evaluation import (
    PROTOCOLS,
    FrozenTextEncoder,
    ProjectionHead,
    ProtocolConfig,
    RetrievalStudent,
    build_image_encoder,
    contrastive_loss,
    evaluate_student,
    prepare_pairs,
    protocol_config,
    results_table,
    summarize,
    train_student,
)
from diffusers_edge.evaluation.student import normalize_images
from diffusers_edge.evaluation.trainer import _batches, embed_pairs
from diffusers_edge.metrics.retrieval import retrieval_recall
from diffusers_edge.shapes.dataset import load_captioned_shapes

TINY_CNN = {"channels": (8, 16, 32, 64), "stem_width": 8}


@pytest.fixture(scope="module")
def shapes():
    return load_captioned_shapes(seed=3, num_train=32, num_val=0, num_test=0)["train"]


def test_projection_head_matches_the_protocol_formula():
    torch.manual_seed(0)
    head = ProjectionHead(6, 4).eval()
    x = torch.randn(3, 6)
    projected = x @ head.projection.weight.T + head.projection.bias
    hidden = F.gelu(projected) @ head.fc.weight.T + head.fc.bias
    expected = F.layer_norm(hidden + projected, (4,), head.layer_norm.weight, head.layer_norm.bias)
    torch.testing.assert_close(head(x), expected)
    assert head.dropout.p == 0.1


def test_contrastive_loss_is_symmetric_infonce_by_hand():
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    text = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    scale = 1 / 0.07
    s = (image @ text.T * scale).tolist()  # [[0.8, 0], [0.48 + 0.48, 0.8]] / 0.07
    i2t = -(s[0][0] - math.log(math.exp(s[0][0]) + math.exp(s[0][1])))
    i2t -= s[1][1] - math.log(math.exp(s[1][0]) + math.exp(s[1][1]))
    t2i = -(s[0][0] - math.log(math.exp(s[0][0]) + math.exp(s[1][0])))
    t2i -= s[1][1] - math.log(math.exp(s[0][1]) + math.exp(s[1][1]))
    expected = (i2t / 2 + t2i / 2) / 2
    assert float(contrastive_loss(image, text, scale)) == pytest.approx(expected, rel=1e-5)


def test_unknown_image_encoder_lists_close_names():
    with pytest.raises(ValueError, match="resnet10t") as error:
        build_image_encoder("resnet10x")
    assert "Unknown image encoder 'resnet10x'" in str(error.value)


def test_local_checkpoint_loads_through_timm(tmp_path):
    torch.manual_seed(1)
    source = build_image_encoder("resnet10t", **TINY_CNN)
    save_file(source.state_dict(), str(tmp_path / "encoder.safetensors"))
    torch.manual_seed(2)
    loaded = build_image_encoder("resnet10t", checkpoint=tmp_path / "encoder.safetensors", **TINY_CNN)
    fresh = build_image_encoder("resnet10t", **TINY_CNN)
    key = "conv1.0.weight"
    torch.testing.assert_close(loaded.state_dict()[key], source.state_dict()[key])
    assert not torch.equal(fresh.state_dict()[key], source.state_dict()[key])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_image_encoder("resnet10t", checkpoint=tmp_path / "missing.safetensors")


def test_frozen_text_encoder_cls_and_mean_pooling(tiny_bert_path):
    encoder = FrozenTextEncoder(tiny_bert_path)
    assert not any(p.requires_grad for p in encoder.model.parameters())
    captions = ["a red circle", "a large blue square at the top left"]
    tokens = encoder.tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**tokens).last_hidden_state
    torch.testing.assert_close(encoder.encode(captions), hidden[:, 0])
    mean = FrozenTextEncoder(tiny_bert_path, pooling="mean")
    alone = mean.encode(["a red circle"])
    with torch.no_grad():
        single = mean.model(**mean.tokenizer(["a red circle"], return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(alone[0], single[0].mean(0))
    torch.testing.assert_close(mean.encode(captions)[0], alone[0], atol=1e-5, rtol=1e-5)  # padding is ignored
    with pytest.raises(ValueError, match="pooling"):
        FrozenTextEncoder(tiny_bert_path, pooling="max")


def test_protocol_presets_and_overrides():
    lors, edge = protocol_config("lors"), protocol_config("edge", epochs=7, lr=None)
    assert (lors.momentum, lors.weight_decay, lors.lr_milestones, lors.batch_size, lors.augment) == (
        0.9, 5e-4, [51], 128, False
    )
    assert (edge.momentum, edge.weight_decay, edge.batch_size, edge.augment, edge.epochs, edge.lr) == (
        0.0, 0.0, 64, True, 7, 0.1
    )
    assert lors.logit_scale == pytest.approx(1 / 0.07) and lors.image_size == 224
    with pytest.raises(ValueError, match="Unknown protocol field"):
        protocol_config("lors", epoch=3)
    with pytest.raises(ValueError, match="Unknown protocol 'mtt'"):
        protocol_config("mtt")


def test_each_preset_is_written_once_and_says_what_the_docs_say():
    # the ProtocolConfig defaults ARE the lors preset; protocol_config returns a copy, never the preset itself
    assert PROTOCOLS["lors"] == ProtocolConfig() == protocol_config("lors")
    changed = protocol_config("lors", epochs=3)
    changed.lr_milestones.append(7)
    assert PROTOCOLS["lors"] == ProtocolConfig() and changed != protocol_config("lors")
    # the edge preset differs from lors only in what docs/evaluation.md says differs
    differ = {f.name for f in dataclasses.fields(ProtocolConfig) if getattr(PROTOCOLS["edge"], f.name) != getattr(
        PROTOCOLS["lors"], f.name)}
    assert differ == {"name", "batch_size", "momentum", "weight_decay", "lr_milestones", "augment", "eval_every"}
    # each preset's row of the docs/evaluation.md presets table, cell by cell
    doc = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    for name, config in PROTOCOLS.items():
        (row,) = re.findall(rf"^\| `{name}` \|.*\|$", doc, flags=re.M)
        optimiser, epochs, schedule, batch, augmentation, evaluated = [c.strip() for c in row.split("|")[2:-1]]
        assert config.name == name and config.text_lr is None
        assert optimiser.startswith(f"SGD lr {config.lr}")
        assert ("no momentum" in optimiser) if config.momentum == 0 else (f"momentum {config.momentum}" in optimiser)
        decay = re.search(r"weight decay ([\d.e-]+)", optimiser)
        assert ("no weight decay" in optimiser) if config.weight_decay == 0 else (
            float(decay.group(1)) == config.weight_decay)
        assert epochs == str(config.epochs) and batch == str(config.batch_size)
        milestones = ", ".join(str(m) for m in config.lr_milestones)
        assert schedule == (f"×{config.lr_gamma} after epoch {milestones}" if milestones else "constant")
        assert (augmentation == "none") == (not config.augment)
        if config.augment:
            assert augmentation == "RandomResizedCrop(scale 0.5–1), horizontal flip, RandAugment(2, 5)"
        assert evaluated == f"every {config.eval_every} epochs"


def test_prepare_pairs_flattens_every_caption_and_rejects_bad_sets(shapes):
    pairs = prepare_pairs(shapes.select(range(3)), image_size=16)
    assert pairs.images.shape == (3, 3, 16, 16) and pairs.images.dtype == torch.uint8
    assert pairs.num_pairs == 15 and pairs.text_to_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert pairs.captions[5] == shapes[1]["captions"][0]
    empty = datasets.Dataset.from_dict({"image": [], "captions": [], "image_id": []}, features=NORMALIZED_FEATURES)
    with pytest.raises(ValueError, match="is empty"):
        prepare_pairs(empty, 16, name="the distilled set")
    broken = shapes.select(range(2)).remove_columns("captions").add_column("captions", [["a red circle"], []])
    with pytest.raises(ValueError, match="row 1 .*has no captions"):
        prepare_pairs(broken, 16, name="the test set")


def _one_caption(shapes):
    """Images, their first captions, and the identity text -> image map."""
    pairs = prepare_pairs(shapes, image_size=32)
    return pairs.images, [row[0] for row in shapes["captions"]], torch.arange(pairs.num_images)


def test_training_lowers_loss_and_beats_a_fresh_student_with_retrieval_recall_numbers(shapes, tiny_bert_path):
    images, captions, text_to_image = _one_caption(shapes)
    features = FrozenTextEncoder(tiny_bert_path, pooling="mean").encode(captions)
    config = protocol_config("lors", epochs=25, eval_every=5, batch_size=16, image_size=32, lr_milestones=[])
    torch.manual_seed(0)
    fresh = RetrievalStudent.from_timm("resnet10t", text_dim=features.shape[1], **TINY_CNN)
    torch.manual_seed(0)
    student = RetrievalStudent.from_timm("resnet10t", text_dim=features.shape[1], **TINY_CNN)
    fresh_metrics = evaluate_student(fresh, images, features, text_to_image, config)
    history = train_student(
        student, images, features, text_to_image, config, seed=0, progress=False,
        evaluate=lambda s: evaluate_student(s, images, features, text_to_image, config),
    )
    losses = history["losses"]
    assert len(losses) == 25 and losses[-1] < 0.7 * losses[0]
    assert [row["epoch"] for row in history["evaluations"]] == [5, 10, 15, 20, 25]
    trained = evaluate_student(student, images, features, text_to_image, config)
    assert trained == {k: v for k, v in history["evaluations"][-1].items() if k != "epoch"} == history["last"]
    assert history["best"]["r_mean"] == max(row["r_mean"] for row in history["evaluations"])
    assert trained["r_mean"] > fresh_metrics["r_mean"] + 20
    image_embeds, text_embeds = embed_pairs(student, images, features, config)
    assert retrieval_recall(image_embeds @ text_embeds.T, text_to_image) == trained


def test_training_needs_two_pairs():
    student = RetrievalStudent.from_timm("resnet10t", text_dim=4, **TINY_CNN)
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    config = protocol_config("lors", image_size=32)
    with pytest.raises(ValueError, match="at least 2"):
        train_student(student, image, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), config, progress=False)


def test_edge_augmentation_trains_and_changes_the_batches(shapes, tiny_bert_path):
    images, captions, text_to_image = _one_caption(shapes.select(range(8)))
    features = FrozenTextEncoder(tiny_bert_path, pooling="mean").encode(captions)

    def train(augment):
        """Trains a fresh student; returns its losses and the pixels it was fed, batch by batch."""
        torch.manual_seed(0)
        student = RetrievalStudent.from_timm("resnet10t", text_dim=features.shape[1], **TINY_CNN)
        fed = []
        student.register_forward_pre_hook(lambda module, args: fed.append(args[0].detach().clone()))
        config = protocol_config("edge", epochs=2, batch_size=4, image_size=32, augment=augment)
        losses = train_student(student, images, features, text_to_image, config, seed=0, progress=False)["losses"]
        return losses, fed, config

    plain_losses, plain, config = train(False)
    losses, augmented, _ = train(True)
    again_losses, again, _ = train(True)
    assert all(math.isfinite(loss) for loss in plain_losses + losses)
    # without augmentation the student sees exactly the stored images, normalised, in the seeded batch order
    order = torch.cat(_batches(8, 4, torch.Generator().manual_seed(0)))
    expected = normalize_images(images[text_to_image[order]], config.image_mean, config.image_std)
    torch.testing.assert_close(torch.cat(plain[:2]), expected)
    # with it, every batch differs from those pixels (same order: batches come from their own generator)
    assert len(augmented) == len(plain) == 4
    assert all((a - p).abs().mean() > 0.05 for a, p in zip(augmented, plain))
    # and the same seed gives the same augmented pixels and the same losses
    assert all(torch.equal(a, b) for a, b in zip(augmented, again)) and losses == again_losses
    assert losses != plain_losses


def test_summary_and_table():
    stats = summarize([{"r_mean": 10.0, "t2i_R@1": 1.0}, {"r_mean": 14.0, "t2i_R@1": 1.0}])
    assert stats["r_mean"] == {"mean": 12.0, "std": pytest.approx(math.sqrt(8))}
    assert stats["t2i_R@1"] == {"mean": 1.0, "std": 0.0}
    keys = ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "r_mean"]
    last = [{key: 50.0 + i for i, key in enumerate(keys)}, {key: 52.0 + i for i, key in enumerate(keys)}]
    best = [{key: 60.0 + 2 * i for i, key in enumerate(keys)}, {key: 70.0 + 2 * i for i, key in enumerate(keys)}]
    runs = [{"last": one, "best": other} for one, other in zip(last, best)]
    results = {"runs": runs, "summary": {"last": summarize(last), "best": summarize(best)}}
    lines = results_table([("random 100", results)]).splitlines()
    assert lines[0] == "| set | epoch | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | r_mean |"
    # columns: IR = t2i, TR = i2t, in the papers' order; std of (50, 52) is sqrt(2), of (60, 70) sqrt(50)
    assert lines[2] == "| random 100 (2 seeds) | last | " + " | ".join(f"{51 + i}.0 ± 1.4" for i in range(7)) + " |"
    best_cells = " | ".join(f"{65 + 2 * i}.0 ± 7.1" for i in range(7))
    assert lines[3] == f"| random 100 (2 seeds) | best | {best_cells} |"
