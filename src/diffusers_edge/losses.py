"""The two EDGE losses on paired image and text embeddings (pure torch).

EDGE (arXiv 2509.15472, figure 2) fine-tunes the generator with a bi-directional contrastive loss L_C, which pulls
each generated image towards its own caption and away from the other captions of the batch, and a diversity loss
L_D, which pushes the (image, caption) pairs of a batch apart from each other. Both act on embeddings from a frozen
CLIP model; the temperature 0.1 and the form of L_D follow the released code (`edge_diffusion_train.py`;
docs/method.md, "The EDGE objective").

Edge cases, on purpose:

- **Batch of one.** L_C is the cross-entropy over a single logit, which is exactly 0 (the only caption is the
  right one); L_D has no off-diagonal pair and is defined as 0. Both stay attached to the graph, so `backward()`
  works and gives zero gradients. No NaN.
- **Duplicate captions.** Two images in a batch that carry the same caption would each see the other's copy of
  its caption as a negative, a false negative that the loss can never get below log 2 for. Pass `caption_groups`
  (equal ids for equal captions, see `caption_group_ids`) and the contrastive loss removes those false negatives
  from every softmax denominator: each pair is scored against the captions that really differ from its own. With
  every caption equal, L_C is 0. L_D needs no special case: the text halves of duplicates are identical, so their
  joint similarity has a fixed floor, and its gradient (captions are fixed) pushes their images apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The released EDGE code divides the cosine similarities by 0.1 (docs/method.md, "The EDGE objective").
DEFAULT_TEMPERATURE = 0.1


def _check_pair(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
    if image_embeds.ndim != 2 or text_embeds.ndim != 2:
        raise ValueError(
            f"image_embeds and text_embeds must be 2-D (batch, dim); got shapes {tuple(image_embeds.shape)} "
            f"and {tuple(text_embeds.shape)}."
        )
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"image_embeds {tuple(image_embeds.shape)} and text_embeds {tuple(text_embeds.shape)} differ in shape; "
            "the losses need one text embedding per image in the same space (is the CLIP model's image projection "
            "the same size as its text projection?)."
        )
    if image_embeds.shape[0] == 0:
        raise ValueError("the losses need at least one (image, text) pair; got an empty batch.")


def caption_group_ids(captions: Sequence[str]) -> torch.Tensor:
    """Gives equal captions (compared after stripping and lower-casing) the same id, in first-seen order.

    Example:
        >>> caption_group_ids(["a red circle", "A red circle ", "a blue square"]).tolist()
        [0, 0, 1]
    """
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c.strip().lower(), len(ids)) for c in captions], dtype=torch.long)


def bidirectional_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    caption_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch pairs: the mean of the image-to-text and text-to-image cross-entropies.

    Both inputs are L2-normalised here; logits are `image @ text.T / temperature` and the i-th image's positive is
    the i-th text (EDGE's L_C, temperature 0.1 as in the released code).

    Args:
        image_embeds: `(batch, dim)` image embeddings (any scale).
        text_embeds: `(batch, dim)` text embeddings, row i is the caption of image i.
        temperature: divides the cosine similarities.
        caption_groups: optional `(batch,)` integer ids, equal for equal captions; other members of a row's group
            are removed from that row's softmax denominator (no false negatives). `None`: all captions distinct.

    Returns:
        A scalar tensor (0 for a batch of one).

    Example:
        >>> emb = torch.eye(2)
        >>> round(bidirectional_contrastive_loss(emb, emb, temperature=1.0).item(), 4)  # log(1 + e^-1)
        0.3133
    """
    _check_pair(image_embeds, text_embeds)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    image = F.normalize(image_embeds, dim=-1)
    text = F.normalize(text_embeds, dim=-1)
    logits = image @ text.T / temperature
    if caption_groups is not None:
        if caption_groups.shape != (logits.shape[0],):
            raise ValueError(
                f"caption_groups must have shape ({logits.shape[0]},), one id per pair; "
                f"got {tuple(caption_groups.shape)}."
            )
        groups = caption_groups.to(logits.device)
        false_negative = (groups[:, None] == groups[None, :]) & ~torch.eye(
            len(groups), dtype=torch.bool, device=logits.device
        )
        logits = logits.masked_fill(false_negative, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def diversity_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity between the batch's joint `[image; text]` embeddings (EDGE's L_D).

    Each modality is L2-normalised, the two are concatenated and the concatenation is L2-normalised again (as in
    the released code); the loss is the sum of the `B * (B - 1)` off-diagonal cosine similarities divided by
    `B * (B - 1)`. Minimising it spreads the pairs apart. A batch of one has no pair and gives 0.

    Args:
        image_embeds: `(batch, dim)` image embeddings.
        text_embeds: `(batch, dim)` text embeddings.

    Returns:
        A scalar tensor in [-1, 1].

    Example:
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(diversity_loss(img, img).item(), 4)  # orthogonal pairs
        0.0
    """
    _check_pair(image_embeds, text_embeds)
    joint = F.normalize(
        torch.cat([F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)], dim=-1), dim=-1
    )
    batch = joint.shape[0]
    similarity = joint @ joint.T
    if batch == 1:
        return similarity.sum() * 0.0
    off_diagonal = similarity.sum() - similarity.diagonal().sum()
    return off_diagonal / (batch * (batch - 1))
