"""Half-precision similarity matrices turn close scores into ties that lower recall: warned about, and documented."""

import pytest
import torch

from diffusers_edge.metrics import retrieval_recall, retrieval_recall_from_embeddings


def test_half_precision_scores_warn_and_show_the_ties_they_create():
    sim = torch.tensor([[1.001, 1.0], [1.0, 1.002]])  # each image's own text scores higher in float32
    assert retrieval_recall(sim, [0, 1], ks=(1,))["r_mean"] == 100.0
    for dtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        with pytest.warns(UserWarning, match=rf"similarity is {name}: half precision turns close scores into ties"):
            rounded = retrieval_recall(sim.to(dtype), [0, 1], ks=(1,))
        if dtype == torch.bfloat16:  # 1.001 and 1.002 both round to 1.0: every query ties with a wrong candidate
            assert rounded["r_mean"] == 0.0


def test_half_precision_embeddings_are_scored_in_float32_without_a_warning(recwarn):
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16)
    text = torch.tensor([[1.0, 0.0078125], [0.0078125, 1.0]], dtype=torch.bfloat16)  # exact in bfloat16
    assert retrieval_recall_from_embeddings(image, text, [0, 1], ks=(1,))["r_mean"] == 100.0
    assert not [w for w in recwarn if "half precision" in str(w.message)]
